/**
 * A cancel request that does not arrive in time (5 seconds: a slow network,
 * a loaded server's fork of the process that takes it) may still arrive
 * after: the connection it was for must not serve another statement then.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { nextAfterSlowCancel } from "../support/CancelPool.js"
import * as TestDatabase from "../support/Database.js"

describe.skipIf(TestDatabase.serverUrl === undefined)("a cancel that arrives late (postgres)", () => {
  it.scopedLive(
    "does not end the statement that took the connection after the cancel's 5 seconds",
    () =>
      // The cancel reaches the server 6.5 s after it went out, and is given up
      // after 5 s; the next statement runs from about 5 s to 8 s.
      Effect.map(nextAfterSlowCancel(6_500, 3), (next) => expect(next).toEqual([{ who: "next" }])),
    30_000
  )
})
