/**
 * Several followers of one name (`Reaction.follow`), as every instance of an
 * app starts them: one runs at a time, holds its name while its batches run
 * however long they take, hands it over as soon as it stops, and the others
 * wait without asking for the name at every event.
 */
import { assert, describe, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as TestClock from "effect/TestClock"
import { EventPublisher, Outbox, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { Counted, envelope } from "./support/Counted.js"

/** Appends and publishes one event, as a dispatch and the relay do. */
const commit = (n: number) =>
  Effect.gen(function*() {
    const e = envelope(n)
    yield* (yield* Outbox.Outbox).append([e])
    yield* (yield* EventPublisher.EventPublisher).publish([e])
  })
const counting = (seen: Queue.Queue<number>) => [Reaction.make(Counted, (event) => Queue.offer(seen, event.count))]

// The memory checkpoints, counting each follower's claims.
const claims = new Map<string, number>()
const CountingCheckpoints = Layer.effect(
  Reaction.Checkpoints,
  Effect.map(Reaction.Checkpoints, (store) => ({
    ...store,
    claim: (name: string, owner: string, lease: Duration.Duration) => {
      claims.set(owner, (claims.get(owner) ?? 0) + 1)
      return store.claim!(name, owner, lease)
    }
  }))
).pipe(Layer.provide(Reaction.layerCheckpointsMemory))
const layers = Layer.mergeAll(InMemory.layer, CountingCheckpoints, Reaction.layerDeadLettersMemory)

describe("followers of one name", () => {
  // With the defaults a batch of failing reactions outlasted the lease, and
  // the follower that took the name over ran the same events beside it.
  it.scoped(
    "a batch that outlasts the lease keeps the name: no event is run by two followers",
    () =>
      Effect.gen(function*() {
        yield* (yield* Outbox.Outbox).append(Array.from({ length: 30 }, (_, i) => envelope(i + 1)))
        const runs = new Map<number, Set<string>>()
        // A downstream outage: every run fails, and is retried by the default schedule (~3.1 s an event).
        const failing = (who: string) => [Reaction.make(Counted, (event) =>
          Effect.suspend(() => {
            runs.set(event.count, (runs.get(event.count) ?? new Set<string>()).add(who))
            return Effect.fail(new Error("downstream unavailable"))
          }))]
        yield* Reaction.follow("n", failing("A")) // all defaults: lease 30 s, batchSize 100, default retry
        yield* TestClock.adjust("10 millis")
        yield* Reaction.follow("n", failing("B"))
        for (let i = 0; i < 120; i++) yield* TestClock.adjust("1 second")
        const byBoth = [...runs.entries()].filter(([, who]) => who.size === 2).map(([n]) => n)
        assert.deepStrictEqual(byBoth, [])
        assert.isAbove(runs.size, 0)
      }).pipe(Effect.provide(layers)),
    60_000
  )

  // It asked for the name about twice per published event.
  it.scopedLive(
    "a follower that waits asks for the name once a poll, whatever is published",
    () =>
      Effect.gen(function*() {
        const seenA = yield* Queue.unbounded<number>()
        yield* Reaction.follow("s", counting(seenA)) // pollInterval 1 s
        yield* Effect.sleep("100 millis")
        yield* Reaction.follow("s", counting(yield* Queue.unbounded<number>()))
        yield* Effect.sleep("100 millis")
        claims.clear()
        for (let i = 1; i <= 200; i++) {
          yield* commit(i)
          yield* Effect.sleep("10 millis")
        }
        // ~2.5 s at a 1 s pollInterval: a standby needs ~3 claims to notice a stop or a lapse;
        // the active one claims before each batch. Which is which: the one that claimed less.
        const counts = [...claims.values()]
        assert.strictEqual(counts.length, 2)
        assert.isAtMost(Math.min(...counts), 10, `claims: ${counts.join(", ")}`)
      }).pipe(Effect.provide(layers)),
    20_000
  )

  // Released only when its scope closed: the others waited out its lease.
  it.scopedLive(
    "a follower stopped by interrupting its fiber hands its name over at once",
    () =>
      Effect.gen(function*() {
        const seenA = yield* Queue.unbounded<number>()
        const seenB = yield* Queue.unbounded<number>()
        const a = yield* Reaction.follow("m", counting(seenA), { pollInterval: "100 millis" })
        yield* Effect.sleep("200 millis")
        yield* Reaction.follow("m", counting(seenB), { pollInterval: "100 millis" })
        yield* commit(1)
        assert.strictEqual(yield* Queue.take(seenA), 1)
        yield* Fiber.interrupt(a)
        yield* commit(2)
        const taken = yield* Queue.take(seenB).pipe(Effect.timeout("5 seconds"), Effect.option)
        assert.isTrue(taken._tag === "Some", "B did not take over within 5 s (it waited out A's 30 s lease)")
      }).pipe(Effect.provide(layers)),
    20_000
  )
})
