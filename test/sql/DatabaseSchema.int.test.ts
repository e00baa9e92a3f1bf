/**
 * `DATABASE_SCHEMA` on a PostgreSQL server: instances that start together
 * on a new schema all come up, and a name that is also an SQL keyword is
 * still a name. (The embedded database has no schema setting.)
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import Pg from "pg"
import * as Database from "../../src/server/Database.js"
import * as TestDatabase from "../support/Database.js"

/** The schema a connection of `database`, built from `settings`, works in; the layer closed after. */
const currentSchemaOf = (
  database: Layer.Layer<SqlClient.SqlClient, unknown>,
  settings: Readonly<Record<string, unknown>>
) =>
  Layer.build(database).pipe(
    Effect.flatMap((context) =>
      Effect.flatMap(
        SqlClient.SqlClient,
        (sql) => sql<{ readonly schema: string }>`SELECT current_schema() AS schema`
      ).pipe(Effect.provide(context))
    ),
    Effect.scoped,
    Effect.withConfigProvider(ConfigProvider.fromJson(settings)),
    Logger.withMinimumLogLevel(LogLevel.Warning)
  )

const instance = (schema: string, settings: Readonly<Record<string, string>> = {}) =>
  currentSchemaOf(Database.layerMigrated, {
    DATABASE_URL: TestDatabase.serverUrl!,
    DATABASE_SCHEMA: schema,
    DB_POOL_SIZE: 2,
    ...settings
  })

describe.skipIf(TestDatabase.serverUrl === undefined)("DATABASE_SCHEMA (postgres)", () => {
  it.scoped("three instances starting together on a new schema all come up, migrated", () =>
    Effect.gen(function*() {
      for (let round = 0; round < 5; round++) {
        const schema = TestDatabase.freshSchema()
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: schema }))
        const exits = yield* Effect.all([instance(schema), instance(schema), instance(schema)].map(Effect.exit), {
          concurrency: "unbounded"
        })
        for (const exit of exits) {
          expect(Exit.isSuccess(exit), `round ${round}: ${Exit.isFailure(exit) ? String(exit.cause) : ""}`).toBe(true)
          if (Exit.isSuccess(exit)) expect(exit.value).toEqual([{ schema }])
        }
      }
    }), 120_000)

  it.scoped(
    "without DATABASE_SCHEMA the tables are in public, not in a schema named after the login role",
    () =>
      Effect.gen(function*() {
        // PostgreSQL's default search_path is "$user", public: a schema named
        // after the role would take the tables, and another instance's data.
        const role = `ecb_probe_${Math.random().toString(36).slice(2, 10)}`
        const admin = yield* Effect.map(
          Layer.build(Database.serverLayer({
            url: Redacted.make(TestDatabase.serverUrl!),
            schema: Option.none(),
            poolSize: 1,
            connectTimeout: Duration.seconds(10),
            statementTimeout: Duration.seconds(10),
            preparedStatements: 0
          })),
          Context.get(SqlClient.SqlClient)
        )
        yield* admin.unsafe(`CREATE ROLE ${role} LOGIN`)
        yield* Effect.addFinalizer(() =>
          Effect.orDie(admin.unsafe(`DROP SCHEMA IF EXISTS ${role} CASCADE; DROP ROLE IF EXISTS ${role}`))
        )
        yield* admin.unsafe(`CREATE SCHEMA ${role} AUTHORIZATION ${role}`)
        const url = new URL(TestDatabase.serverUrl!)
        url.username = role
        url.password = ""
        const rows = yield* currentSchemaOf(Database.layer, { DATABASE_URL: url.toString(), DB_POOL_SIZE: 1 })
        expect(rows).toEqual([{ schema: "public" }])
      }),
    60_000
  )

  it.scopedLive(
    "an instance starting while another holds the migrations' lock past DB_STATEMENT_TIMEOUT waits for it",
    () =>
      Effect.gen(function*() {
        const schema = TestDatabase.freshSchema()
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: schema }))
        expect(yield* instance(schema)).toEqual([{ schema }])
        // Another instance migrating: it holds the migrations table's lock,
        // here for three times the starting one's statement timeout.
        const holder = new Pg.Client(TestDatabase.serverUrl)
        yield* Effect.acquireRelease(Effect.promise(() => holder.connect()), () => Effect.promise(() => holder.end()))
        yield* Effect.promise(async () => {
          await holder.query(`SET search_path = "${schema}"`)
          await holder.query("BEGIN")
          await holder.query("LOCK TABLE command_bus_migrations IN ACCESS EXCLUSIVE MODE")
        })
        const released = yield* Effect.promise(() => holder.query("COMMIT")).pipe(
          Effect.delay("3 seconds"),
          Effect.fork
        )
        const started = yield* Effect.exit(instance(schema, { DB_STATEMENT_TIMEOUT: "1 second" }))
        yield* Fiber.join(released)
        expect(Exit.isSuccess(started), Exit.isFailure(started) ? String(started.cause) : "").toBe(true)
      }),
    60_000
  )

  it.scoped("a schema named after an SQL keyword (order) is created and used", () =>
    Effect.gen(function*() {
      yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: "order" }))
      expect(yield* instance("order")).toEqual([{ schema: "order" }])
    }), 60_000)
})
