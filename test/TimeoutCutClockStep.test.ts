/**
 * A dispatch cut by the edge's Cutoff names the time it had, by a clock no
 * step of the wall clock moves (NTP setting the time back during a drain).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schema from "effect/Schema"
import { afterEach, vi } from "vitest"
import { Command, CommandBus, CommandError, Handler, Middleware } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

class Wait extends Command.Class<Wait>()("Wait", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

afterEach(() => void vi.restoreAllMocks())

describe("Middleware.timeout cut by the Cutoff", () => {
  it.live("names a time it had of 0 ms or more when the wall clock was set back meanwhile", () =>
    Effect.gen(function*() {
      const registered = new Set<() => boolean>()
      const cutoff: Middleware.Cutoff = {
        register: (cut) => {
          registered.add(cut)
          return () => registered.delete(cut)
        },
        committed: () => {}
      }
      const bus = CommandBus.make([Wait], {
        Wait: () => Effect.as(Effect.sleep("1 hour"), Handler.result(undefined))
      }).pipe(CommandBus.withMiddleware(Middleware.timeout("1 hour"), Middleware.transaction))
      const fiber = yield* Effect.fork(
        Effect.provideService(bus.dispatch(new Wait({ n: 1 })), Middleware.CurrentCutoff, cutoff)
      )
      for (let i = 0; i < 200 && registered.size === 0; i++) yield* Effect.sleep("5 millis")
      // The wall clock is set back 10 s (an NTP step) before the drain cuts the dispatch.
      const now = Date.now()
      vi.spyOn(Date, "now").mockImplementation(() => now - 10_000)
      assert.deepStrictEqual([...registered].map((cut) => cut()), [true])
      vi.restoreAllMocks()
      const exit = yield* Fiber.await(fiber)
      const error = Exit.isFailure(exit) && Cause.isFailType(exit.cause) ? exit.cause.error : undefined
      assert.instanceOf(error, CommandError.CommandTimeout)
      assert.isTrue(error.timeoutMillis >= 0 && error.timeoutMillis < 60_000, error.message)
    }).pipe(Effect.provide(InMemory.layer)))
})
