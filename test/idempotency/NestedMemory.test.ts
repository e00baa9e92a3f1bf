/**
 * A command dispatched from a handler that is then retried, over the test
 * kit's in-memory stores (`InMemory.layer`, whose unit of work holds a
 * dispatch's events until it succeeds): the inner command's key is recorded
 * when the outer dispatch succeeds, and released when it fails, as on
 * PostgreSQL.
 */
import { expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, Handler, Idempotency } from "../../src/index.js"
import { InMemory } from "../../src/testing/index.js"

class Reserve extends Command.Class<Reserve>()("Reserve", {
  payload: { sku: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Checkout extends Command.Class<Checkout>()("Checkout", {
  payload: { sku: Schema.String, conflicts: Schema.Int },
  success: Schema.Void,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

const makeBus = () => {
  const runs = { checkout: 0, reserve: 0 }
  // The handler dispatches on the bus it belongs to.
  const bus: any = CommandBus.make([Reserve, Checkout], {
    Reserve: () => Effect.sync(() => (runs.reserve++, Handler.result(undefined))),
    Checkout: (command) =>
      Effect.gen(function*() {
        const attempt = ++runs.checkout
        yield* Effect.orDie(bus.dispatch(
          new Reserve({ sku: command.sku, userId: "alice", idempotencyKey: `reserve:${command.commandId}` })
        ) as Effect.Effect<void, unknown>)
        if (attempt <= command.conflicts) {
          return yield* new CommandError.ConcurrencyConflict({
            aggregateType: "Cart",
            aggregateId: "c",
            expectedVersion: 1
          })
        }
        return Handler.result(undefined)
      })
  }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
  return { dispatch: (command: Reserve | Checkout) => bus.dispatch(command) as Effect.Effect<void, unknown>, runs }
}

it.live("a retried outer command runs its inner command again; a committed one's inner key replays", () =>
  Effect.gen(function*() {
    const { dispatch, runs } = makeBus()
    const checkout = new Checkout({ sku: "apple", conflicts: 1, userId: "alice" })
    yield* dispatch(checkout)
    expect(runs).toEqual({ checkout: 2, reserve: 2 })
    const again = yield* Idempotency.observeReplay(
      dispatch(new Reserve({ sku: "apple", userId: "alice", idempotencyKey: `reserve:${checkout.commandId}` }))
    )
    expect(again.replayed).toBe(true)
    expect(runs.reserve).toBe(2)
  }).pipe(Effect.provide(InMemory.layer)))

it.live("an outer command that fails for good leaves its inner command's key free", () =>
  Effect.gen(function*() {
    const { dispatch, runs } = makeBus()
    const checkout = new Checkout({ sku: "apple", conflicts: 100, userId: "alice" })
    const exit = yield* Effect.exit(dispatch(checkout))
    expect(exit._tag).toBe("Failure")
    const tried = runs.reserve
    const again = yield* Idempotency.observeReplay(
      dispatch(new Reserve({ sku: "apple", userId: "alice", idempotencyKey: `reserve:${checkout.commandId}` }))
    )
    expect(again.replayed).toBe(false)
    expect(runs.reserve).toBe(tried + 1)
  }).pipe(Effect.provide(InMemory.layer)))
