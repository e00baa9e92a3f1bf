/**
 * A follower whose store answers slowly, but answers (a loaded database),
 * keeps its name: a renewal is not given up while the lease it renews still
 * holds by a wide margin.
 */
import { assert, describe, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as TestClock from "effect/TestClock"
import { Outbox, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { Counted, envelope } from "./support/Counted.js"

// Each call answers after `delay`, having done its work at once (the store's
// lease starts when it is asked, so it holds longer than the follower counts).
const slow = (store: Reaction.CheckpointStore, delays: { claim: number; load: number }) =>
  ({
    ...store,
    load: (name: string) => Effect.zipLeft(store.load(name), Effect.sleep(delays.load)),
    claim: (name: string, owner: string, lease: Duration.Duration) =>
      Effect.zipLeft(store.claim!(name, owner, lease), Effect.sleep(delays.claim))
  }) satisfies Reaction.CheckpointStore

describe("a follower whose store answers slowly", () => {
  // Lease 3 s (renewed every 1 s, given up 2.5 s after the last renewal was asked).
  for (
    const [what, delays] of [
      ["each claim answers in 0.8 s (a quarter of the lease and more)", { claim: 800, load: 0 }],
      ["each claim answers in 0.3 s and the checkpoint's load in 1.3 s", { claim: 300, load: 1300 }]
    ] as const
  ) {
    it.scoped(`keeps its name through a long batch: ${what}`, () => {
      const messages: Array<string> = []
      const capture = Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ message }) => void messages.push(String(Array.isArray(message) ? message[0] : message)))
      )
      return Effect.gen(function*() {
        yield* (yield* Outbox.Outbox).append(Array.from({ length: 3 }, (_, i) => envelope(i + 1)))
        const runs: Array<number> = []
        // Each event takes 4 s: the batch lasts longer than the lease.
        const reactions = [
          Reaction.make(Counted, (event) =>
            Effect.zipRight(
              Effect.sync(() => void runs.push(event.count)),
              Effect.sleep("4 seconds")
            ))
        ]
        const store = yield* Reaction.Checkpoints
        yield* Reaction.follow("n", reactions, { lease: "3 seconds" }).pipe(
          Effect.provideService(Reaction.Checkpoints, slow(store, delays))
        )
        for (let i = 0; i < 300; i++) yield* TestClock.adjust("100 millis")
        assert.deepStrictEqual(messages.filter((message) => message.startsWith("reaction.follower-")), [])
        assert.deepStrictEqual(runs, [1, 2, 3], "each event ran once, its batch not cut")
      }).pipe(
        Effect.provide(
          Layer.mergeAll(InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory, capture)
        )
      )
    })
  }
})
