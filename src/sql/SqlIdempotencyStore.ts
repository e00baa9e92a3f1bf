/**
 * The idempotency store on PostgreSQL, the default. The claim is one
 * atomic `INSERT … ON CONFLICT` (two concurrent duplicates cannot both
 * claim); the success record is written by the bus inside the command's own
 * transaction, so it commits with the command's effects or not at all.
 * Leases and expiry use the database's clock, shared by every instance.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import { randomUUID } from "node:crypto"
import type { StoreUnavailable } from "../CommandError.js"
import * as Idempotency from "../Idempotency.js"
import * as Column from "../internal/column.js"
import * as SqlFailure from "./SqlFailure.js"
import * as SqlMigrations from "./SqlMigrations.js"
import { orUnavailable } from "./SqlOutbox.js"
import * as SqlStatement from "./SqlStatement.js"

interface ClaimRow {
  readonly claimed: boolean
  readonly fingerprint: string
  readonly state: "in_flight" | "completed"
  readonly result: unknown
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Idempotency.Store, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): Idempotency.Store => {
    const existing = (scope: string, key: string) =>
      SqlStatement.rows(sql<ClaimRow>`SELECT false AS claimed, fingerprint, state, result FROM idempotency_keys
                    WHERE scope = ${scope} AND key = ${key}`)

    const toClaim = (row: ClaimRow, token: string): Idempotency.Claim =>
      row.claimed
        ? { _tag: "Claimed", token }
        : row.state === "completed"
        ? { _tag: "Completed", fingerprint: row.fingerprint, result: row.result as Idempotency.StoredResult }
        : { _tag: "InFlight", fingerprint: row.fingerprint }

    return {
      joinsTransaction: true,
      claim: (request) =>
        Effect.suspend(() => {
          const token = randomUUID()
          // Claims a new key, or takes over one whose record expired or whose
          // in-flight lease passed. One statement on the common path (a new
          // key); a key held by another record is then read with a fresh
          // snapshot, which also sees a claim that committed after this
          // statement's (locked by the insert, invisible to its select).
          const insert = SqlStatement.rows(sql<{ readonly claimed: boolean }>`
            INSERT INTO idempotency_keys
              (scope, key, command_type, fingerprint, state, token, lease_expires_at, expires_at)
            VALUES (${request.scope}, ${request.key}, ${request.commandType}, ${request.fingerprint},
              'in_flight', ${token}, ${Column.fromNow(sql, request.lease)},
              ${Column.fromNow(sql, request.retention)})
            ON CONFLICT (scope, key) DO UPDATE SET
              command_type = EXCLUDED.command_type, fingerprint = EXCLUDED.fingerprint,
              state = 'in_flight', token = EXCLUDED.token, result = NULL,
              lease_expires_at = EXCLUDED.lease_expires_at, expires_at = EXCLUDED.expires_at
            WHERE idempotency_keys.expires_at <= statement_timestamp()
               OR (idempotency_keys.state = 'in_flight' AND idempotency_keys.lease_expires_at <= statement_timestamp())
            RETURNING true AS claimed`)
          // The record read after a refused insert may be gone (released or
          // pruned in between): then the key is free, and the insert is tried
          // again, a bounded number of times.
          const attempt = (left: number): Effect.Effect<Idempotency.Claim, SqlError.SqlError> =>
            Effect.flatMap(insert, (inserted) =>
              inserted.length > 0
                ? Effect.succeed<Idempotency.Claim>({ _tag: "Claimed", token })
                : Effect.flatMap(existing(request.scope, request.key), (rows) =>
                  rows.length > 0
                    ? Effect.succeed(toClaim(rows[0]!, token))
                    : left > 0
                    ? attempt(left - 1)
                    : Effect.dieMessage("idempotency claim found neither a claim nor a record")))
          return orUnavailable(attempt(3))
        }),
      // Held for the transaction's COMMIT where it can go with it: then a
      // claim that is no longer held raises an error in SQL (no row count
      // can stop a COMMIT sent in the same exchange), and the commit fails
      // with `IdempotencyKeyInFlight`. Run at once, it updates no row, which
      // leaves the caller's transaction usable.
      complete: (request) => {
        const update = sql`UPDATE idempotency_keys
            SET state = 'completed', result = ${JSON.stringify(request.result)}::jsonb, lease_expires_at = NULL,
              expires_at = ${Column.fromNow(sql, request.retention)}
            WHERE scope = ${request.scope} AND key = ${request.key} AND token = ${request.token}
              AND state = 'in_flight'`
        const held = sql`WITH completed AS (${update} RETURNING 1)
          SELECT CASE WHEN count(*) = 1 THEN true
            ELSE ${sql.literal(SqlMigrations.claimLostFunction)}(${request.key}) END AS ok
          FROM completed`
        const now = () => SqlStatement.rows(sql<{ readonly ok: boolean }>`${update} RETURNING true AS ok`)
        return Effect.flatMap(
          SqlStatement.holdForCommit(
            held,
            (error): Effect.Effect<never, Idempotency.IdempotencyKeyInFlight | StoreUnavailable> =>
              SqlFailure.sqlState(error) === SqlMigrations.claimLostState
                ? Effect.fail(new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: request.key }))
                : orUnavailable(Effect.fail(error))
          ),
          (wasHeld) => wasHeld ? Effect.succeed(true) : orUnavailable(Effect.map(now(), (rows) => rows.length === 1))
        )
      },
      release: (request) =>
        orUnavailable(
          SqlStatement.run(sql`DELETE FROM idempotency_keys
              WHERE scope = ${request.scope} AND key = ${request.key} AND token = ${request.token}
                AND state = 'in_flight'`)
        ),
      prune: orUnavailable(
        sql<{ readonly pruned: string | number }>`
          WITH pruned AS (DELETE FROM idempotency_keys WHERE expires_at <= statement_timestamp() RETURNING 1)
          SELECT count(*) AS pruned FROM pruned`.withoutTransform
      ).pipe(Effect.map((rows) => Number(rows[0]?.pruned ?? 0)))
    }
  }
)

/**
 * The SQL store, pruned every minute by a background fiber.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Idempotency.IdempotencyStore, never, SqlClient.SqlClient> = Idempotency
  .layerWithPruning(
    make,
    "1 minute"
  )
