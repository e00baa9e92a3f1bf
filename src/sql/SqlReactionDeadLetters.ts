/**
 * The dead letters of `Reaction.follow` in PostgreSQL: one row per follower,
 * reaction and event, with the event itself, so a redrive needs nothing else.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as DomainEvent from "../DomainEvent.js"
import * as Column from "../internal/column.js"
import { pageSize } from "../internal/limit.js"
import * as Reaction from "../Reaction.js"
import * as SqlFailure from "./SqlFailure.js"

const isUuid = Schema.is(Schema.UUID)

interface Row {
  readonly follower: string
  readonly reaction: string
  readonly position: string | number
  readonly event: unknown
  readonly reason: string
  readonly attempts: number
  readonly first_failed_at: Date | string
  readonly last_failed_at: Date | string
}

// An envelope encodes and decodes back without failing, unless the table was
// changed by hand: a defect, then.
const encodeEnvelope = (event: DomainEvent.Envelope) => Effect.orDie(Schema.encode(DomainEvent.Envelope)(event))
const decodeEnvelope = (row: Row) => Effect.orDie(Schema.decodeUnknown(DomainEvent.Envelope)(Column.json(row.event)))

const toDeadLetter = (row: Row, event: DomainEvent.Envelope): Reaction.DeadLetter =>
  new Reaction.DeadLetter({
    follower: row.follower,
    reaction: row.reaction,
    position: Number(row.position),
    event,
    reason: row.reason,
    attempts: row.attempts,
    firstFailedAt: DateTime.unsafeMake(row.first_failed_at),
    lastFailedAt: DateTime.unsafeMake(row.last_failed_at)
  })

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Reaction.DeadLetterStore, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql) => ({
    add: (failure) =>
      Effect.flatMap(encodeEnvelope(failure.event), (event) =>
        sql`
        INSERT INTO reaction_dead_letters
          (follower, reaction, event_id, position, aggregate_type, aggregate_id, event, reason, attempts,
            first_failed_at, last_failed_at)
        VALUES (${failure.follower}, ${failure.reaction}, ${failure.event.eventId}, ${failure.position},
          ${failure.event.aggregateType}, ${failure.event.aggregateId}, ${JSON.stringify(event)}::jsonb,
          ${failure.reason}, 1, now(), now())
        ON CONFLICT (follower, reaction, event_id) DO UPDATE
          SET attempts = reaction_dead_letters.attempts + 1, reason = EXCLUDED.reason,
            last_failed_at = EXCLUDED.last_failed_at`.pipe(Effect.asVoid, SqlFailure.classify)),
    // Reactions in byte order ("C": code points, in a UTF-8 database), as the in-memory store and `isAfter`
    // compare them, whatever the database's collation.
    list: (follower, options) =>
      sql<Row>`
        SELECT follower, reaction, position, event, reason, attempts, first_failed_at, last_failed_at
        FROM reaction_dead_letters WHERE follower = ${follower}${
        options?.after === undefined
          ? sql``
          : sql` AND (position > ${options.after.position}
              OR (position = ${options.after.position} AND reaction COLLATE "C" > ${options.after.reaction}))`
      }
        ORDER BY position, reaction COLLATE "C" LIMIT ${pageSize(options?.limit)}`.withoutTransform.pipe(
        SqlFailure.classify,
        Effect.flatMap((rows) =>
          Effect.forEach(rows, (row) => Effect.map(decodeEnvelope(row), (event) => toDeadLetter(row, event)))
        )
      ),
    // An id that is no UUID names no letter (the column's type would refuse it).
    remove: (follower, reaction, eventId) =>
      !isUuid(eventId) ? Effect.void : sql`
        DELETE FROM reaction_dead_letters
        WHERE follower = ${follower} AND reaction = ${reaction} AND event_id = ${eventId}`.pipe(
        Effect.asVoid,
        SqlFailure.classify
      ),
    sequences: (follower) =>
      sql<{
        readonly reaction: string
        readonly aggregate_type: string
        readonly aggregate_id: string
        readonly position: string
      }>`
        SELECT reaction, aggregate_type, aggregate_id, min(position)::text AS position
        FROM reaction_dead_letters WHERE follower = ${follower}
        GROUP BY reaction, aggregate_type, aggregate_id`.withoutTransform.pipe(
        Effect.map((rows) =>
          rows.map((row) => ({
            reaction: row.reaction,
            aggregateType: row.aggregate_type,
            aggregateId: row.aggregate_id,
            position: Number(row.position)
          }))
        ),
        SqlFailure.classify
      )
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Reaction.DeadLetters, never, SqlClient.SqlClient> = Layer.effect(
  Reaction.DeadLetters,
  make
)
