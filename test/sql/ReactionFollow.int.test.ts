/**
 * `Reaction.follow` on a real database (PGlite, or the server in
 * `DATABASE_URL`): the checkpoint store, catching up on events committed
 * while no follower ran, waking on the relay's publications, and going on
 * where a stopped follower left off.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { randomUUID } from "node:crypto"
import { DomainEvent, EventPublisher, Outbox, Reaction } from "../../src/index.js"
import { OutboxRelay, SqlOutbox, SqlReactionCheckpoints } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Counted extends DomainEvent.Class<Counted>()("Counted", { count: Schema.Int }) {}

const envelope = (count: number) =>
  new DomainEvent.Envelope({
    eventId: randomUUID(),
    type: "Counted",
    aggregateType: "Counter",
    aggregateId: "c-1",
    aggregateVersion: count,
    occurredAt: DateTime.unsafeNow(),
    correlationId: randomUUID(),
    causationId: randomUUID(),
    payload: { _tag: "Counted", count }
  })

/** Commits events numbered `from`..`to`, as a command's transaction does. */
const commit = (from: number, to: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const outbox = yield* Outbox.Outbox
    yield* sql.withTransaction(outbox.append(Array.from({ length: to - from + 1 }, (_, i) => envelope(from + i))))
  })

/** The next `count` counts a follower saw, waiting at most 15 seconds. */
const nextSeen = (seen: Queue.Queue<number>, count: number) =>
  Effect.map(
    Queue.takeN(seen, count).pipe(
      Effect.timeoutFail({ duration: "15 seconds", onTimeout: () => new Error(`${count} events not seen in 15 s`) })
    ),
    (chunk) => [...chunk]
  )

const counting = (seen: Queue.Queue<number>) => [Reaction.make(Counted, (event) => Queue.offer(seen, event.count))]

const Shared = Layer.mergeAll(SqlOutbox.layer, EventPublisher.layerMemory, SqlReactionCheckpoints.layer).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`Reaction.follow (${TestDatabase.kind})`, (it) => {
  it.effect("keeps a position per name that never moves back", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const checkpoints = yield* Reaction.Checkpoints
      expect(yield* checkpoints.load("a")).toBe(0)
      yield* checkpoints.save("a", 5)
      yield* checkpoints.save("a", 3)
      expect(yield* checkpoints.load("a")).toBe(5)
      yield* checkpoints.save("a", 9_000_000_000)
      expect(yield* checkpoints.load("a")).toBe(9_000_000_000)
      expect(yield* checkpoints.load("b")).toBe(0)
    }))

  it.scoped("catches up on committed events, follows new ones, and a restart goes on where it stopped", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      // Committed and published while no follower runs.
      yield* commit(1, 3)
      yield* OutboxRelay.drain(100)
      yield* Layer.build(OutboxRelay.layer({ pollInterval: "50 millis" }))

      const seen = yield* Queue.unbounded<number>()
      const first = yield* Scope.make()
      yield* Reaction.follow("counter", counting(seen), { batchSize: 2, pollInterval: "200 millis" }).pipe(
        Scope.extend(first)
      )
      expect(yield* nextSeen(seen, 3)).toEqual([1, 2, 3])
      // Published by the running relay after the follower started.
      yield* commit(4, 5)
      expect(yield* nextSeen(seen, 2)).toEqual([4, 5])
      const checkpoints = yield* Reaction.Checkpoints
      // The checkpoint is saved just after the reaction ran.
      yield* Effect.flatMap(
        checkpoints.load("counter"),
        (position) => position === 5 ? Effect.void : Effect.fail(new Error(`checkpoint at ${position}, not 5`))
      ).pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }))
      yield* Scope.close(first, Exit.void)

      // Stopped: events go on being committed and published.
      yield* commit(6, 7)
      const second = yield* Scope.make()
      yield* Reaction.follow("counter", counting(seen), { pollInterval: "200 millis" }).pipe(Scope.extend(second))
      expect(yield* nextSeen(seen, 2)).toEqual([6, 7])
      // Another name reads the whole log.
      const other = yield* Queue.unbounded<number>()
      yield* Reaction.follow("audit", counting(other), { pollInterval: "200 millis" })
      expect(yield* nextSeen(other, 7)).toEqual([1, 2, 3, 4, 5, 6, 7])
      yield* Scope.close(second, Exit.void)
      expect(yield* Queue.size(seen)).toBe(0)
    }))
})
