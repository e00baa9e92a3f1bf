/**
 * The outbox and its relay on a real database (PGlite, or the server in
 * `DATABASE_URL`): publication order, positions, one publication per event
 * with several relays, and events that wait for a relay to come back.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as ConfigProvider from "effect/ConfigProvider"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import { randomUUID } from "node:crypto"
import { DomainEvent, EventPublisher, Outbox } from "../../src/index.js"
import * as Database from "../../src/server/Database.js"
import { OutboxRelay, SqlMigrations, SqlOutbox } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const envelope = (aggregateId: string, aggregateVersion: number) =>
  new DomainEvent.Envelope({
    eventId: randomUUID(),
    type: "Counted",
    aggregateType: "Counter",
    aggregateId,
    aggregateVersion,
    occurredAt: DateTime.unsafeNow(),
    correlationId: randomUUID(),
    causationId: randomUUID(),
    payload: { count: aggregateVersion, note: "héllo \"quoted\"" }
  })

/** Appends `count` events in one transaction, as a command's commit does. */
const commit = (count: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const outbox = yield* Outbox.Outbox
    const aggregateId = randomUUID()
    const events = Array.from({ length: count }, (_, i) => envelope(aggregateId, i + 1))
    yield* sql.withTransaction(outbox.append(events))
    return events
  })

interface OutboxRow {
  readonly event_id: string
  readonly position: string | number | null
  readonly published_at: Date | null
}

const outboxRows = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql<OutboxRow>`SELECT event_id, position, published_at FROM outbox ORDER BY id`.withoutTransform
)

const subscribe = Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)

/** The next `count` published events, waiting at most 15 seconds. */
const nextPublished = (subscription: Queue.Dequeue<DomainEvent.Envelope>, count: number) =>
  Queue.takeN(subscription, count).pipe(
    Effect.map(Chunk.toReadonlyArray),
    Effect.timeoutFail({
      duration: "15 seconds",
      onTimeout: () => new Error(`${count} events were not published within 15 seconds`)
    })
  )

/** Waits long enough for a running relay (50 ms poll) to publish anything left, then says how many events came. */
const publishedLater = (subscription: Queue.Dequeue<DomainEvent.Envelope>) =>
  Effect.zipRight(Effect.sleep("300 millis"), Queue.size(subscription))

const ids = (events: ReadonlyArray<DomainEvent.Envelope>) => events.map((event) => event.eventId)

const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1)

/** Waits (at most 5 seconds) until `count` events are marked published. */
const awaitMarked = (count: number) =>
  Effect.flatMap(outboxRows, (rows) => {
    const marked = rows.filter((row) => row.position !== null).length
    return marked === count ? Effect.void : Effect.fail(new Error(`${marked} of ${count} events marked published`))
  }).pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }))

/** A relay for the rest of the scope, as the service runs it. */
const relay = Layer.build(OutboxRelay.layer({ pollInterval: "50 millis", batchSize: 4 }))

