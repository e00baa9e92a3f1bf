/**
 * A cancel request that does not arrive in time (5 seconds: a slow network,
 * a loaded server's fork of the process that takes it) may still arrive
 * after: the connection it was for must not serve another statement then.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { onePool, slowCancels, withClient } from "../support/CancelPool.js"
import * as TestDatabase from "../support/Database.js"

describe.skipIf(TestDatabase.serverUrl === undefined)("a cancel that arrives late (postgres)", () => {
  it.scopedLive(
    "does not end the statement that took the connection after the cancel's 5 seconds",
    () =>
      Effect.gen(function*() {
        const pool = yield* onePool(yield* slowCancels(6_500))
        yield* withClient(pool, (sql) =>
          Effect.gen(function*() {
            const first = yield* Effect.fork(sql`SELECT pg_sleep(0.3)`)
            yield* Effect.sleep("100 millis")
            // The cancel goes out now and reaches the server 6.5 s later; the
            // answer comes at 300 ms; the connection waits for the cancel,
            // which is given up after 5 s.
            const interrupted = yield* Effect.fork(Fiber.interrupt(first))
            yield* Effect.sleep("50 millis")
            // Waits for the pool's one connection; runs from about 5 s to 8 s.
            expect(yield* sql`SELECT 'next' AS who FROM pg_sleep(3)`).toEqual([{ who: "next" }])
            yield* Fiber.join(interrupted)
          }))
      }),
    30_000
  )
})
