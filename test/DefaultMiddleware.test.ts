/**
 * `CommandBus.defaultMiddleware()` as the README orders it: the deadline
 * covers every attempt of the retry, and one idempotency claim covers them
 * all. Each middleware has tests of its own; these hold the stack's order.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { Command, CommandBus, CommandError, Handler, Idempotency, UnitOfWork } from "../src/index.js"
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

  // A held versioned write that meets its unique key at COMMIT, or a
  // serialization failure: the work succeeded, its commit did not, nothing
  // committed, and the retry goes on.
  // One transaction at a time, telling `afterEnd` how it ended, as the real ones do.
  const failingCommits = (options: { readonly times: number; readonly takes: Duration.DurationInput }) => {
    const state = { commits: 0, failed: 0 }
    const ends = UnitOfWork.makeEnds()
    let current: object | undefined
    const layer = Layer.succeed(UnitOfWork.UnitOfWork, {
      transactional: <A, E, R>(self: Effect.Effect<A, E, R>) =>
        Effect.suspend(() => {
          const transaction = {}
          current = transaction
          ends.begin(transaction)
          return Effect.onExit(
            Effect.flatMap(self, (value) =>
              Effect.uninterruptible(Effect.zipRight(
                Effect.sleep(options.takes),
                Effect.suspend(() => {
                  if (state.failed < options.times) {
                    state.failed++
                    return Effect.fail(
                      new CommandError.ConcurrencyConflict({ aggregateType: "X", aggregateId: "x", expectedVersion: 1 })
                    )
                  }
                  state.commits++
                  return Effect.succeed(value)
                })
              ))),
            (exit) => {
              current = undefined
              return ends.run(transaction, Exit.isSuccess(exit))
            }
          )
        }) as unknown as Effect.Effect<A, E, R>, // the conflict is the handler's own, as a held write's is
      afterEnd: (end) => Effect.sync(() => current !== undefined && ends.add(current, end))
    })
    return { state, layer }
  }

  const retryEverySecond = { schedule: Schedule.spaced("1 second").pipe(Schedule.intersect(Schedule.recurs(3))) }

  it.effect("a deadline that passes during a commit that then fails cuts the retry that follows", () =>
    Effect.gen(function*() {
      const { layer, state } = failingCommits({ times: 1, takes: "400 millis" })
      const bus = CommandBus.make([Bump], {
        Bump: () => Effect.as(Effect.sleep("300 millis"), Handler.result({ ok: true }))
      }).pipe(CommandBus.withMiddleware(
        ...CommandBus.defaultMiddleware({ timeout: "500 millis", retry: retryEverySecond })
      ))
      const fiber = yield* Effect.fork(Effect.provide(bus.dispatch(new Bump({ id: "x" })), layer))
      for (let i = 0; i < 50; i++) yield* TestClock.adjust("100 millis")
      const exit = yield* Fiber.await(fiber)
      assert.strictEqual((failureOf(exit) as { _tag?: string } | undefined)?._tag, "CommandTimeout")
      assert.strictEqual(state.commits, 0)
    }).pipe(Effect.provide(InMemory.layer)))

  it.live("on the live clock too, and a deadline during the backoff after it is not lost", () =>
    Effect.gen(function*() {
      for (const takes of ["150 millis", "0 millis"] as const) {
        const { layer, state } = failingCommits({ times: 1, takes })
        const bus = CommandBus.make([Bump], {
          Bump: () => Effect.as(Effect.sleep("100 millis"), Handler.result({ ok: true }))
        }).pipe(CommandBus.withMiddleware(
          ...CommandBus.defaultMiddleware({ timeout: "200 millis", retry: retryEverySecond })
        ))
        const exit = yield* Effect.exit(Effect.provide(bus.dispatch(new Bump({ id: "x" })), layer))
        assert.strictEqual((failureOf(exit) as { _tag?: string } | undefined)?._tag, "CommandTimeout", takes)
        assert.strictEqual(state.commits, 0, takes)
      }
    }).pipe(Effect.provide(InMemory.layer)))

  // During the backoff the dispatch still passed for committing; during the
  // commit, the runtime dropped the commit's failure from the error channel
  // of the interrupted dispatch. Either way its success was recorded.
  it.live("a client that hangs up during a commit that then fails, or the backoff after it: nothing recorded", () =>
    Effect.gen(function*() {
      for (const [takes, hangUpAfter] of [["0 millis", "200 millis"], ["200 millis", "50 millis"]] as const) {
        const { layer, state } = failingCommits({ times: 1, takes })
        let runs = 0
        const bus = CommandBus.make([Bump], {
          Bump: () => Effect.sync(() => Handler.result({ ok: ++runs > 0 }))
        }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ retry: retryEverySecond })))
        const dispatch = Effect.provide(bus.dispatch(new Bump({ id: "x", userId: "u", idempotencyKey: takes })), layer)
        const fiber = yield* Effect.fork(dispatch)
        yield* Effect.sleep(hangUpAfter)
        yield* Fiber.interrupt(fiber)
        assert.deepStrictEqual([runs, state.commits], [1, 0], takes)
        const again = yield* Idempotency.observeReplay(dispatch)
        assert.isFalse(again.replayed, takes)
        assert.isTrue(Exit.isSuccess(again.exit), takes)
        assert.deepStrictEqual([runs, state.commits], [2, 1], takes)
      }
    }).pipe(Effect.provide(InMemory.layer)))
})
