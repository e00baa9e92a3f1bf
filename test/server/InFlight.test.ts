/**
 * The shutdown's drain over the library's cutoff, in process: at its
 * deadline a request's commands still at work end as at their deadline
 * (`CommandTimeout`), whatever its other dispatches did, and a dispatch that
 * ends leaves no registration behind.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, Handler, Middleware } from "../../src/index.js"
import * as Http from "../../src/server/Http.js"
import { InMemory } from "../../src/testing/index.js"

class Outer extends Command.Class<Outer>()("Outer", {
  payload: { n: Schema.Int },
  success: Schema.Int,
  failure: Schema.Never
}) {}

class Inner extends Command.Class<Inner>()("Inner", {
  payload: { n: Schema.Int },
  success: Schema.Int,
  failure: Schema.Never
}) {}

const stack = [Middleware.timeout("1 hour"), Middleware.transaction] as const
// Cut by the drain: a timeout that says how long it had (at least the 100 ms
// before the drain), not the hour its deadline would have given.
const assertCut = (exit: Exit.Exit<unknown, unknown> | null) => {
  const error = exit !== null && Exit.isFailure(exit) && Cause.isFailType(exit.cause) ? exit.cause.error : exit
  assert.instanceOf(error, CommandError.CommandTimeout)
  assert.strictEqual(error.commandType, "Outer")
  assert.isTrue(error.timeoutMillis >= 100 && error.timeoutMillis < 60_000, `${error.timeoutMillis}`)
}

/** Runs `request` tracked, drains after it has had 100 ms, and gives its exit. */
const drained = <A, E, R>(request: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const inFlight = Http.makeInFlight()
    const fiber = yield* Effect.fork(inFlight.track(request))
    yield* Effect.sleep("100 millis")
    yield* inFlight.drain(Duration.millis(50), Duration.seconds(5))
    const exit = fiber.unsafePoll()
    yield* Fiber.interrupt(fiber)
    return exit
  })

describe("the shutdown's drain", () => {
  it.live("cuts a command at work though a command it dispatched inside its transaction committed", () => {
    const inner = CommandBus.make([Inner], {
      Inner: (command) => Effect.as(Effect.sleep("5 millis"), Handler.result(command.n))
    }).pipe(CommandBus.withMiddleware(...stack))
    const outer = CommandBus.make([Outer], {
      Outer: (command) =>
        Effect.gen(function*() {
          yield* Effect.orDie(inner.dispatch(new Inner({ n: command.n })))
          yield* Effect.sleep("1 hour")
          return Handler.result(command.n)
        })
    }).pipe(CommandBus.withMiddleware(...stack))
    return Effect.gen(function*() {
      assertCut(yield* drained(outer.dispatch(new Outer({ n: 1 }))))
    }).pipe(Effect.provide(InMemory.layer))
  })

  it.live("cuts the second command of a request whose first committed", () => {
    const bus = CommandBus.make([Outer, Inner], {
      Outer: (command) => Effect.as(Effect.sleep("1 hour"), Handler.result(command.n)),
      Inner: (command) => Effect.as(Effect.sleep("5 millis"), Handler.result(command.n))
    }).pipe(CommandBus.withMiddleware(...stack))
    return Effect.gen(function*() {
      const request = Effect.zipRight(bus.dispatch(new Inner({ n: 1 })), bus.dispatch(new Outer({ n: 2 })))
      assertCut(yield* drained(request))
    }).pipe(Effect.provide(InMemory.layer))
  })

  // A child that ended between the timeout's first look and its wait was
  // reported at once, and its registration then made was never removed.
  it.live("a dispatch that ends as its wait begins leaves no registration", () => {
    const registered = new Set<() => boolean>()
    const cutoff: Middleware.Cutoff = {
      register: (cut) => {
        registered.add(cut)
        return () => registered.delete(cut)
      },
      committed: () => {}
    }
    const bus = CommandBus.make([Outer, Inner], {
      Outer: (command) => Effect.as(Effect.yieldNow(), Handler.result(command.n)),
      Inner: (command) => Effect.succeed(Handler.result(command.n))
    }).pipe(CommandBus.withMiddleware(Middleware.timeout("1 hour")))
    return Effect.gen(function*() {
      for (let i = 0; i < 20; i++) {
        const answered = yield* bus.dispatch(new Outer({ n: i })).pipe(
          Effect.provideService(Middleware.CurrentCutoff, cutoff),
          // Yields often enough to land in the window between the two looks.
          Effect.withMaxOpsBeforeYield(12)
        )
        assert.strictEqual(answered, i)
      }
      assert.strictEqual(registered.size, 0)
    }).pipe(Effect.provide(InMemory.layer))
  })
})
