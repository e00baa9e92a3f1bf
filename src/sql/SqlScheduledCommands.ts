/**
 * `CommandScheduler`'s commands in PostgreSQL. Scheduling inside a
 * dispatch's transaction is part of it; runners lease due commands with
 * `FOR UPDATE SKIP LOCKED`, so several of them, in one process or many,
 * never take the same one while its lease lasts.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as CommandScheduler from "../CommandScheduler.js"
import * as Column from "../internal/column.js"
import { pageSize } from "../internal/limit.js"
import * as SqlFailure from "./SqlFailure.js"

// An id that is no UUID names no scheduled command (the column's type would refuse it).
const isUuid = Schema.is(Schema.UUID)

// Nor does a key `schedule` refuses (PostgreSQL's text refuses a NUL).
const isKey = Schema.is(CommandScheduler.Key)

// A command a keyed schedule replaced while it ran, claimed again: its runner
// stopped before it ended, and the command under its key stands for it.
const stoppedSuperseded = CommandScheduler.supersededError("its runner stopped before it ended")

// One replaced while it waited its turn in its runner's batch: not started.
const notStartedSuperseded = CommandScheduler.supersededError("its turn in its runner's batch had not come")

// A retry that took a key another transaction was taking: that one had it
// first (the retry's check could not see it before it committed).
const isUniqueViolation = (error: SqlError) => SqlFailure.sqlState(error) === "23505"

interface Row {
  readonly id: string
  readonly command_type: string
  readonly command: unknown
  readonly due_at: Date | string
  readonly state: "pending" | "failed"
  readonly attempts: number
  readonly retries: number
  readonly last_error: string | null
  readonly key: string | null
}

const toScheduled = (row: Row): CommandScheduler.ScheduledCommand =>
  new CommandScheduler.ScheduledCommand({
    id: row.id,
    commandType: row.command_type,
    command: Column.json(row.command),
    dueAt: DateTime.unsafeMake(row.due_at),
    state: row.state,
    attempts: row.attempts,
    retries: row.retries,
    ...(row.last_error === null ? {} : { lastError: row.last_error }),
    ...(row.key === null ? {} : { key: row.key })
  }, { disableValidation: true })

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<CommandScheduler.Store, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): CommandScheduler.Store => {
    // The row while `due`'s lease holds it: a claim counts an attempt, so a
    // lease another claim took over has more; and one claimed again after
    // `retry` set attempts back has another lease time.
    const held = (due: CommandScheduler.Due) =>
      due.lease === undefined
        ? sql`id = ${due.id} AND attempts = ${due.attempts}`
        : sql`id = ${due.id} AND attempts = ${due.attempts} AND lease_expires_at = ${due.lease}::timestamptz`
    // No runner is running it: no lease holds it, or its runner claimed it
    // and has not started it (the renewal at its turn moves the lease on
    // from the one the claim set). A row an earlier release claimed has no
    // claimed lease, and counts as running while its lease holds.
    const notRunning = sql`(lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp()
      OR lease_expires_at = claimed_lease_expires_at)`
    // A delay is counted from the database's clock at the statement
    // (`statement_timestamp()`), the clock claims compare with.
    const dueAt = (due: CommandScheduler.DueTime) =>
      "at" in due ? Column.timestamp(sql, due.at) : Column.fromNow(sql, due.after)
    const store: CommandScheduler.Store = {
      add: (entry) =>
        sql`
        INSERT INTO scheduled_commands (id, command_type, command, due_at, state, attempts)
        VALUES (${entry.id}, ${entry.commandType}, ${JSON.stringify(entry.command)}::jsonb,
          ${dueAt(entry.due)}, 'pending', 0)`.pipe(Effect.asVoid, SqlFailure.classify),
      cancel: (id) =>
        !isUuid(id) ? Effect.succeed(false) : sql`
        DELETE FROM scheduled_commands WHERE id = ${id} AND ${notRunning}
        RETURNING id`.withoutTransform.pipe(
          Effect.map((rows) => rows.length > 0),
          SqlFailure.classify
        ),
      claim: (limit, lease, commandTypes) =>
        sql<
          Pick<Row, "id" | "command_type" | "command" | "attempts" | "retries" | "due_at"> & {
            readonly lease: string
            readonly superseded: boolean
          }
        >`
        UPDATE scheduled_commands AS s
        SET lease_expires_at = CASE WHEN s.superseded THEN NULL ELSE ${Column.fromNow(sql, lease)} END,
          claimed_lease_expires_at = CASE WHEN s.superseded THEN NULL ELSE ${Column.fromNow(sql, lease)} END,
          attempts = CASE WHEN s.superseded THEN s.attempts ELSE s.attempts + 1 END,
          state = CASE WHEN s.superseded THEN 'failed' ELSE s.state END,
          last_error = CASE WHEN s.superseded THEN ${stoppedSuperseded} ELSE s.last_error END
        FROM (
          SELECT id FROM scheduled_commands
          WHERE state = 'pending' AND due_at <= statement_timestamp()
            AND (lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp())
            ${commandTypes === undefined ? sql`` : sql`AND command_type = ANY(${commandTypes})`}
          ORDER BY due_at LIMIT ${limit}
          FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE s.id = due.id
        RETURNING s.id, s.command_type, s.command, s.attempts, s.retries, s.due_at, s.lease_expires_at::text AS lease,
          s.superseded`
          .withoutTransform.pipe(
            // UPDATE returns its rows in no particular order.
            Effect.map((rows) =>
              rows
                .filter((row) => !row.superseded)
                .map((row) => ({ row, dueAt: new Date(row.due_at).getTime() }))
                .sort((a, b) => a.dueAt - b.dueAt)
                .map(({ row }) => ({
                  id: row.id,
                  commandType: row.command_type,
                  command: Column.json(row.command),
                  attempts: row.attempts,
                  retries: row.retries,
                  lease: row.lease
                }))
            ),
            SqlFailure.classify
          ),
      // The lease is its token: a renewal always moves it on, so that the
      // lease it renewed no longer holds, even where the database's clock has
      // not moved since (PGlite's moves by whole milliseconds), and so that
      // `cancel` sees the command running (its lease no longer the claim's).
      // One a keyed schedule replaced while it waited its turn in the batch
      // is not started: failed, superseded, as a claim leaves it.
      renew: (due, lease) =>
        sql<{ readonly lease: string | null; readonly superseded: boolean }>`
        UPDATE scheduled_commands
        SET lease_expires_at = CASE WHEN superseded THEN NULL
            ELSE GREATEST(${Column.fromNow(sql, lease)}, lease_expires_at + interval '1 microsecond') END,
          state = CASE WHEN superseded THEN 'failed' ELSE state END,
          last_error = CASE WHEN superseded THEN ${notStartedSuperseded} ELSE last_error END
        WHERE ${held(due)} AND lease_expires_at > statement_timestamp()
        RETURNING lease_expires_at::text AS lease, superseded`.withoutTransform.pipe(
          Effect.map((rows) =>
            rows.length === 0
              ? undefined
              : rows[0]!.superseded || rows[0]!.lease === null
              ? { ...due, superseded: true }
              : { ...due, lease: rows[0]!.lease }
          ),
          SqlFailure.classify
        ),
      complete: (due) =>
        sql`DELETE FROM scheduled_commands WHERE ${held(due)}`.pipe(Effect.asVoid, SqlFailure.classify),
      // One a keyed schedule replaced while it ran fails for good instead.
      retryAfter: (due, after, error) =>
        sql<{ readonly superseded: boolean }>`
        UPDATE scheduled_commands
        SET state = CASE WHEN superseded THEN 'failed' ELSE 'pending' END,
          due_at = CASE WHEN superseded THEN due_at ELSE ${dueAt({ after })} END,
          last_error = CASE WHEN superseded THEN ${CommandScheduler.supersededError(error)} ELSE ${error} END,
          lease_expires_at = NULL
        WHERE ${held(due)} RETURNING superseded`.withoutTransform.pipe(
          Effect.map((rows) => !(rows[0]?.superseded ?? false)),
          SqlFailure.classify
        ),
      fail: (due, error) =>
        sql`
        UPDATE scheduled_commands SET state = 'failed', last_error = ${error}, lease_expires_at = NULL
        WHERE ${held(due)}`.pipe(Effect.asVoid, SqlFailure.classify),
      // A failed command keeps its key; pending again, it gives it up if
      // another has been scheduled under it since.
      retry: (id) => {
        if (!isUuid(id)) return Effect.succeed(false)
        const pendingAgain = (key: Statement.Fragment) =>
          sql`
          UPDATE scheduled_commands AS s
          SET state = 'pending', due_at = statement_timestamp(), attempts = 0, retries = retries + 1,
            lease_expires_at = NULL, key = ${key}, superseded = false
          WHERE id = ${id} AND state = 'failed' RETURNING id`.withoutTransform
        return sql.withTransaction(pendingAgain(sql`CASE WHEN EXISTS (
            SELECT 1 FROM scheduled_commands AS o WHERE o.key = s.key AND o.state = 'pending'
          ) THEN NULL ELSE s.key END`)).pipe(
          // A savepoint of the caller's transaction, if any: the violation
          // aborts only it. It says another pending command holds the key,
          // one this statement could not see (committed since it began, or
          // since the caller's snapshot, which a statement run again would
          // not see either): the command runs under none.
          Effect.catchIf(isUniqueViolation, () => pendingAgain(sql`NULL`)),
          Effect.map((rows) => rows.length > 0),
          SqlFailure.classify
        )
      },
      list: (options) =>
        sql<Row>`
        SELECT id, command_type, command, due_at, state, attempts, retries, last_error, key FROM scheduled_commands
        WHERE ${options?.state === undefined ? sql`true` : sql`state = ${options.state}`}
        ORDER BY due_at, id LIMIT ${pageSize(options?.limit)}`.withoutTransform.pipe(
          Effect.map((rows) => rows.map(toScheduled)),
          SqlFailure.classify
        ),
      addKeyed: (entry) => SqlFailure.classify(addKeyed(entry)),
      cancelKey: (key) =>
        !isKey(key) ? Effect.succeed(false) : sql`
        DELETE FROM scheduled_commands
        WHERE key = ${key} AND state = 'pending' AND ${notRunning}
        RETURNING id`.withoutTransform.pipe(
          Effect.map((rows) => rows.length > 0),
          SqlFailure.classify
        )
    }

    // The unique index on pending keys decides between transactions that
    // schedule under one key at once: the later one waits for the earlier
    // to commit, then replaces or keeps its command, as it would one
    // committed before. What the statements cannot do alone, they repeat:
    // each repetition follows a change another transaction committed.
    type Keyed = Parameters<NonNullable<CommandScheduler.Store["addKeyed"]>>[0]
    const addKeyed = (entry: Keyed): Effect.Effect<string, SqlError> =>
      entry.onConflict === "keep"
        ? Effect.flatMap(
          sql<{ readonly id: string }>`
          INSERT INTO scheduled_commands (id, key, command_type, command, due_at, state, attempts)
          VALUES (${entry.id}, ${entry.key}, ${entry.commandType}, ${JSON.stringify(entry.command)}::jsonb,
            ${dueAt(entry.due)}, 'pending', 0)
          ON CONFLICT (key) WHERE state = 'pending' AND key IS NOT NULL DO NOTHING
          RETURNING id`.withoutTransform,
          (added) =>
            added.length > 0 ? Effect.succeed(added[0]!.id) : Effect.flatMap(
              sql<{ readonly id: string }>`
              SELECT id FROM scheduled_commands WHERE key = ${entry.key} AND state = 'pending'`.withoutTransform,
              // Gone meanwhile (run, failed or cancelled): the key is free.
              (kept) => kept.length > 0 ? Effect.succeed(kept[0]!.id) : addKeyed(entry)
            )
        )
        : Effect.flatMap(
          // Replaced where it is (under the new id, so that its run has an
          // idempotency key of its own), unless a runner holds it.
          sql<{ readonly id: string }>`
          INSERT INTO scheduled_commands AS s (id, key, command_type, command, due_at, state, attempts)
          VALUES (${entry.id}, ${entry.key}, ${entry.commandType}, ${JSON.stringify(entry.command)}::jsonb,
            ${dueAt(entry.due)}, 'pending', 0)
          ON CONFLICT (key) WHERE state = 'pending' AND key IS NOT NULL DO UPDATE
          SET id = excluded.id, command_type = excluded.command_type, command = excluded.command,
            due_at = excluded.due_at, attempts = 0, retries = 0, last_error = NULL, lease_expires_at = NULL,
            created_at = excluded.created_at
          WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= statement_timestamp()
          RETURNING id`.withoutTransform,
          (added) =>
            added.length > 0 ? Effect.succeed(added[0]!.id) : Effect.zipRight(
              // Running: it runs on to its outcome under no key (its runner
              // finds it by id and lease), and the key is this one's.
              sql`
              UPDATE scheduled_commands SET key = NULL, superseded = true
              WHERE key = ${entry.key} AND state = 'pending' AND lease_expires_at > statement_timestamp()`,
              Effect.suspend(() => addKeyed(entry))
            )
        )
    return store
  }
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<CommandScheduler.ScheduledCommands, never, SqlClient.SqlClient> = Layer.effect(
  CommandScheduler.ScheduledCommands,
  make
)
