/**
 * The library's tables: the outbox (the event log), idempotency keys, the
 * checkpoints and dead letters of reactions that follow the log, scheduled
 * commands, the versions of event-sourced aggregates' streams and their
 * snapshots, and the processes of process managers.
 * Shipped as code, so they run from any working directory; recorded in their
 * own migrations table, so an application's migrations never collide with
 * them. The SQL runs unchanged on PostgreSQL 15 and on PGlite.
 *
 * @since 0.1.0
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as PgMigrator from "@effect/sql-pg/PgMigrator"
import { MigrationError } from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/**
 * The channel the outbox trigger notifies at commit.
 *
 * @since 0.1.0
 * @category constants
 */
export const outboxChannel = "command_bus_outbox"

/**
 * A migration of several statements, sent one at a time: PGlite's extended
 * protocol takes one statement per query.
 *
 * @since 0.1.0
 * @category migrations
 */
export const statements = (
  ...statements: ReadonlyArray<string>
): Effect.Effect<void, unknown, SqlClient.SqlClient> =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => Effect.forEach(statements, (statement) => sql.unsafe(statement), { discard: true })
  )

/**
 * The function that raises `claimLostState`: the idempotency record's write
 * calls it when no claim of its token is there to complete.
 *
 * @since 0.1.0
 * @category constants
 */
export const claimLostFunction = "command_bus_idempotency_claim_lost"

/**
 * The SQLSTATE of an idempotency claim that is no longer held.
 *
 * @since 0.1.0
 * @category constants
 */
export const claimLostState = "CB001"

// Wakes relays at commit (pg_notify is transactional), once per statement.
// The payload names the schema (listeners drop empty payloads). Migration 1
// creates it; 9 replaces it where 1 had run before the payload changed.
const outboxNotify = (create: "CREATE" | "CREATE OR REPLACE") =>
  `${create} FUNCTION command_bus_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('${outboxChannel}', current_schema());
        RETURN NULL;
      END
    $$`

/**
 * Each migration's statements. A released migration never changes: a
 * database that ran it keeps what it made, so a change goes in a new one
 * (a test holds each migration's text to what was released).
 *
 * @since 0.1.0
 * @category migrations
 */
