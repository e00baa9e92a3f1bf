/**
 * The store's layer prunes expired records in the background, every minute,
 * without anyone calling `prune`.
 */
import { expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import { Idempotency } from "../../src/index.js"

it.effect("the in-memory store's layer prunes expired records on its own", () =>
  Effect.gen(function*() {
    const store = yield* Idempotency.IdempotencyStore
    const claim = yield* store.claim({
      scope: "alice",
      key: "k",
      fingerprint: "f",
      commandType: "Charge",
      lease: Duration.seconds(1),
      retention: Duration.seconds(1)
    })
    expect(claim._tag).toBe("Claimed")
    yield* TestClock.adjust("2 minutes")
    // Had the background fiber not run, this prune would find the expired record.
    expect(yield* store.prune).toBe(0)
  }).pipe(Effect.provide(Layer.fresh(Idempotency.layerMemory))))
