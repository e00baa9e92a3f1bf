/**
 * A follower whose lease cannot be renewed (its link to the store cut)
 * stops its batch before the lease lapses, so that the follower that takes
 * the name over never runs beside it.
 */
import { assert, describe, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as TestClock from "effect/TestClock"
import { CommandError, Outbox, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { Counted, envelope } from "./support/Counted.js"

// One follower's view of the checkpoints while its link to them is cut:
// refused at once, or (`silent`) unanswered until the link is back.
const cutOff = (store: Reaction.CheckpointStore, link: { down: boolean }, silent: boolean) => {
  const refused = Effect.fail(new CommandError.StoreUnavailable({ store: "checkpoints", reason: "link down" }))
  const unavailable = silent
    ? Effect.zipRight(Effect.repeat(Effect.sleep("100 millis"), { while: () => link.down }), refused)
    : refused
  const through = <A>(self: () => Effect.Effect<A, CommandError.StoreUnavailable>) =>
    Effect.suspend(() => link.down ? unavailable : self())
  return {
    ...store,
    load: (name: string) => through(() => store.load(name)),
    save: (name: string, position: number) => through(() => store.save(name, position)),
    claim: (name: string, owner: string, lease: Duration.Duration) => through(() => store.claim!(name, owner, lease))
  } satisfies Reaction.CheckpointStore
}

describe("a follower that cannot renew its lease", () => {
  // It went on with its batch, its renewals refused (or unanswered), past
  // its lease: the follower that took the name over ran the same events
  // beside it.
  for (const silent of [false, true]) {
    it.scoped(
      `stops before its lease lapses (its store ${
        silent ? "silent" : "refusing"
      }): the follower that takes over never runs beside it`,
      () =>
        Effect.gen(function*() {
          yield* (yield* Outbox.Outbox).append(Array.from({ length: 5 }, (_, i) => envelope(i + 1)))
          const runs = new Map<number, Set<string>>()
          const slow = { running: false, done: false }
          const overlaps: Array<number> = []
          const reactions = (who: string) => [Reaction.make(Counted, (event) =>
            Effect.suspend(() => {
              runs.set(event.count, (runs.get(event.count) ?? new Set<string>()).add(who))
              if (who === "B" && slow.running) overlaps.push(event.count)
              // A's first event calls, once, something slow that needs no database (45 s).
              if (who !== "A" || event.count !== 1 || slow.done) return Effect.void
              slow.done = slow.running = true
              return Effect.ensuring(Effect.sleep("45 seconds"), Effect.sync(() => void (slow.running = false)))
            }))]
          const link = { down: false }
          const store = yield* Reaction.Checkpoints
          // A, through a link to the store that is cut; lease 30 s, renewed every 10 s; poll 1 s.
          yield* Reaction.follow("n", reactions("A")).pipe(
            Effect.provideService(Reaction.Checkpoints, cutOff(store, link, silent))
          )
          yield* TestClock.adjust("10 millis")
          yield* Reaction.follow("n", reactions("B"))
          // A renews at 10 s (to 40 s); its link is down from 12 s to 41 s.
          yield* TestClock.adjust("12 seconds")
          link.down = true
          for (let i = 0; i < 29; i++) yield* TestClock.adjust("1 second")
          link.down = false
          for (let i = 0; i < 30; i++) yield* TestClock.adjust("1 second")
          assert.deepStrictEqual([...runs.keys()].sort(), [1, 2, 3, 4, 5], "every event ran")
          assert.deepStrictEqual(overlaps, [], "B ran events while A was still in its batch")
          const byBoth = [...runs.entries()].filter(([count, who]) => count > 1 && who.size === 2).map(([count]) =>
            count
          )
          assert.deepStrictEqual(byBoth, [], "events after the one in flight were run by both")
        }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])),
      30_000
    )
  }
})

describe("an idle follower polling less often than its lease", () => {
  // It renewed once a poll only: with a poll of a minute and a lease of 30 s,
  // its name lapsed while nothing happened and the standby took it.
  it.scoped("keeps its name while nothing happens", () => {
    const messages: Array<string> = []
    const capture = Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ message }) => void messages.push(String(Array.isArray(message) ? message[0] : message)))
    )
    return Effect.gen(function*() {
      const reactions = [Reaction.make(Counted, () => Effect.void)]
      yield* Reaction.follow("n", reactions, { pollInterval: "1 minute" }) // lease 30 s
      yield* TestClock.adjust("45 seconds")
      yield* Reaction.follow("n", reactions, { pollInterval: "1 minute" })
      for (let i = 0; i < 10; i++) yield* TestClock.adjust("1 minute")
      const changes = messages.filter((message) => message.startsWith("reaction.follower-"))
      assert.deepStrictEqual(changes, ["reaction.follower-standby"])
    }).pipe(
      Effect.provide(
        Layer.mergeAll(InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory, capture)
      )
    )
  })
})
