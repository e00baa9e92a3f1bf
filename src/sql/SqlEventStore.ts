/**
 * Event streams on PostgreSQL: a stream is its aggregate's rows of the
 * outbox (the event log, read by the outbox's `outbox_aggregate` index),
 * and its version is guarded by a row of `event_streams`, moved in the
 * dispatch's transaction by one conditional upsert. The upsert takes the
 * row's lock, so a second dispatch from the same version waits for the
 * first's outcome: it fails with `ConcurrencyConflict` once the first
 * commits, and goes on once it rolls back (which leaves no row or version
 * behind). Only event-sourced handlers touch the table: other writers of
 * the outbox, and their events, are as before. Snapshots are rows of
 * `event_snapshots`, one per stream and `schemaVersion`, written in the
 * dispatch's transaction; a stream is then read from its snapshot's version
 * on, by the same index.
 *
 * Database errors are defects here, as in a repository (a handler's error
 * channel holds its domain errors only); the unit of work reports outages
 * as `StoreUnavailable`.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ConcurrencyConflict } from "../CommandError.js"
import * as EventStore from "../EventStore.js"
import * as Tracing from "../Tracing.js"
import * as SqlFailure from "./SqlFailure.js"
import { columns, type Row, toEnvelope } from "./SqlOutbox.js"
import * as SqlStatement from "./SqlStatement.js"

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<EventStore.Service, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): EventStore.Service => ({
    read: (stream, options) =>
      SqlStatement.rows(
        sql<Row>`SELECT ${sql.literal(columns)} FROM outbox
                 WHERE aggregate_type = ${stream.aggregateType} AND aggregate_id = ${stream.aggregateId}${
          options?.after === undefined ? sql`` : sql` AND aggregate_version > ${options.after}`
        }
                 ORDER BY aggregate_version, id`
      ).pipe(
        Effect.map((rows) => rows.map(toEnvelope)),
        Effect.orDie,
        Tracing.withSpan("SqlEventStore.read")
      ),
    // The row's version may be below `expected` only for a stream whose
    // events were written without the guard (before it existed): such a
    // stream is at the version its events say, and is not locked out.
    advance: (stream, expected, next) =>
      SqlStatement.rows(
        sql`INSERT INTO event_streams (aggregate_type, aggregate_id, version)
            VALUES (${stream.aggregateType}, ${stream.aggregateId}, ${next})
            ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version
            WHERE event_streams.version <= ${expected}
            RETURNING 1 AS advanced`
      ).pipe(
        Effect.orDie,
        Effect.flatMap((rows) =>
          rows.length === 1 ? Effect.void : Effect.fail(
            new ConcurrencyConflict({
              aggregateType: stream.aggregateType,
              aggregateId: stream.aggregateId,
              expectedVersion: expected
            })
          )
        ),
        Tracing.withSpan("SqlEventStore.advance")
      ),
    snapshots: {
      load: (stream, schemaVersion) =>
        SqlStatement.rows(
          // As text, parsed here: a driver that parses the column hands over
          // a state that is a JSON string as that string, which `Column.json`
          // would parse again (and die on, or take "1" for 1).
          sql<{ readonly version: number; readonly state: string }>`SELECT version, state::text AS state
            FROM event_snapshots
            WHERE aggregate_type = ${stream.aggregateType} AND aggregate_id = ${stream.aggregateId}
              AND schema_version = ${schemaVersion}`
        ).pipe(
          Effect.map((rows) =>
            rows.length === 0
              ? Option.none()
              : Option.some({ schemaVersion, version: rows[0]!.version, state: JSON.parse(rows[0]!.state) as unknown })
          ),
          Effect.orDie,
          Tracing.withSpan("SqlEventStore.loadSnapshot")
        ),
      // Held for the COMMIT where the transaction can send it with it, as
      // the events it folds in are: no round trip of its own.
      save: (stream, snapshot) =>
        SqlStatement.runAtCommit(
          sql`INSERT INTO event_snapshots (aggregate_type, aggregate_id, schema_version, version, state, taken_at)
              VALUES (${stream.aggregateType}, ${stream.aggregateId}, ${snapshot.schemaVersion}, ${snapshot.version},
                ${JSON.stringify(snapshot.state)}::json, now())
              ON CONFLICT (aggregate_type, aggregate_id, schema_version) DO UPDATE
                SET version = excluded.version, state = excluded.state, taken_at = excluded.taken_at`,
          Effect.die
        ).pipe(Tracing.withSpan("SqlEventStore.saveSnapshot")),
      // A batch a statement, on the primary key's leading column, skipping
      // (not waiting for) a row a dispatch is writing.
      prune: (aggregateType, keep, limit) =>
        sql<{ readonly pruned: string | number }>`
          WITH picked AS (
            SELECT aggregate_id, schema_version FROM event_snapshots
            WHERE aggregate_type = ${aggregateType} AND schema_version IS DISTINCT FROM ${keep ?? null}::text
            LIMIT ${limit}
            FOR UPDATE SKIP LOCKED
          ),
            pruned AS (
              DELETE FROM event_snapshots USING picked
              WHERE event_snapshots.aggregate_type = ${aggregateType}
                AND event_snapshots.aggregate_id = picked.aggregate_id
                AND event_snapshots.schema_version = picked.schema_version
              RETURNING 1
            )
          SELECT count(*) AS pruned FROM pruned`.withoutTransform.pipe(
          Effect.map((rows) => Number(rows[0]?.pruned ?? 0)),
          SqlFailure.classify,
          Tracing.withSpan("SqlEventStore.pruneSnapshots", { attributes: { "aggregate.type": aggregateType } })
        )
    }
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<EventStore.EventStore, never, SqlClient.SqlClient> = Layer.effect(
  EventStore.EventStore,
  make
)
