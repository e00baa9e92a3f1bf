/**
 * The processes of process managers (`ProcessManager`), in PostgreSQL, one
 * row per manager and key in `processes`, and one per event applied in
 * `process_applied`. A save is one statement on the version read, so the
 * state and the events applied to it never diverge, and of two runs that
 * read one version, one writes. `prune` deletes finished processes with
 * their events applied, a batch per statement.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Column from "../internal/column.js"
import * as ProcessManager from "../ProcessManager.js"
import * as SqlFailure from "./SqlFailure.js"

interface Row {
  readonly state: unknown
  readonly version: number
  readonly done: boolean
  readonly applied: boolean
  readonly deadlines: unknown
  readonly applying: string | null
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<ProcessManager.ProcessStore, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql) => ({
    load: (manager, key, eventId) =>
      sql<Row>`
        SELECT state::text AS state, version, done, deadlines, applying,
          EXISTS (
            SELECT 1 FROM process_applied
            WHERE manager = ${manager} AND key = ${key} AND event_id = ${eventId ?? null}::text
          ) AS applied
        FROM processes
        WHERE manager = ${manager} AND key = ${key}`.withoutTransform.pipe(
        Effect.map((rows) =>
          rows.length === 0 ? Option.none() : Option.some({
            // As text, parsed here: a driver that parses the column hands a
            // state that is a JSON string (a status) over as that string.
            state: JSON.parse(rows[0]!.state as string) as unknown,
            version: Number(rows[0]!.version),
            done: rows[0]!.done,
            applied: rows[0]!.applied,
            deadlines: Column.json(rows[0]!.deadlines) as ReadonlyArray<string>,
            ...(rows[0]!.applying === null ? {} : { applying: rows[0]!.applying })
          })
        ),
        SqlFailure.classify
      ),
    // The first write inserts (or takes a row of version 0 over: a claim
    // given up), a later one updates the version and claim it read: either
    // way no row comes back when another write came first. The event the
    // write ends is kept as applied in the same statement, only if it wrote.
    save: (manager, key, process, expected, claimed, applied) => {
      const state = JSON.stringify(process.state)
      const deadlines = JSON.stringify(process.deadlines)
      const applying = process.applying ?? null
      const held = claimed ?? null
      const kept = (write: Statement.Fragment) =>
        sql`
          WITH written AS (${write}),
            kept AS (
              INSERT INTO process_applied (manager, key, event_id)
              SELECT ${manager}, ${key}, ${applied ?? null}::text FROM written WHERE ${
          applied ?? null
        }::text IS NOT NULL
              ON CONFLICT DO NOTHING
            )
          SELECT version FROM written`
      // A claim, or its release, keeps the version: only the claim changes,
      // and the state is not written again.
      const written = expected > 0 && process.version === expected
        ? sql`
          UPDATE processes SET applying = ${applying}::text, updated_at = now()
          WHERE manager = ${manager} AND key = ${key} AND version = ${expected}
            AND applying IS NOT DISTINCT FROM ${held}::text
          RETURNING version`
        : expected === 0
        ? kept(sql`
          INSERT INTO processes (manager, key, state, version, done, deadlines, applying, updated_at)
          VALUES (${manager}, ${key}, ${state}::json, ${process.version}, ${process.done},
            ${deadlines}::jsonb, ${applying}::text, now())
          ON CONFLICT (manager, key) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
            done = EXCLUDED.done, deadlines = EXCLUDED.deadlines,
            applying = EXCLUDED.applying, updated_at = EXCLUDED.updated_at
          WHERE processes.version = 0 AND processes.applying IS NOT DISTINCT FROM ${held}::text
          RETURNING version`)
        : kept(sql`
          UPDATE processes SET state = ${state}::json, version = ${process.version}, done = ${process.done},
            deadlines = ${deadlines}::jsonb, applying = ${applying}::text, updated_at = now()
          WHERE manager = ${manager} AND key = ${key} AND version = ${expected}
            AND applying IS NOT DISTINCT FROM ${held}::text
          RETURNING version`)
      return written.withoutTransform.pipe(Effect.map((rows) => rows.length === 1), SqlFailure.classify)
    },
    // One statement per batch, the oldest first, on the partial index of
    // done processes: the rows it picks are locked, and one a run has
    // locked (a claim or a save under way) is skipped, not waited for. A
    // save that comes after finds no row, and writes nothing; the ids of
    // the events applied go with their process.
    prune: (manager, before, limit) => {
      return sql<{ readonly pruned: string | number }>`
        WITH picked AS (
          SELECT manager, key FROM processes
          WHERE manager = ${manager} AND done AND applying IS NULL AND updated_at < ${Column.timestamp(sql, before)}
          ORDER BY updated_at
          LIMIT ${limit}
          FOR UPDATE SKIP LOCKED
        ),
          pruned AS (
            DELETE FROM processes USING picked
            WHERE processes.manager = picked.manager AND processes.key = picked.key
            RETURNING processes.manager, processes.key
          ),
          applied AS (
            DELETE FROM process_applied USING pruned
            WHERE process_applied.manager = pruned.manager AND process_applied.key = pruned.key
          )
        SELECT count(*) AS pruned FROM pruned`.withoutTransform.pipe(
        Effect.map((rows) => Number(rows[0]?.pruned ?? 0)),
        SqlFailure.classify
      )
    }
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<ProcessManager.Processes, never, SqlClient.SqlClient> = Layer.effect(
  ProcessManager.Processes,
  make
)