export const sources: Readonly<Record<string, ReadonlyArray<string>>> = {
  // The event log. "id" is the insert order; "position" is given by the relay
  // when it publishes, in the order events became visible, so a reader that
  // follows positions never skips an event whose transaction committed late.
  "1_outbox": [
    `CREATE TABLE outbox (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      position bigint UNIQUE,
      event_id uuid NOT NULL UNIQUE,
      aggregate_type text NOT NULL,
      aggregate_id text NOT NULL,
      aggregate_version integer NOT NULL,
      event_type text NOT NULL,
      payload jsonb NOT NULL,
      correlation_id text NOT NULL,
      causation_id text NOT NULL,
      occurred_at timestamptz NOT NULL,
      published_at timestamptz
    )`,
    `CREATE INDEX outbox_unpublished ON outbox (id) WHERE position IS NULL`,
    `CREATE INDEX outbox_aggregate ON outbox (aggregate_type, aggregate_id, aggregate_version)`,
    outboxNotify("CREATE"),
    `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
      FOR EACH STATEMENT EXECUTE FUNCTION command_bus_outbox_notify()`
  ],
  // One row per (user scope, key). "token" identifies the claim that owns an
  // in-flight row, so a dispatch whose lease passed cannot complete or
  // release a newer claim.
  "2_idempotency_keys": [
    `CREATE TABLE idempotency_keys (
      scope text NOT NULL,
      key text NOT NULL,
      command_type text NOT NULL,
      fingerprint text NOT NULL,
      state text NOT NULL CHECK (state IN ('in_flight', 'completed')),
      token uuid NOT NULL,
      result jsonb,
      lease_expires_at timestamptz,
      expires_at timestamptz NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (scope, key),
      CHECK ((state = 'completed') = (result IS NOT NULL))
    )`,
    `CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at)`
  ],
  // How far each `Reaction.follow` has read the event log, by name.
  "3_reaction_checkpoints": [
    `CREATE TABLE reaction_checkpoints (
      name text PRIMARY KEY,
      position bigint NOT NULL CHECK (position >= 0),
      updated_at timestamptz NOT NULL
    )`
  ],
  // Events a reaction of a follower failed on, to look at and run again.
  "4_reaction_dead_letters": [
    `CREATE TABLE reaction_dead_letters (
      follower text NOT NULL,
      reaction text NOT NULL,
      event_id uuid NOT NULL,
      position bigint NOT NULL,
      aggregate_type text NOT NULL,
      aggregate_id text NOT NULL,
      event jsonb NOT NULL,
      reason text NOT NULL,
      attempts integer NOT NULL CHECK (attempts > 0),
      first_failed_at timestamptz NOT NULL,
      last_failed_at timestamptz NOT NULL,
      PRIMARY KEY (follower, reaction, event_id)
    )`,
    `CREATE INDEX reaction_dead_letters_position ON reaction_dead_letters (follower, position)`
  ],
  // Commands to dispatch later (CommandScheduler); a run removes its row.
  "5_scheduled_commands": [
    `CREATE TABLE scheduled_commands (
      id uuid PRIMARY KEY,
      command_type text NOT NULL,
      command jsonb NOT NULL,
      due_at timestamptz NOT NULL,
      state text NOT NULL CHECK (state IN ('pending', 'failed')),
      attempts integer NOT NULL CHECK (attempts >= 0),
      last_error text,
      lease_expires_at timestamptz,
      created_at timestamptz NOT NULL DEFAULT now()
    )`,
    `CREATE INDEX scheduled_commands_due ON scheduled_commands (due_at) WHERE state = 'pending'`
  ],
  // How many times an operator retried a command: a retried one runs with
  // an idempotency key of its own.
  "6_scheduled_commands_retries": [
    `ALTER TABLE scheduled_commands ADD COLUMN retries integer NOT NULL DEFAULT 0 CHECK (retries >= 0)`
  ],
  // When the database took an event, by its own clock: the outbox's lag is
  // measured against now(), and occurred_at is the application's clock,
  // which may be off. Rows from before have none (the lag reads their
  // occurred_at, no later than now()): no row is rewritten, so the
  // migration takes no time however many events wait.
  "7_outbox_recorded_at": [
    `ALTER TABLE outbox ADD COLUMN recorded_at timestamptz`,
    `ALTER TABLE outbox ALTER COLUMN recorded_at SET DEFAULT now()`
  ],
  // The columns migration 4 gained after it was released (aggregate
  // sequencing): a database that ran it before has none, and every dead
  // letter failed to be recorded there.
  "8_reaction_dead_letters_aggregate": [
    `ALTER TABLE reaction_dead_letters ADD COLUMN IF NOT EXISTS aggregate_type text`,
    `ALTER TABLE reaction_dead_letters ADD COLUMN IF NOT EXISTS aggregate_id text`,
    `UPDATE reaction_dead_letters
      SET aggregate_type = event->>'aggregateType', aggregate_id = event->>'aggregateId'
      WHERE aggregate_type IS NULL OR aggregate_id IS NULL`,
    `ALTER TABLE reaction_dead_letters
      ALTER COLUMN aggregate_type SET NOT NULL, ALTER COLUMN aggregate_id SET NOT NULL`
  ],
  // The notification as migration 1 came to send it after it was released:
  // a database that ran the first one notified with an empty payload, which
  // listeners drop, so its relays only polled.
  "9_outbox_notify_schema": [
    outboxNotify("CREATE OR REPLACE")
  ],
  // Raised by the idempotency record's write when its claim is no longer
  // held, so that the write can go out with COMMIT and still stop it.
  "10_idempotency_claim_lost": [
    `CREATE FUNCTION ${claimLostFunction}(key text) RETURNS boolean LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'the idempotency claim on key % is no longer held', key
          USING ERRCODE = '${claimLostState}';
      END
    $$`
  ],
  // Which follower of a name runs (`Reaction.follow`), and until when.
  "11_reaction_checkpoints_owner": [
    `ALTER TABLE reaction_checkpoints ADD COLUMN owner text, ADD COLUMN lease_expires_at timestamptz`
  ],
  // A scheduled command's key (`CommandScheduler.schedule`'s `key`): at most
  // one pending under each, which the index holds between transactions and
  // `INSERT ... ON CONFLICT` names; and whether a keyed schedule replaced it
  // while it ran (not run again). Rows from before have no key; neither
  // column makes PostgreSQL rewrite a row (a constant default is kept in the
  // catalogue).
  "12_scheduled_commands_key": [
    `ALTER TABLE scheduled_commands ADD COLUMN key text CHECK (char_length(key) BETWEEN 1 AND 255),
      ADD COLUMN superseded boolean NOT NULL DEFAULT false`,
    `CREATE UNIQUE INDEX scheduled_commands_key ON scheduled_commands (key)
      WHERE state = 'pending' AND key IS NOT NULL`
  ],
  // The version of each event-sourced aggregate's stream (`SqlEventStore`),
  // moved by a conditional upsert in the dispatch's transaction: its row
  // lock makes two dispatches from one version append once. A table of its
  // own rather than a unique index on the outbox's (aggregate_type,
  // aggregate_id, aggregate_version): writers that are not event-sourced may
  // give two events one version (and a database may hold such rows, which
  // would fail the index's creation), and only event-sourced handlers pay for it.
  "13_event_streams": [
    `CREATE TABLE event_streams (
      aggregate_type text NOT NULL,
      aggregate_id text NOT NULL,
      version integer NOT NULL CHECK (version > 0),
      PRIMARY KEY (aggregate_type, aggregate_id)
    )`
  ],
  // The processes of process managers (`ProcessManager`), by manager and key:
  // the state, encoded, with the ids of the events applied to it, written in
  // one statement on the version it was read at. The state is `json`, not
  // `jsonb`, which would sort an object's keys: a state read back keeps the
  // order its handler wrote.
  "14_processes": [
    `CREATE TABLE processes (
      manager text NOT NULL,
      key text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
      state json NOT NULL,
      version integer NOT NULL CHECK (version > 0),
      done boolean NOT NULL,
      applied jsonb NOT NULL,
      deadlines jsonb NOT NULL,
      updated_at timestamptz NOT NULL,
      PRIMARY KEY (manager, key)
    )`
  ],
  // The event whose run holds a process (its commands and deadlines under
  // way), claimed before they are sent; a row of version 0 is a claim on a
  // process no event was applied to yet.
  "15_processes_applying": [
    `ALTER TABLE processes ADD COLUMN applying text`,
    `ALTER TABLE processes DROP CONSTRAINT processes_version_check`,
    `ALTER TABLE processes ADD CONSTRAINT processes_version_check CHECK (version >= 0)`
  ],
  // Snapshots of event-sourced aggregates (`SqlEventStore`): a stream's
  // state folded up to a version, encoded, under the key of the schema and
  // fold that made it. A row per key, so that two deciders of one stream,
  // or two releases running side by side, do not overwrite each other's;
  // one of a key no longer used is never read (delete it at will). The
  // state is `json`, not `jsonb`, which would sort an object's keys: a state
  // from a snapshot must be the fold's, key order included.
  "16_event_snapshots": [
    `CREATE TABLE event_snapshots (
      aggregate_type text NOT NULL,
      aggregate_id text NOT NULL,
      schema_version text NOT NULL,
      version integer NOT NULL CHECK (version > 0),
      state json NOT NULL,
      taken_at timestamptz NOT NULL,
      PRIMARY KEY (aggregate_type, aggregate_id, schema_version)
    )`
  ],
  // The events applied to each process, one row each: a redelivered event
  // is found by its key. They were a list in the process's row, written
  // again with every event, so a long process's every event cost more than
  // the last (about 15 ms at 10,000 events).
  // Locked first: an instance of an earlier release (a rolling deploy) that
  // applies an event to a process while this runs commits before the lists
  // are copied, or waits for the migration (and then fails, the column gone);
  // otherwise its event's id, written after the copy, went with the column.
  "17_process_applied": [
    `LOCK TABLE processes IN EXCLUSIVE MODE`,
    `CREATE TABLE process_applied (
      manager text NOT NULL,
      key text NOT NULL,
      event_id text NOT NULL,
      PRIMARY KEY (manager, key, event_id)
    )`,
    `INSERT INTO process_applied (manager, key, event_id)
      SELECT manager, key, jsonb_array_elements_text(applied) FROM processes
      ON CONFLICT DO NOTHING`,
    `ALTER TABLE processes DROP COLUMN applied`
  ],
  // Finished processes by age, for `prune`: only done ones, which are the
  // ones it deletes, so a process under way costs the index nothing.
  "18_processes_done_index": [
    `CREATE INDEX processes_done_updated_at ON processes (manager, updated_at) WHERE done`
  ],
  // The lease a runner's claim set on a scheduled command. Its renewal as the
  // command's turn in the batch comes moves the lease on; until then the two
  // are equal, and `cancel` may still drop the command. Rows from before have
  // none (counted as running while leased), and nothing is rewritten.
  "19_scheduled_commands_claimed_lease": [
    `ALTER TABLE scheduled_commands ADD COLUMN claimed_lease_expires_at timestamptz`
  ]
}

