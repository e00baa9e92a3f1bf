/**
 * The README's scheduling example, in a handler as it says, compiled with
 * this repository's settings (`exactOptionalPropertyTypes` on): a README
 * example that an application's compiler refuses is a false one.
 */
import { Effect } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import { Command, CommandScheduler, Handler } from "../../src/index.js"
import type { CreateOrder } from "../../src/orders/Commands.js"
import { CancelOrder } from "../../src/orders/Commands.js"
import type * as Order from "../../src/orders/Order.js"

describe("README: scheduling a command", () => {
  it("compiles inside a handler, naming the order's owner", () => {
    const handler = (command: CreateOrder, order: Order.Order) =>
      Effect.gen(function*() {
        // As in the README:
        yield* CommandScheduler.schedule(
          new CancelOrder({ orderId: order.id, reason: "unpaid", userId: order.userId, ...Command.causedBy(command) }),
          { after: "30 minutes" }
        ).pipe(Effect.orDie)
        return Handler.result({ orderId: order.id, status: "created" as const, version: order.version })
      })
    expectTypeOf(handler).returns.toEqualTypeOf<
      Effect.Effect<
        Handler.Result<{ orderId: string; status: "created"; version: number }>,
        never,
        CommandScheduler.ScheduledCommands
      >
    >()
  })
})

describe("README: scheduling under a key", () => {
  it("compiles inside a handler, and so does cancelKey", () => {
    const handler = (command: CreateOrder, order: Order.Order) =>
      Effect.gen(function*() {
        // As in the README:
        yield* CommandScheduler.schedule(
          new CancelOrder({ orderId: order.id, reason: "unpaid", userId: order.userId, ...Command.causedBy(command) }),
          { after: "30 minutes" },
          { key: `unpaid:${order.id}` } // onConflict: "replace" is the default; "keep" keeps the first
        ).pipe(Effect.orDie)
        yield* CommandScheduler.cancelKey(`unpaid:${order.id}`).pipe(Effect.orDie)
        return Handler.result(undefined)
      })
    expectTypeOf(handler).returns.toEqualTypeOf<
      Effect.Effect<Handler.Result<undefined>, never, CommandScheduler.ScheduledCommands>
    >()
    expectTypeOf(CommandScheduler.schedule).parameter(2).toEqualTypeOf<CommandScheduler.ScheduleOptions | undefined>()
  })
})