const Shared = Layer.mergeAll(SqlOutbox.layer, EventPublisher.layerMemory).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`outbox relay (${TestDatabase.kind})`, (it) => {
  it.scoped("refuses a batchSize that is no positive integer (0 would loop without end), naming it", () =>
    Effect.gen(function*() {
      const refused = <E, R>(where: string, batchSize: number, attempt: Effect.Effect<unknown, E, R>) =>
        Effect.map(
          Effect.exit(Effect.timeout(attempt, "10 seconds")),
          (exit) =>
            expect(String(Exit.isFailure(exit) && exit.cause)).toContain(
              `${where}: batchSize must be a positive integer, got ${batchSize}`
            )
        )
      for (const batchSize of [0, -1, 1.5]) {
        yield* refused("OutboxRelay.drain", batchSize, OutboxRelay.drain(batchSize))
        yield* refused("OutboxRelay.relayBatch", batchSize, OutboxRelay.relayBatch(batchSize))
        yield* refused("OutboxRelay.layer", batchSize, Layer.build(OutboxRelay.layer({ batchSize })))
      }
    }))

  it.scoped("publishes in commit order and numbers the events 1..n without gaps", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const committed = [...yield* commit(4), ...yield* commit(1), ...yield* commit(5)]
      expect((yield* outboxRows).every((row) => row.position === null && row.published_at === null)).toBe(true)
      const subscription = yield* subscribe

      // batches of 3: positions continue from one batch to the next
      yield* OutboxRelay.drain(3)

      const published = Chunk.toReadonlyArray(yield* Queue.takeAll(subscription))
      expect(ids(published)).toEqual(ids(committed))
      const rows = yield* outboxRows
      expect(rows.map((row) => row.event_id)).toEqual(ids(committed))
      expect(rows.map((row) => Number(row.position))).toEqual(oneTo(10))
      expect(rows.every((row) => row.published_at instanceof Date)).toBe(true)
      expect(yield* SqlOutbox.lag).toEqual({ unpublished: 0, oldestAgeSeconds: 0 })

      // the log reads back by position, each event as it was appended
      const outbox = yield* Outbox.Outbox
      const stored = yield* outbox.read({ after: 0, limit: 100 })
      expect(stored.map((event) => event.position)).toEqual(oneTo(10))
      expect(ids(stored.map((event) => event.event))).toEqual(ids(committed))
      const [first] = stored
      expect(first!.event.payload).toEqual(committed[0]!.payload)
      expect(first!.event.correlationId).toBe(committed[0]!.correlationId)
      expect(first!.event.aggregateVersion).toBe(1)
      expect(DateTime.toEpochMillis(first!.event.occurredAt)).toBe(DateTime.toEpochMillis(committed[0]!.occurredAt))
      const page = yield* outbox.read({ after: 4, limit: 3 })
      expect(page.map((event) => event.position)).toEqual([5, 6, 7])

      // nothing is left: a second drain publishes nothing
      yield* OutboxRelay.drain(3)
      expect(yield* Queue.size(subscription)).toBe(0)
    }))

  it.scoped("publishes every event once while two relays and direct batches run concurrently", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const subscription = yield* subscribe

      // two relay calls at the same moment: one takes the batch, the other finds it taken or done
      const committed = yield* commit(10)
      const counts = yield* Effect.all([OutboxRelay.relayBatch(100), OutboxRelay.relayBatch(100)], {
        concurrency: "unbounded"
      })
      expect([...counts].sort((a, b) => a - b)).toEqual([0, 10])
      expect(ids(yield* nextPublished(subscription, 10))).toEqual(ids(committed))

      // two relay loops, and direct batches, while 20 commands commit
      yield* relay
      yield* relay
      const more = yield* Effect.all(
        Array.from({ length: 20 }, () => commit(3)),
        { concurrency: 5 }
      ).pipe(
        Effect.zipLeft(
          Effect.all(Array.from({ length: 10 }, () => OutboxRelay.relayBatch(2)), { concurrency: "unbounded" }),
          { concurrent: true }
        )
      )
      const published = yield* nextPublished(subscription, 60)
      expect(yield* publishedLater(subscription)).toBe(0)
      expect(new Set(ids(published)).size).toBe(60)
      expect(new Set(ids(published))).toEqual(new Set(ids(more.flat())))

      const rows = yield* outboxRows
      const byPosition = [...rows].sort((a, b) => Number(a.position) - Number(b.position))
      expect(byPosition.map((row) => Number(row.position))).toEqual(oneTo(70))
      // publication order is position order
      expect(byPosition.slice(10).map((row) => row.event_id)).toEqual(ids(published))
      expect(rows.every((row) => row.published_at instanceof Date)).toBe(true)
    }))

  it.scoped("measures the outbox's lag by the database's clock, not the application's", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const sql = yield* SqlClient.SqlClient
      const outbox = yield* Outbox.Outbox
      // An application whose clock runs a minute ahead of the database's, then one an hour behind.
      const ahead = new DomainEvent.Envelope({
        ...envelope(randomUUID(), 1),
        occurredAt: DateTime.unsafeMake(Date.now() + 60_000)
      })
      yield* sql.withTransaction(outbox.append([ahead]))
      const first = yield* SqlOutbox.lag
      expect(first.unpublished).toBe(1)
      expect(first.oldestAgeSeconds).toBeGreaterThanOrEqual(0)
      expect(first.oldestAgeSeconds).toBeLessThan(60)
      yield* TestDatabase.truncateAll
      const behind = new DomainEvent.Envelope({
        ...envelope(randomUUID(), 1),
        occurredAt: DateTime.unsafeMake(Date.now() - 3_600_000)
      })
      yield* sql.withTransaction(outbox.append([behind]))
      const second = yield* SqlOutbox.lag
      expect(second.oldestAgeSeconds).toBeGreaterThanOrEqual(0)
      expect(second.oldestAgeSeconds).toBeLessThan(60)
    }))

  it.scoped("keeps events committed while no relay runs, and publishes them when one starts", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const subscription = yield* subscribe

      const before = yield* Effect.scoped(
        Effect.gen(function*() {
          yield* relay
          const events = yield* commit(3)
          expect(ids(yield* nextPublished(subscription, 3))).toEqual(ids(events))
          // stopped once the batch is marked (stopping in between: see the test below)
          yield* awaitMarked(3)
          return events
        })
      )

      // the relay is stopped: these wait in the outbox
      const during = [...yield* commit(2), ...yield* commit(2)]
      expect(yield* publishedLater(subscription)).toBe(0)
      expect((yield* SqlOutbox.lag).unpublished).toBe(4)
      const waiting = (yield* outboxRows).filter((row) => row.position === null)
      expect(waiting.map((row) => row.event_id)).toEqual(ids(during))

      yield* relay
      expect(ids(yield* nextPublished(subscription, 4))).toEqual(ids(during))
      // the events published before the restart are not published again
      expect(yield* publishedLater(subscription)).toBe(0)
      const rows = yield* outboxRows
      expect(rows.map((row) => row.event_id)).toEqual(ids([...before, ...during]))
      expect(rows.map((row) => Number(row.position))).toEqual(oneTo(7))
    }))

  // A batch is uninterruptible from publishing to committing its marks, so a
  // relay stopped right after publishing does not publish the batch again.
  it.scoped("does not publish a batch again when the relay is stopped right after publishing it", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const subscription = yield* subscribe
      const committed = yield* commit(3)
      // stopped as soon as the batch reached the subscriber
      yield* Effect.scoped(Effect.zipRight(relay, nextPublished(subscription, 3)))

      yield* relay
      expect(yield* publishedLater(subscription)).toBe(0)
      expect((yield* outboxRows).map((row) => row.event_id)).toEqual(ids(committed))
    }))

  it.scoped("leaves a batch unpublished when publishing it fails, and publishes it again (at least once)", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const committed = yield* commit(3)
      const delivered: Array<DomainEvent.Envelope> = []
      let attempts = 0
      // delivers, then fails before the relay can mark the batch: as a broker whose ack is lost
      const flaky = Layer.succeed(EventPublisher.EventPublisher, {
        publish: (events) =>
          Effect.suspend(() => {
            delivered.push(...events)
            return ++attempts === 1 ? Effect.dieMessage("broker connection lost") : Effect.void
          }),
        subscribe: Effect.dieMessage("not used")
      })

      const failed = yield* OutboxRelay.relayBatch().pipe(Effect.provide(flaky), Effect.exit)
      expect(failed._tag).toBe("Failure")
      expect((yield* outboxRows).every((row) => row.position === null && row.published_at === null)).toBe(true)

      expect(yield* OutboxRelay.relayBatch().pipe(Effect.provide(flaky))).toBe(3)
      expect(ids(delivered)).toEqual([...ids(committed), ...ids(committed)])
      expect((yield* outboxRows).map((row) => Number(row.position))).toEqual(oneTo(3))
    }))

  it.scoped("wakes on the commit's notification instead of waiting for the poll interval", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const sql = yield* SqlClient.SqlClient
      const subscription = yield* subscribe
      const first = yield* commit(1)
      yield* Layer.build(OutboxRelay.layer({ pollInterval: "1 minute" }))
      // the first drain at start publishes what is there
      expect(ids(yield* nextPublished(subscription, 1))).toEqual(ids(first))

      // the relay now waits; a notification naming its schema wakes it,
      // which shows it is listening; one naming another schema (another
      // instance's outbox on the same database) does not
      // (committed with triggers off: no notification of its own)
      const second = [envelope(randomUUID(), 1)]
      yield* sql.withTransaction(
        Effect.zipRight(
          sql`SET LOCAL session_replication_role = replica`,
          Effect.flatMap(Outbox.Outbox, (outbox) => outbox.append(second))
        )
      )
      // (`pg_notify`: sql-pg's own `notify` sends `NOTIFY channel, $1`, which PostgreSQL refuses)
      yield* sql`SELECT pg_notify(${SqlMigrations.outboxChannel}, 'another_schema')`
      expect(yield* publishedLater(subscription)).toBe(0)
      const wokenByHand = yield* sql`SELECT pg_notify(${SqlMigrations.outboxChannel}, current_schema())`.pipe(
        Effect.zipRight(Queue.take(subscription).pipe(Effect.timeout("500 millis"))),
        Effect.retry(Schedule.recurs(10))
      )
      expect(wokenByHand.eventId).toBe(second[0]!.eventId)
      // a wake sent while the relay was busy makes it drain once more: let
      // that pass, so the next event can only be published by a new wake
      expect(yield* publishedLater(subscription)).toBe(0)
      yield* Effect.sleep("500 millis")

      // a plain commit must wake it too (the trigger's notification)
      const third = yield* commit(1)
      const woken = yield* Queue.take(subscription).pipe(
        Effect.timeoutFail({
          duration: "3 seconds",
          onTimeout: () => new Error("the relay did not wake on the commit's notification")
        })
      )
      expect(woken.eventId).toBe(third[0]!.eventId)
    }))

  // A poll that finds events renews the listen. The old listen's UNLISTEN and
  // the new LISTEN share one connection: sent in the wrong order, the relay
  // stopped listening and lived on polls alone, renewing at every one. The
  // relay here has a database of its own, named, so that its connections are
  // told from other files' relays.
  it.scoped.skipIf(TestDatabase.serverUrl === undefined)(
    "after renewing its listen, it still listens: its listen connection's last statement is LISTEN",
    () =>
      Effect.gen(function*() {
        const name = `relay-renew-${randomUUID().slice(0, 8)}`
        const schema = TestDatabase.freshSchema()
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: schema }))
        const url = new URL(TestDatabase.serverUrl!)
        url.searchParams.set("application_name", name)
        const context = yield* Layer.build(
          Layer.mergeAll(SqlOutbox.layer, EventPublisher.layerMemory).pipe(
            Layer.provideMerge(Layer.effectDiscard(Database.migrate).pipe(Layer.provideMerge(Database.layer))),
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({
              DATABASE_URL: url.toString(),
              DATABASE_SCHEMA: schema,
              DB_POOL_SIZE: 4
            })))
          )
        )
        yield* Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const outbox = yield* Outbox.Outbox
          const subscription = yield* subscribe
          yield* Layer.build(OutboxRelay.layer({ pollInterval: "200 millis" }))
          const listenStatements = sql<{ readonly query: string }>`
            SELECT query FROM pg_stat_activity
            WHERE application_name = ${name} AND state = 'idle'
              AND (ltrim(query) ILIKE 'LISTEN %' OR ltrim(query) ILIKE 'UNLISTEN %')`.withoutTransform
          for (let round = 0; round < 3; round++) {
            // Committed without its notification: the next poll finds it, and the relay listens anew.
            yield* sql.withTransaction(
              Effect.zipRight(
                sql`SET LOCAL session_replication_role = replica`,
                outbox.append([envelope(randomUUID(), 1)])
              )
            )
            yield* nextPublished(subscription, 1)
            const last = yield* listenStatements.pipe(
              Effect.map((rows) => rows.map((row) => row.query.trim().split(" ")[0]!.toUpperCase())),
              Effect.filterOrFail((statements) => statements.length === 1 && statements[0] === "LISTEN"),
              Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }),
              Effect.orElse(() => Effect.map(listenStatements, (rows) => rows.map((row) => row.query)))
            )
            expect(last, `round ${round}`).toEqual(["LISTEN"])
          }
        }).pipe(Effect.provide(context))
      })
  )
})