/**
 * Migrations for `PgMigrator.fromRecord`, from their statements.
 *
 * @since 0.1.0
 * @category migrations
 */
export const fromSources = (
  sources: Readonly<Record<string, ReadonlyArray<string>>>
): Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>> =>
  Object.fromEntries(Object.entries(sources).map(([id, source]) => [id, statements(...source)]))

/**
 * @since 0.1.0
 * @category migrations
 */
export const migrations = fromSources(sources)

/**
 * Creates a migrations table as `@effect/sql`'s migrator would, under an
 * advisory lock (per schema). The migrator serializes migrations with a lock
 * on that table, but creates it first when missing: instances starting
 * together on a fresh database would race to create it.
 *
 * @since 0.1.0
 * @category migrations
 */
export const ensureTable = (table: string): Effect.Effect<void, SqlError, SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.withTransaction(
      Effect.zipRight(
        sql`SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.command_bus_migrations'))`,
        sql`CREATE TABLE IF NOT EXISTS ${sql(table)} (
          migration_id integer primary key,
          created_at timestamp with time zone not null default now(),
          name text not null
        )`
      )
    ).pipe(Effect.asVoid))

const libraryTable = "command_bus_migrations"

// A name PostgreSQL keeps as written without quotes, in a schema or not:
// the migrator of `@effect/sql` looks its table up as `'<table>'::regclass`,
// which folds it to lower case, and creates it quoted, as written.
const plainName = /^[a-z_][a-z0-9_$]{0,62}(\.[a-z_][a-z0-9_$]{0,62})?$/

