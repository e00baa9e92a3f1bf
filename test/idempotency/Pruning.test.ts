/**
 * The in-memory store drops expired records itself, at a claim at most once
 * a minute, without anyone calling `prune` and without a fiber that wakes
 * every minute (a TestClock moved by days ran it thousands of times).
 */
import { expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import { Idempotency } from "../../src/index.js"

const claimOf = (key: string) => ({
  scope: "alice",
  key,
  fingerprint: "f",
  commandType: "Charge",
  lease: Duration.seconds(1),
  retention: Duration.seconds(1)
})

it.effect("the in-memory store drops expired records at a claim, at most once a minute", () =>
  Effect.gen(function*() {
    const store = yield* Idempotency.IdempotencyStore
    expect((yield* store.claim(claimOf("k")))._tag).toBe("Claimed")
    yield* TestClock.adjust("30 seconds")
    // Within the minute: the expired record stays for now.
    expect((yield* store.claim(claimOf("l")))._tag).toBe("Claimed")
    yield* TestClock.adjust("2 minutes")
    // This claim drops both expired records; nothing is left to prune.
    expect((yield* store.claim(claimOf("m")))._tag).toBe("Claimed")
    yield* TestClock.adjust("2 seconds")
    expect(yield* store.prune).toBe(1)
  }).pipe(Effect.provide(Layer.fresh(Idempotency.layerMemory))))

it.effect("the in-memory store's layer starts no fiber", () =>
  Effect.gen(function*() {
    const before = (yield* Fiber.roots).length
    const during = yield* Effect.scoped(
      Effect.zipRight(
        Layer.build(Layer.fresh(Idempotency.layerMemory)),
        Effect.map(Fiber.roots, (roots) => roots.length)
      )
    )
    expect(during).toBe(before)
  }))
