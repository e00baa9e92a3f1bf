/**
 * A rolling deploy that adds a reaction to a follower: while an instance of
 * the old version holds the name, the new reaction is not run on what it runs.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import { Outbox, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { Counted, envelope } from "./support/Counted.js"

const layers = Layer.mergeAll(InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory)

describe("a reaction added to a follower in a rolling deploy", () => {
  // As the README says: give a new reaction a follower of its own, or add it once no old instance runs.
  it.scoped("is not run on the events an old instance runs while it holds the name", () =>
    Effect.gen(function*() {
      const seen = { r1: [] as Array<number>, r2: [] as Array<number> }
      const r1 = Reaction.make(Counted, (e) => Effect.sync(() => void seen.r1.push(e.count)), { name: "r1" })
      const r2 = Reaction.make(Counted, (e) => Effect.sync(() => void seen.r2.push(e.count)), { name: "r2" })
      const old = yield* Reaction.follow("n", [r1]) // the old version's instance
      yield* TestClock.adjust("10 millis")
      yield* Reaction.follow("n", [r1, r2]) // the new version's instance, started
      yield* (yield* Outbox.Outbox).append([1, 2, 3].map(envelope))
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.interrupt(old) // the old instance stops
      yield* (yield* Outbox.Outbox).append([4, 5].map(envelope))
      yield* TestClock.adjust("3 seconds")
      assert.deepStrictEqual(seen.r1, [1, 2, 3, 4, 5])
      assert.deepStrictEqual(seen.r2, [4, 5])
    }).pipe(Effect.provide(layers)))
})