// The migrator takes `<id>_<name>` and skips any other key without a word.
const migrationKey = /^\d+_.+$/

// A migration's number: the digits of its key before the first `_`.
const idOf = (key: string) => Number(key.slice(0, key.indexOf("_")))

// The migrations table keeps a migration's number in an `integer`: the
// migrator takes the failed insert of a larger one (a timestamp,
// `20261128113900_accounts`) for another instance's run, applies nothing and
// answers as if there were nothing to do, at every start.
const maxMigrationId = 2_147_483_647

const refused = (message: string) =>
  Effect.fail(new MigrationError({ reason: "bad-state", message: `SqlMigrations.runWith: ${message}` }))

// The migrator applies only the migrations numbered above the latest one
// applied: one numbered below it that was never applied (a branch merged
// after another's later migration ran) would be skipped for good, and the
// run would say it succeeded.
const refuseSkipped = (table: string, sources: Readonly<Record<string, ReadonlyArray<string>>>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.flatMap(
      sql<{ readonly migration_id: number }>`SELECT migration_id FROM ${sql(table)}`.withoutTransform,
      (rows) => {
        const applied = new Set(rows.map((row) => Number(row.migration_id)))
        const latest = rows.reduce((max, row) => Math.max(max, Number(row.migration_id)), 0)
        const skipped = Object.keys(sources).filter((key) => idOf(key) <= latest && !applied.has(idOf(key)))
        return skipped.length === 0 ? Effect.void : Effect.fail(
          new MigrationError({
            reason: "bad-state",
            message: `SqlMigrations: ${skipped.map((key) => JSON.stringify(key)).join(", ")} in ${table} ` +
              `numbered at or below the latest migration applied (${latest}) but never applied: migrations are ` +
              `applied in order, above the latest; number ${skipped.length === 1 ? "it" : "them"} above ${latest}`
          })
        )
      }
    ))

// No schema of the search_path exists (`PgPool.layer`'s `schema` not
// created): PostgreSQL's "no schema has been selected to create in" is the
// cause of a SqlError printed as "Failed to execute statement", and names no
// schema. An unqualified table goes in the first schema of the search_path
// that exists; a qualified one in its own schema, which must exist.
const requireSchema = (table: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => {
    const dot = table.indexOf(".")
    const qualifier = dot === -1 ? null : table.slice(0, dot)
    return Effect.flatMap(
      sql<{ readonly schema: string | null; readonly path: string; readonly qualified: boolean | null }>`
        SELECT current_schema() AS schema, current_setting('search_path') AS path,
          EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = ${qualifier}) AS qualified`.withoutTransform,
      ([row]) =>
        row === undefined
          ? Effect.void
          : qualifier !== null
          ? row.qualified === true ? Effect.void : Effect.fail(
            new MigrationError({
              reason: "bad-state",
              message: `SqlMigrations: the schema ${qualifier} of ${table} does not exist: create it first ` +
                `(the migrations create tables, not schemas)`
            })
          )
          : row.schema !== null
          ? Effect.void
          : Effect.fail(noSchema(row.path, table))
    )
  })

