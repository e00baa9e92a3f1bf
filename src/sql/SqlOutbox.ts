/**
 * The transactional outbox on PostgreSQL: events are rows written in the
 * command's own transaction, so an event exists if and only if its command
 * committed. A relay publishes them after commit.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { StoreUnavailable } from "../CommandError.js"
import { Envelope } from "../DomainEvent.js"
import * as Column from "../internal/column.js"
import * as Outbox from "../Outbox.js"
import * as SqlFailure from "./SqlFailure.js"
import * as SqlStatement from "./SqlStatement.js"

/**
 * A row of the outbox as the queries here select it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Row {
  readonly id: string | number
  readonly position: string | number | null
  readonly event_id: string
  readonly event_type: string
  readonly aggregate_type: string
  readonly aggregate_id: string
  readonly aggregate_version: number
  readonly payload: unknown
  readonly correlation_id: string
  readonly causation_id: string
  readonly occurred_at: Date | string
}

/**
 * The columns every outbox read selects. The payload comes as its JSON text,
 * parsed once by `toEnvelope`: a driver that parses jsonb hands over a
 * payload that is a JSON string as that string, which would be parsed again
 * (and die on, or take "1" for 1).
 *
 * @since 0.1.0
 * @category constants
 */
export const columns = "id, position, event_id, event_type, aggregate_type, aggregate_id, aggregate_version, " +
  "payload::text AS payload, correlation_id, causation_id, occurred_at"

/**
 * @since 0.1.0
 * @category decoding
 */
export const toEnvelope = (row: Row): Envelope =>
  new Envelope({
    eventId: row.event_id,
    type: row.event_type,
    aggregateType: row.aggregate_type,
    aggregateId: row.aggregate_id,
    aggregateVersion: row.aggregate_version,
    occurredAt: DateTime.unsafeMake(row.occurred_at),
    correlationId: row.correlation_id,
    causationId: row.causation_id,
    payload: Column.json(row.payload)
  }, { disableValidation: true })

/**
 * Turns a database failure of a store operation into `StoreUnavailable`
 * (an outage) or a defect (anything else).
 *
 * @since 0.1.0
 * @category utils
 */
export const orUnavailable = <A, R>(
  self: Effect.Effect<A, SqlError, R>
): Effect.Effect<A, StoreUnavailable, R> => SqlFailure.classify(self)

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Outbox.Service, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): Outbox.Service => ({
    // One statement for all of a command's events.
    // Held for the commit where the transaction can send it with COMMIT.
    append: (events) =>
      events.length === 0 ? Effect.void : SqlStatement.runAtCommit(
        sql`INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
              correlation_id, causation_id, occurred_at)
            SELECT event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
              correlation_id, causation_id, occurred_at
            FROM jsonb_to_recordset(${
          JSON.stringify(events.map((event) => ({
            event_id: event.eventId,
            event_type: event.type,
            aggregate_type: event.aggregateType,
            aggregate_id: event.aggregateId,
            aggregate_version: event.aggregateVersion,
            payload: event.payload,
            correlation_id: event.correlationId,
            causation_id: event.causationId,
            occurred_at: DateTime.formatIso(event.occurredAt)
          })))
        }::jsonb) AS x(event_id uuid, event_type text, aggregate_type text, aggregate_id text,
              aggregate_version integer, payload jsonb, correlation_id text, causation_id text,
              occurred_at timestamptz)`,
        (error) => orUnavailable(Effect.fail(error))
      ),
    read: ({ after, limit }) => {
      const invalid = Outbox.invalidReadOptions({ after, limit })
      if (invalid !== undefined) return Effect.dieMessage(invalid)
      return orUnavailable(
        sql<Row>`SELECT ${sql.literal(columns)} FROM outbox
                 WHERE position > ${after} ORDER BY position LIMIT ${limit}`.withoutTransform
      ).pipe(
        Effect.map((rows) =>
          rows.map((row) => new Outbox.StoredEvent({ position: Number(row.position), event: toEnvelope(row) }))
        )
      )
    }
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Outbox.Outbox, never, SqlClient.SqlClient> = Layer.effect(Outbox.Outbox, make)

/**
 * Outbox figures for metrics: how many events wait and how old the oldest is,
 * by the database's clock (since the database took it, not its
 * `occurredAt`, which is the application's clock).
 *
 * @since 0.1.0
 * @category queries
 */
export const lag: Effect.Effect<
  { readonly unpublished: number; readonly oldestAgeSeconds: number },
  StoreUnavailable,
  SqlClient.SqlClient
> = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  orUnavailable(
    sql<{ readonly unpublished: string | number; readonly oldest_age: string | number | null }>`
      SELECT count(*) AS unpublished,
             extract(epoch FROM now() - min(coalesce(recorded_at, least(occurred_at, now())))) AS oldest_age
      FROM outbox WHERE position IS NULL`.withoutTransform
  ).pipe(
    Effect.map((rows) => {
      const row = Option.fromNullable(rows[0])
      return {
        unpublished: Option.match(row, { onNone: () => 0, onSome: (r) => Number(r.unpublished) }),
        oldestAgeSeconds: Option.match(row, { onNone: () => 0, onSome: (r) => Number(r.oldest_age ?? 0) })
      }
    })
  ))
