/**
 * The positions `Reaction.follow` has reached in the event log, in
 * PostgreSQL, one row per follower name.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Column from "../internal/column.js"
import * as Reaction from "../Reaction.js"
import * as SqlFailure from "./SqlFailure.js"

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Reaction.CheckpointStore, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql) => ({
    load: (name) =>
      sql<{ readonly position: string | number }>`
        SELECT position FROM reaction_checkpoints WHERE name = ${name}`.withoutTransform.pipe(
        Effect.map((rows) => rows.length === 0 ? 0 : Number(rows[0]!.position)),
        SqlFailure.classify
      ),
    // Never backwards: a late save of an earlier position keeps the later one.
    save: (name, position) =>
      sql`
        INSERT INTO reaction_checkpoints (name, position, updated_at) VALUES (${name}, ${position}, now())
        ON CONFLICT (name) DO UPDATE
          SET position = GREATEST(reaction_checkpoints.position, EXCLUDED.position), updated_at = now()`.pipe(
        Effect.asVoid,
        SqlFailure.classify
      ),
    reset: (name, position) =>
      sql`
        INSERT INTO reaction_checkpoints (name, position, updated_at) VALUES (${name}, ${position}, now())
        ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()`.pipe(
        Effect.asVoid,
        SqlFailure.classify
      ),
    // Free, lapsed or its own: the row's lock makes one claimant win.
    claim: (name, owner, lease) =>
      sql<{ readonly owner: string }>`
        INSERT INTO reaction_checkpoints (name, position, updated_at, owner, lease_expires_at)
        VALUES (${name}, 0, now(), ${owner}, ${Column.fromNow(sql, lease)})
        ON CONFLICT (name) DO UPDATE
          SET owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at
          WHERE reaction_checkpoints.owner IS NULL OR reaction_checkpoints.owner = EXCLUDED.owner
            OR reaction_checkpoints.lease_expires_at <= statement_timestamp()
        RETURNING owner`.withoutTransform.pipe(
        Effect.map((rows) => rows.length === 1),
        SqlFailure.classify
      ),
    release: (name, owner) =>
      sql`
        UPDATE reaction_checkpoints SET owner = NULL, lease_expires_at = NULL
        WHERE name = ${name} AND owner = ${owner}`.pipe(Effect.asVoid, SqlFailure.classify)
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Reaction.Checkpoints, never, SqlClient.SqlClient> = Layer.effect(
  Reaction.Checkpoints,
  make
)