const noSchema = (path: string, table: string) =>
  new MigrationError({
    reason: "bad-state",
    message: `SqlMigrations: no schema of the search_path (${path}) exists, for ${table} and the ` +
      `tables: create it first (the migrations create tables, not schemas)`
  })

// A migration's unqualified table with no schema of the search_path
// existing (the migrations table qualified, so not checked above): the
// migrator dies with "Migration ... failed", its cause PostgreSQL's "no
// schema has been selected to create in" (3F000), and nothing names the
// search_path. Failed instead with the MigrationError that names it.
const isSchemaMissing = (defect: unknown) => {
  const failed = defect instanceof MigrationError && defect.reason === "failed" ? defect.cause : undefined
  const cause = failed instanceof SqlError ? failed.cause : undefined
  return typeof cause === "object" && cause !== null && "code" in cause && cause.code === "3F000"
}

const namingSchema = (table: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.catchSomeDefect(effect, (defect) =>
    isSchemaMissing(defect)
      ? Option.some(Effect.flatMap(SqlClient.SqlClient, (sql) =>
        Effect.flatMap(
          sql<{ readonly schema: string | null; readonly path: string }>`
            SELECT current_schema() AS schema, current_setting('search_path') AS path`.withoutTransform,
          ([row]) =>
            row === undefined || row.schema !== null ? Effect.die(defect) : Effect.fail(noSchema(row.path, table))
        )))
      : Option.none())

const migrate = (table: string, sources: Readonly<Record<string, ReadonlyArray<string>>>) =>
  requireSchema(table).pipe(
    Effect.zipRight(ensureTable(table)),
    Effect.zipRight(refuseSkipped(table, sources)),
    Effect.zipRight(
      PgMigrator.run({ loader: PgMigrator.fromRecord(fromSources(sources)), table }).pipe(
        Effect.provide(NodeContext.layer),
        namingSchema(table)
      )
    )
  )

/**
 * Runs migrations given as their statements (`{ "1_accounts": ["CREATE TABLE …"] }`), recorded in
 * `table`: an application's own, beside the library's (run `run` first). Safe to run at every start,
 * from several instances at once. Returns the migrations it applied. Refused (`MigrationError`,
 * `bad-state`), with nothing run: a table whose name needs quoting (other than lower-case letters,
 * digits and `_`, optionally after a schema and a dot), the library's own table, a key that is
 * not `<number>_<name>` or whose number is above 2147483647 (a timestamp), and a migration numbered at or below the latest one applied that was never
 * applied (migrations from two branches merged: renumber it above).
 *
 * ```ts
 * yield* SqlMigrations.run
 * yield* SqlMigrations.runWith({ table: "bank_migrations", sources: { "1_accounts": [`CREATE TABLE …`] } })
 * ```
 *
 * @since 0.1.0
 * @category migrations
 */
export const runWith = (options: {
  readonly table: string
  readonly sources: Readonly<Record<string, ReadonlyArray<string>>>
}): Effect.Effect<
  ReadonlyArray<readonly [id: number, name: string]>,
  MigrationError | SqlError,
  SqlClient.SqlClient
> => {
  if (!plainName.test(options.table)) {
    return refused(
      `the table must be a name without quotes (lower-case letters, digits and _, optionally schema.table), ` +
        `got ${JSON.stringify(options.table)}`
    )
  }
  if (options.table === libraryTable || options.table.endsWith(`.${libraryTable}`)) {
    return refused(`${libraryTable} is the library's migrations table; give the application's a name of its own`)
  }
  const unnamed = Object.keys(options.sources).find((key) => !migrationKey.test(key))
  if (unnamed !== undefined) {
    return refused(`a migration's key is <number>_<name>, got ${JSON.stringify(unnamed)}`)
  }
  const tooLarge = Object.keys(options.sources).find((key) => idOf(key) > maxMigrationId)
  if (tooLarge !== undefined) {
    return refused(
      `a migration's number is at most ${maxMigrationId} (the migrations table's integer column; number them ` +
        `1, 2, 3 … rather than by timestamp), got ${JSON.stringify(tooLarge)}`
    )
  }
  return migrate(options.table, options.sources)
}

/**
 * Runs the library's migrations; safe to run at every start, from several
 * instances at once.
 *
 * @since 0.1.0
 * @category migrations
 */
export const run = migrate(libraryTable, sources)
