/**
 * `Reaction.follow` on a real database (PGlite, or the server in
 * `DATABASE_URL`): the checkpoint store, catching up on events committed
 * while no follower ran, waking on the relay's publications, going on
 * where a stopped follower left off, and the dead letters of failed
 * reactions, kept in the database and run again.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
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
import { OutboxRelay, SqlOutbox, SqlReactionCheckpoints, SqlReactionDeadLetters } from "../../src/sql/index.js"
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

/**
 * Events 1 to 3 committed and published, and a reaction named "picky" that
 * fails on the second while `twoFails.now`, and reports the others in `seen`.
 */
const committedToPicky = Effect.gen(function*() {
  yield* TestDatabase.truncateAll
  yield* commit(1, 3)
  yield* OutboxRelay.drain(100)
  const seen = yield* Queue.unbounded<number>()
  const twoFails = { now: true }
  const picky = [
    Reaction.make(
      Counted,
      (event) =>
        twoFails.now && event.count === 2
          ? Effect.fail(new Error("two is not allowed"))
          : Queue.offer(seen, event.count),
      { name: "picky" }
    )
  ]
  return { picky, seen, twoFails }
})

const Shared = Layer.mergeAll(
  SqlOutbox.layer,
  EventPublisher.layerMemory,
  SqlReactionCheckpoints.layer,
  SqlReactionDeadLetters.layer
).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`Reaction.follow (${TestDatabase.kind})`, (it) => {
  it.effect("keeps a position per name that never moves back, except by a reset", () =>
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
      // Only a reset moves it back (a replay), and it makes a row where there was none.
      yield* checkpoints.reset("a", 2)
      expect(yield* checkpoints.load("a")).toBe(2)
      yield* Reaction.replay("b", { after: 4 })
      expect(yield* checkpoints.load("b")).toBe(4)
    }))

  it.effect("replay refuses an after that is no position, naming the option, as in memory", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      for (const after of [-1, 1.5, Number.NaN]) {
        const exit = yield* Effect.exit(Reaction.replay("a", { after }))
        expect(String(Exit.isFailure(exit) && exit.cause)).toContain(
          "Reaction.replay: after must be a non-negative integer"
        )
      }
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

  it.scoped("wakes on the relay's publication, not its poll interval, though the relay publishes before it commits", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* Layer.build(OutboxRelay.layer({ pollInterval: "50 millis" }))
      const seen = yield* Queue.unbounded<number>()
      // A poll interval no test waits out: only a wake-up can show the events.
      yield* Reaction.follow("waking", counting(seen), { pollInterval: "10 minutes" })
      for (const count of [1, 2, 3]) {
        yield* commit(count, count)
        expect(yield* nextSeen(seen, 1)).toEqual([count])
      }
    }))

  it.effect("dead letters: an event id that is no UUID names none, a negative limit lists none, as in memory", () =>
    Effect.gen(function*() {
      const deadLetters = yield* Reaction.DeadLetters
      yield* deadLetters.remove("f", "r", "not-a-uuid")
      expect(yield* deadLetters.list("f", { limit: -1 })).toEqual([])
    }))

  it.effect("keeps dead letters by follower, reaction and event: a repeat counts an attempt, remove drops one", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const deadLetters = yield* Reaction.DeadLetters
      const first = envelope(1)
      const second = new DomainEvent.Envelope({ ...envelope(2), payload: { nested: ["ünïcödé", 1.5, null] } })
      yield* deadLetters.add({ follower: "f", reaction: "r", position: 9_000_000_001, event: second, reason: "b" })
      yield* deadLetters.add({ follower: "f", reaction: "r", position: 7, event: first, reason: "first" })
      yield* deadLetters.add({ follower: "f", reaction: "r", position: 7, event: first, reason: "again" })
      yield* deadLetters.add({ follower: "f", reaction: "q", position: 7, event: first, reason: "other" })
      yield* deadLetters.add({ follower: "g", reaction: "r", position: 7, event: first, reason: "elsewhere" })

      const letters = yield* deadLetters.list("f")
      expect(letters.map((letter) => [letter.position, letter.reaction, letter.reason, letter.attempts])).toEqual([
        [7, "q", "other", 1],
        [7, "r", "again", 2],
        [9_000_000_001, "r", "b", 1]
      ])
      expect(letters[1]!.event).toEqual(first)
      expect(letters[2]!.event).toEqual(second)
      expect(DateTime.greaterThanOrEqualTo(letters[1]!.lastFailedAt, letters[1]!.firstFailedAt)).toBe(true)
      expect(yield* deadLetters.list("f", { limit: 1 })).toHaveLength(1)
      // Pages after a cursor: by position, then reaction (byte order, "Q" before "q").
      yield* deadLetters.add({ follower: "f", reaction: "Q", position: 7, event: first, reason: "upper" })
      const after = (position: number, reaction: string) =>
        Effect.map(
          deadLetters.list("f", { after: { position, reaction } }),
          (page) => page.map((letter) => [letter.position, letter.reaction])
        )
      expect(yield* after(7, "Q")).toEqual([[7, "q"], [7, "r"], [9_000_000_001, "r"]])
      expect(yield* after(7, "q")).toEqual([[7, "r"], [9_000_000_001, "r"]])
      expect(yield* after(7, "r")).toEqual([[9_000_000_001, "r"]])
      expect(yield* after(9_000_000_001, "r")).toEqual([])
      yield* deadLetters.remove("f", "Q", first.eventId)
      const sequences = yield* deadLetters.sequences("f")
      expect([...sequences].sort((a, b) => a.reaction.localeCompare(b.reaction))).toEqual([
        { reaction: "q", aggregateType: "Counter", aggregateId: "c-1", position: 7 },
        // Its lowest position, of its two.
        { reaction: "r", aggregateType: "Counter", aggregateId: "c-1", position: 7 }
      ])
      expect(yield* deadLetters.sequences("nobody")).toEqual([])

      yield* deadLetters.remove("f", "r", first.eventId)
      yield* deadLetters.remove("f", "r", first.eventId)
      expect((yield* deadLetters.list("f")).map((letter) => letter.reaction)).toEqual(["q", "r"])
      expect(yield* deadLetters.list("g")).toHaveLength(1)
    }))

  it.scoped("a reaction that keeps failing is kept as a dead letter in the database, and redriven once fixed", () =>
    Effect.gen(function*() {
      const { picky, seen, twoFails } = yield* committedToPicky
      yield* Reaction.follow("picky", picky, { pollInterval: "200 millis", retry: Schedule.recurs(1) })
      expect(yield* nextSeen(seen, 2)).toEqual([1, 3])
      const deadLetters = yield* Reaction.DeadLetters
      const [letter, ...others] = yield* deadLetters.list("picky")
      expect(others).toEqual([])
      expect([letter!.position, letter!.reaction, letter!.event.aggregateVersion, letter!.attempts]).toEqual([
        2,
        "picky",
        2,
        1
      ])
      expect(letter!.reason).toContain("two is not allowed")

      twoFails.now = false
      expect(yield* Reaction.redrive("picky", picky)).toEqual({ resolved: 1, failed: 0, unmatched: 0, held: 0 })
      expect(yield* nextSeen(seen, 1)).toEqual([2])
      expect(yield* deadLetters.list("picky")).toEqual([])
    }))

  it.scoped("keeps a failure whose text holds a NUL as a dead letter, and goes on with the next event", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* commit(1, 3)
      yield* OutboxRelay.drain(100)
      const seen = yield* Queue.unbounded<number>()
      // PostgreSQL's text refuses NUL: recording this failure once failed
      // too, and ended the follower for good.
      const nul = [
        Reaction.make(
          Counted,
          (event) => event.count === 2 ? Effect.fail(new Error("bad \u0000 byte")) : Queue.offer(seen, event.count),
          { name: "nul" }
        )
      ]
      yield* Reaction.follow("nul", nul, { pollInterval: "200 millis", retry: Schedule.recurs(0) })
      expect(yield* nextSeen(seen, 2)).toEqual([1, 3])
      const [letter] = yield* Effect.flatMap(Reaction.DeadLetters, (deadLetters) => deadLetters.list("nul"))
      expect([letter?.position, letter?.reason.includes("bad \uFFFD byte")]).toEqual([2, true])
    }))

  it.scoped("with aggregate sequencing, the aggregate's later events wait behind its dead letter, then run in order", () =>
    Effect.gen(function*() {
      const { picky, seen, twoFails } = yield* committedToPicky
      yield* Layer.build(OutboxRelay.layer({ pollInterval: "50 millis" }))
      yield* Reaction.follow("picky", picky, {
        pollInterval: "200 millis",
        retry: Schedule.recurs(0),
        sequencing: "aggregate"
      })
      expect(yield* nextSeen(seen, 1)).toEqual([1])
      yield* commit(4, 4)
      const deadLetters = yield* Reaction.DeadLetters
      // Every event of the aggregate from 2 on is a dead letter, in order.
      const letters = yield* Effect.flatMap(
        deadLetters.list("picky"),
        (letters) =>
          letters.length === 3 ? Effect.succeed(letters) : Effect.fail(new Error(`${letters.length} letters`))
      ).pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }))
      expect(letters.map((letter) => [letter.position, letter.reason.split(":")[0]])).toEqual([
        [2, "Error"],
        [3, "Parked"],
        [4, "Parked"]
      ])
      expect(yield* Queue.size(seen)).toBe(0)

      twoFails.now = false
      expect(yield* Reaction.redrive("picky", picky, { sequencing: "aggregate" })).toEqual({
        resolved: 3,
        failed: 0,
        unmatched: 0,
        held: 0
      })
      expect(yield* nextSeen(seen, 3)).toEqual([2, 3, 4])
      yield* commit(5, 5)
      expect(yield* nextSeen(seen, 1)).toEqual([5])
    }))

  // The database orders reactions by code point ("C"); a redrive that read
  // on after its cursor by UTF-16 units skipped one of these, as before it.
  it.effect("redrives the letters of reactions whose names only a code-point order sorts alike", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const deadLetters = yield* Reaction.DeadLetters
      const names = ["notify \uFF03", "notify \u{1F4E7}"]
      for (const reaction of names) {
        yield* deadLetters.add({ follower: "f", reaction, position: 7, event: envelope(1), reason: "boom" })
      }
      const reactions = names.map((name) => Reaction.make(Counted, () => Effect.void, { name }))
      expect(yield* Reaction.redrive("f", reactions)).toEqual({ resolved: 2, failed: 0, unmatched: 0, held: 0 })
      expect(yield* deadLetters.list("f")).toEqual([])
    }))

  // Two instances of an app each following one name ran every event twice,
  // and moved one checkpoint in turn.
  it.scoped("one follower of a name runs at a time; another takes over when it stops, where it stopped", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* Layer.build(OutboxRelay.layer({ pollInterval: "50 millis" }))
      const seenByA = yield* Queue.unbounded<number>()
      const seenByB = yield* Queue.unbounded<number>()
      const options = { pollInterval: "100 millis", lease: "10 seconds" } as const
      const a = yield* Scope.make()
      yield* Reaction.follow("shared", counting(seenByA), options).pipe(Scope.extend(a))
      const checkpoints = yield* Reaction.Checkpoints
      // A holds the name before B starts (a probe that finds it free holds it for 1 ms).
      yield* Effect.flatMap(
        Effect.suspend(() => checkpoints.claim!("shared", randomUUID(), Duration.millis(1))),
        (free) => free ? Effect.fail(new Error("the name is still free")) : Effect.void
      ).pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }))
      yield* Reaction.follow("shared", counting(seenByB), options)
      yield* commit(1, 4)
      expect(yield* nextSeen(seenByA, 4)).toEqual([1, 2, 3, 4])
      yield* Effect.sleep("500 millis")
      expect(yield* Queue.size(seenByB)).toBe(0)
      // A stops: B takes the name at once (not after the lease), and goes on from 4.
      yield* Scope.close(a, Exit.void)
      yield* commit(5, 6)
      expect(yield* nextSeen(seenByB, 2)).toEqual([5, 6])
      expect(yield* Queue.size(seenByA)).toBe(0)
    }))

  it.effect("a name's lease: taken when free, kept by its owner, refused to another until it lapses or is released", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const checkpoints = yield* Reaction.Checkpoints
      const claim = (owner: string, lease = Duration.seconds(30)) => checkpoints.claim!("n", owner, lease)
      expect(yield* claim("a")).toBe(true)
      expect(yield* claim("a")).toBe(true)
      expect(yield* claim("b")).toBe(false)
      yield* checkpoints.release!("n", "b")
      expect(yield* claim("b")).toBe(false)
      yield* checkpoints.release!("n", "a")
      expect(yield* claim("b", Duration.millis(200))).toBe(true)
      expect(yield* claim("a")).toBe(false)
      yield* Effect.sleep("300 millis")
      expect(yield* claim("a")).toBe(true)
      // The position is the checkpoint's own, whoever holds the name.
      yield* checkpoints.save("n", 7)
      expect(yield* claim("c", Duration.seconds(1))).toBe(false)
      expect(yield* checkpoints.load("n")).toBe(7)
    }))
})
