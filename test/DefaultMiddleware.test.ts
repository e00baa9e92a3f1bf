/**
 * `CommandBus.defaultMiddleware()` as the README orders it: the deadline
 * covers every attempt of the retry, and one idempotency claim covers them
 * all. Each middleware has tests of its own; these hold the stack's order.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { Command, CommandBus, CommandError, Handler } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

class Bump extends Command.Class<Bump>()("Bump", {
  payload: { id: Schema.String },
  success: Schema.Struct({ ok: Schema.Boolean }),
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

class Pay extends Command.Class<Pay>()("Pay", {
  payload: { amount: Schema.Int },
  success: Schema.Struct({ paid: Schema.Int }),
  failure: Schema.Never
}) {}

const failureOf = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

describe("defaultMiddleware", () => {
  it.effect("names the stack in the documented order, outermost first", () =>
    Effect.sync(() => {
      expect(CommandBus.defaultMiddleware().map((middleware) => middleware.name)).toEqual([
        "tracing",
        "logging",
        "metrics",
        "authorization",
        "validation",
        "idempotency",
        "timeout",
        "retry",
        "transaction"
      ])
    }))

  it.effect("the deadline covers every attempt: a conflict retried past it ends as CommandTimeout", () =>
    Effect.gen(function*() {
      let runs = 0
      const bus = CommandBus.make([Bump], {
        Bump: () =>
          Effect.sleep("400 millis").pipe(
            Effect.zipRight(Effect.sync(() => runs++)),
            Effect.zipRight(
              Effect.fail(
                new CommandError.ConcurrencyConflict({ aggregateType: "X", aggregateId: "x", expectedVersion: 1 })
              )
            ),
            Effect.as(Handler.result({ ok: true }))
          )
      }).pipe(
        CommandBus.withMiddleware(
          ...CommandBus.defaultMiddleware({ timeout: "1 second" })
        )
      )
      const fiber = yield* Effect.fork(bus.dispatch(new Bump({ id: "x" })))
      for (let i = 0; i < 100; i++) yield* TestClock.adjust("100 millis")
      const exit = yield* Fiber.await(fiber)
      assert.strictEqual((failureOf(exit) as { _tag?: string } | undefined)?._tag, "CommandTimeout")
      // Attempts of 400 ms and backoff: at most 3 began inside the second.
      assert.isAtMost(runs, 3)
      assert.isAtLeast(runs, 2)
    }).pipe(Effect.provide(InMemory.layer)))

  it.live("another payload under a key still in flight is a mismatch (422), not in flight (409)", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const bus = CommandBus.make([Pay], {
        Pay: (command) =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Deferred.await(release)),
            Effect.as(Handler.result({ paid: command.amount }))
          )
      }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      const first = yield* Effect.fork(bus.dispatch(new Pay({ amount: 1, userId: "u", idempotencyKey: "k" })))
      yield* Deferred.await(started)
      const other = yield* Effect.exit(bus.dispatch(new Pay({ amount: 2, userId: "u", idempotencyKey: "k" })))
      const same = yield* Effect.exit(bus.dispatch(new Pay({ amount: 1, userId: "u", idempotencyKey: "k" })))
      yield* Deferred.succeed(release, undefined)
      expect(yield* Fiber.join(first)).toEqual({ paid: 1 })
      assert.strictEqual((failureOf(other) as { _tag?: string } | undefined)?._tag, "IdempotencyKeyMismatch")
      assert.strictEqual((failureOf(same) as { _tag?: string } | undefined)?._tag, "IdempotencyKeyInFlight")
    }).pipe(Effect.provide(InMemory.layer)))
})
