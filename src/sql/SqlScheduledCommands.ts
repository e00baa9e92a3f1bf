/**
 * `CommandScheduler`'s commands in PostgreSQL. Scheduling inside a
 * dispatch's transaction is part of it; runners lease due commands with
 * `FOR UPDATE SKIP LOCKED`, so several of them, in one process or many,
 * never take the same one while its lease lasts.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
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

interface Row {
  readonly id: string
  readonly command_type: string
  readonly command: unknown
  readonly due_at: Date | string
  readonly state: "pending" | "failed"
  readonly attempts: number
  readonly retries: number
  readonly last_error: string | null
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
    ...(row.last_error === null ? {} : { lastError: row.last_error })
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
    // A time goes as whole seconds and milliseconds since the epoch, exact
    // in integers: PostgreSQL does not read the ISO form of a year past 9999
    // (`+010000-…`), and a fraction of seconds that far out loses a digit.
    const at = (time: DateTime.Utc) => {
      const millis = DateTime.toEpochMillis(time)
      const seconds = Math.floor(millis / 1000)
      return sql`(to_timestamp(${seconds}::bigint) + ${millis - seconds * 1000}::integer * interval '1 millisecond')`
    }
    // A delay is counted from the database's clock at the statement
    // (`statement_timestamp()`), the clock claims compare with.
    const dueAt = (due: CommandScheduler.DueTime) => "at" in due ? at(due.at) : Column.fromNow(sql, due.after)
    return {
      add: (entry) =>
        sql`
        INSERT INTO scheduled_commands (id, command_type, command, due_at, state, attempts)
        VALUES (${entry.id}, ${entry.commandType}, ${JSON.stringify(entry.command)}::jsonb,
          ${dueAt(entry.due)}, 'pending', 0)`.pipe(Effect.asVoid, SqlFailure.classify),
      cancel: (id) =>
        !isUuid(id) ? Effect.succeed(false) : sql`
        DELETE FROM scheduled_commands
        WHERE id = ${id} AND (lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp())
        RETURNING id`.withoutTransform.pipe(
          Effect.map((rows) => rows.length > 0),
          SqlFailure.classify
        ),
      claim: (limit, lease) =>
        sql<
          Pick<Row, "id" | "command_type" | "command" | "attempts" | "retries" | "due_at"> & { readonly lease: string }
        >`
        UPDATE scheduled_commands AS s
        SET lease_expires_at = ${Column.fromNow(sql, lease)},
          attempts = s.attempts + 1
        FROM (
          SELECT id FROM scheduled_commands
          WHERE state = 'pending' AND due_at <= statement_timestamp()
            AND (lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp())
          ORDER BY due_at LIMIT ${limit}
          FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE s.id = due.id
        RETURNING s.id, s.command_type, s.command, s.attempts, s.retries, s.due_at, s.lease_expires_at::text AS lease`
          .withoutTransform.pipe(
            // UPDATE returns its rows in no particular order.
            Effect.map((rows) =>
              rows
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
      renew: (due, lease) =>
        sql<{ readonly lease: string }>`
        UPDATE scheduled_commands SET lease_expires_at = ${Column.fromNow(sql, lease)}
        WHERE ${held(due)} AND lease_expires_at > statement_timestamp()
        RETURNING lease_expires_at::text AS lease`.withoutTransform.pipe(
          Effect.map((rows) => rows.length === 0 ? undefined : { ...due, lease: rows[0]!.lease }),
          SqlFailure.classify
        ),
      complete: (due) =>
        sql`DELETE FROM scheduled_commands WHERE ${held(due)}`.pipe(Effect.asVoid, SqlFailure.classify),
      retryAfter: (due, after, error) =>
        sql`
        UPDATE scheduled_commands
        SET state = 'pending', due_at = ${dueAt({ after })}, last_error = ${error},
          lease_expires_at = NULL
        WHERE ${held(due)}`.pipe(Effect.asVoid, SqlFailure.classify),
      fail: (due, error) =>
        sql`
        UPDATE scheduled_commands SET state = 'failed', last_error = ${error}, lease_expires_at = NULL
        WHERE ${held(due)}`.pipe(Effect.asVoid, SqlFailure.classify),
      retry: (id) =>
        !isUuid(id) ? Effect.succeed(false) : sql`
        UPDATE scheduled_commands
        SET state = 'pending', due_at = statement_timestamp(), attempts = 0, retries = retries + 1, lease_expires_at = NULL
        WHERE id = ${id} AND state = 'failed' RETURNING id`.withoutTransform.pipe(
          Effect.map((rows) => rows.length > 0),
          SqlFailure.classify
        ),
      list: (options) =>
        sql<Row>`
        SELECT id, command_type, command, due_at, state, attempts, retries, last_error FROM scheduled_commands
        WHERE ${options?.state === undefined ? sql`true` : sql`state = ${options.state}`}
        ORDER BY due_at, id LIMIT ${pageSize(options?.limit)}`.withoutTransform.pipe(
          Effect.map((rows) => rows.map(toScheduled)),
          SqlFailure.classify
        )
    }
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
