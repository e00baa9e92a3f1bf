import { Effect, Schema } from "effect"
import type { Layer } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandError, Idempotency, Outbox, UnitOfWork } from "../src/index.js"
import { Command, CommandBus, CommandScheduler, Handler } from "../src/index.js"
import { CancelOrder, CreateOrder, RestockProduct } from "../src/orders/Commands.js"
import type { Inventory } from "../src/orders/Inventory.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import type { OrderRepository } from "../src/orders/OrderRepository.js"

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Expire extends Command.Class<Expire>()("Expire", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const orderId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const cancel = new CancelOrder({ orderId, reason: "unpaid" })
const restock = new RestockProduct({ productId: "p-1", available: 3 })
const address = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }

type Scheduled = Effect.Effect<string, CommandError.StoreUnavailable, CommandScheduler.ScheduledCommands>

describe("CommandScheduler types", () => {
  it("a bus's scheduler takes the bus's commands, with or without a key, and no other", () => {
    const scheduler = CommandScheduler.forBus(OrderBus.bare)
    expectTypeOf(scheduler.schedule(cancel, { after: "30 minutes" })).toEqualTypeOf<Scheduled>()
    expectTypeOf(scheduler.schedule(restock, { at: new Date(0) }, { key: "restock:p-1", onConflict: "keep" }))
      .toEqualTypeOf<Scheduled>()
    // @ts-expect-error Remind is not a command of the order bus
    scheduler.schedule(new Remind({ orderId }), { after: "1 hour" })
    // @ts-expect-error nor under a key
    scheduler.schedule(new Remind({ orderId }), { after: "1 hour" }, { key: "remind" })
    // @ts-expect-error an untyped command is not one of them either
    scheduler.schedule(cancel as Command.Any, { after: "1 hour" })
    // @ts-expect-error onConflict is replace or keep
    scheduler.schedule(cancel, { after: "1 hour" }, { key: "k", onConflict: "skip" })
    expectTypeOf(scheduler.cancel).toEqualTypeOf(CommandScheduler.cancel)
    expectTypeOf(scheduler.cancelKey).toEqualTypeOf(CommandScheduler.cancelKey)
    expectTypeOf(scheduler.retry).toEqualTypeOf(CommandScheduler.retry)
  })

  it("a bus's runner requires what the untyped runner of that bus requires", () => {
    const bus = OrderBus.make()
    const scheduler = CommandScheduler.forBus(bus)
    expectTypeOf(scheduler.run()).toEqualTypeOf(CommandScheduler.run(bus))
    expectTypeOf(scheduler.run({ batchSize: 5 })).toEqualTypeOf<
      Effect.Effect<
        never,
        never,
        | CommandScheduler.ScheduledCommands
        | Inventory
        | OrderRepository
        | Outbox.Outbox
        | Idempotency.IdempotencyStore
        | UnitOfWork.UnitOfWork
      >
    >()
    expectTypeOf(scheduler.start()).toEqualTypeOf(CommandScheduler.start(bus))
    expectTypeOf(scheduler.layer({ pollInterval: "1 second" })).toEqualTypeOf(CommandScheduler.layer(bus))
  })

  it("a bus with middleware has the same commands as the bus it wraps", () => {
    const scheduler = CommandScheduler.forBus(
      OrderBus.bare.pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
    )
    scheduler.schedule(new CreateOrder({ customerId: orderId, items: [], shippingAddress: address }), { after: 0 })
    // @ts-expect-error Remind is not a command of the order bus
    scheduler.schedule(new Remind({ orderId }), { after: 0 })
  })

  it("a scheduler of command classes takes those commands only", () => {
    const scheduler = CommandScheduler.make([CancelOrder, Remind])
    expectTypeOf(scheduler.schedule).parameter(0).toEqualTypeOf<CancelOrder | Remind>()
    scheduler.schedule(new Remind({ orderId }), { after: "1 hour" }, { key: "remind" })
    // @ts-expect-error RestockProduct is not in its list
    scheduler.schedule(restock, { after: "1 hour" })
  })

  it("a scheduler of command classes runs only a bus that handles each of them", () => {
    const scheduler = CommandScheduler.make([CancelOrder, RestockProduct])
    // The order bus handles both, and CreateOrder besides.
    const bus = OrderBus.make()
    expectTypeOf(scheduler.run(bus)).toEqualTypeOf(CommandScheduler.run(bus))
    expectTypeOf(scheduler.start(bus, { concurrency: 2 })).toEqualTypeOf(CommandScheduler.start(bus))
    expectTypeOf(scheduler.layer(bus)).toEqualTypeOf(CommandScheduler.layer(bus))
    const remindersOnly = CommandBus.make([Remind], { Remind: () => Effect.succeed(Handler.result(undefined)) })
    // @ts-expect-error the bus does not handle CancelOrder nor RestockProduct
    scheduler.run(remindersOnly)
    // @ts-expect-error nor when it starts
    scheduler.start(remindersOnly)
    // @ts-expect-error nor as a layer
    scheduler.layer(remindersOnly)
  })
  it("names the commands a bus does not handle", () => {
    expectTypeOf<CommandScheduler.Handles<CancelOrder | Remind | Expire, CancelOrder>>().toEqualTypeOf<
      { readonly "scheduled commands the bus does not handle": "Remind" | "Expire" }
    >()
    expectTypeOf<CommandScheduler.Handles<CancelOrder, CancelOrder | Remind>>().toEqualTypeOf<unknown>()
  })

  it("the handlers a bus is made of schedule its own commands, with a scheduler of its classes", () => {
    const ReminderCommands = [Remind, Expire] as const
    const reminders = CommandScheduler.make(ReminderCommands)
    const bus = CommandBus.make(ReminderCommands, {
      Remind: (command) =>
        reminders.schedule(new Expire({ orderId: command.orderId, ...Command.causedBy(command) }), { after: "1 day" })
          .pipe(Effect.orDie, Effect.as(Handler.result(undefined))),
      Expire: () => Effect.succeed(Handler.result(undefined))
    })
    expectTypeOf(bus.dispatch(new Remind({ orderId }))).toEqualTypeOf<
      Effect.Effect<void, CommandError.StoreUnavailable, CommandScheduler.ScheduledCommands | Outbox.Outbox>
    >()
    expectTypeOf(reminders.layer(bus)).toEqualTypeOf<
      Layer.Layer<never, never, CommandScheduler.ScheduledCommands | Outbox.Outbox>
    >()
  })

  it("a handler schedules the commands of another bus with that bus's scheduler, run on that bus", () => {
    const expiries = CommandScheduler.make([Expire])
    const reminders = CommandBus.make([Remind], {
      Remind: (command) =>
        Effect.gen(function*() {
          yield* expiries.schedule(new Expire({ orderId: command.orderId }), { after: "1 day" }).pipe(Effect.orDie)
          // @ts-expect-error Remind is a command of this bus, not of the expiries' one
          yield* expiries.schedule(new Remind({ orderId: command.orderId }), { after: "1 day" }).pipe(Effect.orDie)
          return Handler.result(undefined)
        })
    })
    const expiriesBus = CommandBus.make([Expire], { Expire: () => Effect.succeed(Handler.result(undefined)) })
    expiries.layer(expiriesBus)
    // @ts-expect-error the reminders' bus does not handle Expire
    expiries.layer(reminders)
  })

  it("a list of classes typed only Command.AnyClass makes no scheduler: it would take any command", () => {
    const untyped: ReadonlyArray<Command.AnyClass> = [Remind]
    // @ts-expect-error the classes' tags are any string
    CommandScheduler.make(untyped)
    // @ts-expect-error one of them untyped is enough
    CommandScheduler.make([Remind, Expire as Command.AnyClass])
  })

  it("a scheduler of more commands does not pass for one of fewer, whose runner would leave the others pending", () => {
    const reminders = CommandScheduler.make([Remind, Expire] as const)
    const remindOnly = CommandBus.make([Remind], { Remind: () => Effect.succeed(Handler.result(undefined)) })
    const runRemind = (scheduler: CommandScheduler.CommandScheduler<Remind>) => scheduler.layer(remindOnly)
    // @ts-expect-error it schedules Expire too, which remindOnly does not handle
    runRemind(reminders)
    runRemind(CommandScheduler.make([Remind]))
    // As a Scheduling it passes where its commands take fewer: it only schedules there.
    const scheduleRemind = (scheduler: CommandScheduler.Scheduling<Remind>) => scheduler
    scheduleRemind(reminders)
  })
})
