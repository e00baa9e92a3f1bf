/**
 * The outbox keeps an envelope's payload as JSON, whatever JSON it is: the
 * relay publishes it, and the log reads it back, as it was appended (a JSON
 * string too, which a driver hands over already parsed), on PGlite and on
 * the server in `DATABASE_URL`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import { randomUUID } from "node:crypto"
import { DomainEvent, EventPublisher, Outbox } from "../../src/index.js"
import { OutboxRelay, SqlOutbox } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const envelope = (payload: unknown) =>
  new DomainEvent.Envelope({
    eventId: randomUUID(),
    type: "Noted",
    aggregateType: "Note",
    aggregateId: randomUUID(),
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: randomUUID(),
    causationId: randomUUID(),
    payload
  })

const Shared = Layer.mergeAll(SqlOutbox.layer, EventPublisher.layerMemory).pipe(
  Layer.provideMerge(TestDatabase.layer())
)

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `outbox payloads (${TestDatabase.kind})`,
  (it) => {
    it.scoped("publishes and reads back payloads that are JSON strings as those strings, and the events after them", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const sql = yield* SqlClient.SqlClient
        const outbox = yield* Outbox.Outbox
        const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        // "hello" is no JSON text, "123" and "{\"a\":1}" are other values' texts
        const payloads = ["hello", "123", "{\"a\":1}", 5, [1, "2"], { note: "after the strings" }]
        const appended = payloads.map(envelope)
        for (const event of appended) yield* sql.withTransaction(outbox.append([event]))

        expect(yield* OutboxRelay.drain()).toBe(payloads.length)
        const published = Chunk.toReadonlyArray(yield* Queue.takeAll(subscription))
        expect(published.map((event) => event.eventId)).toEqual(appended.map((event) => event.eventId))
        expect(published.map((event) => event.payload)).toEqual(payloads)

        const stored = yield* outbox.read({ after: 0, limit: 100 })
        expect(stored.map((event) => event.event.payload)).toEqual(payloads)
      }))
  }
)
