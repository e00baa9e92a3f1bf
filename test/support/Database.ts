/**
 * The database integration tests run on: the PostgreSQL server in
 * `DATABASE_URL` when set (each test file in a fresh schema, dropped at the
 * end), else an embedded PostgreSQL (PGlite) in a temporary folder.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import Pg from "pg"
import * as Migrations from "../../src/orders/Migrations.js"
import * as Database from "../../src/server/Database.js"
import * as PgliteClient from "../../src/sql/PgliteClient.js"

/** The real server's URL, when the suite runs against one. */
export const serverUrl: string | undefined = process.env.DATABASE_URL

/** Which database this run uses, for test names. */
export const kind = serverUrl === undefined ? "embedded" : "postgres"

/** A fresh temporary folder, removed by the caller's scope. */
export const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), `${prefix}-`))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )

/** A schema name no other test file uses. */
export const freshSchema = () => `t_${randomBytes(6).toString("hex")}`

const dropSchema = (schema: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)).pipe(
    Effect.provide(Database.serverLayer({
      url: Redacted.make(serverUrl!),
      schema: Option.none(),
      poolSize: 1,
      connectTimeout: Duration.seconds(5),
      statementTimeout: Duration.seconds(30)
    })),
    Effect.ignore
  )

/** Runs `statement` on a server connection of its own, outside any pool a test builds. */
export const admin = (statement: string) =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      const client = new Pg.Client({ connectionString: serverUrl })
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.query(statement)),
    (client) => Effect.promise(() => client.end())
  )

/** A schema of its own on the server for the rest of the scope, `name` or a fresh one; dropped with what it holds. */
export const scopedSchema = (name: string = freshSchema()) =>
  Effect.as(
    Effect.acquireRelease(
      admin(`CREATE SCHEMA ${Pg.escapeIdentifier(name)}`),
      () => admin(`DROP SCHEMA ${Pg.escapeIdentifier(name)} CASCADE`)
    ),
    name
  )

/**
 * A migrated database of its own: a fresh schema on the server (dropped at
 * the end), or a fresh embedded database in `dataDir` (a temporary folder
 * when not given).
 */
export const layer = (options: { readonly dataDir?: string } = {}): Layer.Layer<
  PgClient.PgClient | SqlClient.SqlClient,
  unknown
> => {
  if (serverUrl !== undefined) {
    const schema = freshSchema()
    return Layer.scopedContext(
      Effect.gen(function*() {
        yield* Effect.addFinalizer(() => dropSchema(schema))
        const context = yield* Layer.build(
          Layer.effectDiscard(Database.migrate).pipe(
            Layer.provideMerge(Database.layer),
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({
              DATABASE_URL: serverUrl,
              DATABASE_SCHEMA: schema,
              DB_POOL_SIZE: 20
            })))
          )
        )
        return context
      })
    )
  }
  return Layer.scopedContext(
    Effect.gen(function*() {
      const dataDir = options.dataDir ?? (yield* tempDir("ecb-pglite"))
      const context = yield* Layer.build(PgliteClient.layer({ dataDir }))
      yield* Effect.provide(Migrations.run, context)
      return context
    })
  )
}

/** Empties every table between tests that share a database. */
export const truncateAll = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    sql.unsafe(
      "TRUNCATE orders, inventory, outbox, idempotency_keys, reaction_checkpoints, reaction_dead_letters, scheduled_commands," +
        " event_streams, event_snapshots, processes, process_applied" +
        " RESTART IDENTITY"
    )
)

/**
 * Configuration for a service under test, pointing at its own database: a
 * fresh schema on the server, or an embedded database in `dataDir`.
 */
export const serviceEnv = (dataDir: string, extra: Record<string, string> = {}): Record<string, string> => ({
  DATA_DIR: dataDir,
  HOST: "127.0.0.1",
  PORT: "0",
  LOG_LEVEL: "Warning",
  JWT_SECRET: "test-secret-test-secret-test-secret-0123456789",
  ...(serverUrl === undefined ? {} : { DATABASE_URL: serverUrl, DATABASE_SCHEMA: freshSchema() }),
  ...extra
})

/** Drops a service's schema, when it ran on the server. */
export const dropServiceSchema = (env: Record<string, string | undefined>) =>
  env.DATABASE_SCHEMA === undefined ? Effect.void : dropSchema(env.DATABASE_SCHEMA)

export { PgClient }

/**
 * Everything the migrations make in the current schema, as text: columns
 * (in table order, or by name when a column added later, which comes last
 * in its table, should compare equal to one created in place), indexes,
 * constraints, triggers and functions.
 */
export const schemaSnapshot = (columnsBy: "position" | "name" = "position") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return {
      columns: yield* sql`
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, ${columnsBy === "name" ? sql`column_name` : sql`ordinal_position`}`.withoutTransform,
      indexes: yield* sql`
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()
        ORDER BY tablename, indexname`.withoutTransform,
      constraints: yield* sql`
        SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS definition
        FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
        ORDER BY table_name, conname`.withoutTransform,
      triggers: yield* sql`
        SELECT event_object_table, trigger_name, action_timing, event_manipulation, action_statement
        FROM information_schema.triggers WHERE trigger_schema = current_schema()
        ORDER BY event_object_table, trigger_name`.withoutTransform,
      functions: yield* sql`
        SELECT proname, pg_get_functiondef(oid) AS definition FROM pg_proc
        WHERE pronamespace = current_schema()::regnamespace ORDER BY proname`.withoutTransform
    }
  })
