/**
 * The migrations on a real database (PGlite, or the server in
 * `DATABASE_URL`): running them again is a no-op, and several instances
 * starting at once on a fresh database all come up.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Migrations from "../../src/orders/Migrations.js"
import * as Database from "../../src/server/Database.js"
import { SqlMigrations } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const schemaSnapshot = TestDatabase.schemaSnapshot()

const applied = (table: "command_bus_migrations" | "orders_migrations") =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql<{ readonly migration_id: number; readonly name: string }>`
        SELECT migration_id, name FROM ${sql(table)} ORDER BY migration_id`.withoutTransform
  )

/** A pool of its own on the server, in `schema`. */
const serverPool = (url: string, schema: string) =>
  Database.serverLayer({
    url: Redacted.make(url),
    schema: Option.some(schema),
    poolSize: 2,
    connectTimeout: Duration.seconds(5),
    statementTimeout: Duration.seconds(30)
  })

const Shared = TestDatabase.layer().pipe(Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error)))

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`migrations (${TestDatabase.kind})`, (it) => {
  it.effect("applies nothing and changes nothing when run again", () =>
    Effect.gen(function*() {
      const before = yield* schemaSnapshot
      expect([...new Set(before.columns.map((column) => column.table_name))]).toEqual([
        "command_bus_migrations",
        "event_snapshots",
        "event_streams",
        "idempotency_keys",
        "inventory",
        "orders",
        "orders_migrations",
        "outbox",
        "process_applied",
        "processes",
        "reaction_checkpoints",
        "reaction_dead_letters",
        "scheduled_commands"
      ])
      expect(before.triggers.map((trigger) => trigger.trigger_name)).toEqual(["outbox_notify"])

      expect(yield* SqlMigrations.run).toEqual([])
      expect(yield* Migrations.run).toEqual([])
      expect(yield* Migrations.run).toEqual([])

      expect(yield* schemaSnapshot).toEqual(before)
      expect((yield* applied("command_bus_migrations")).slice(0, 4)).toEqual([
        { migration_id: 1, name: "outbox" },
        { migration_id: 2, name: "idempotency_keys" },
        { migration_id: 3, name: "reaction_checkpoints" },
        { migration_id: 4, name: "reaction_dead_letters" }
      ])
      expect((yield* applied("command_bus_migrations")).map(({ migration_id, name }) => `${migration_id}_${name}`))
        .toEqual(Object.keys(SqlMigrations.sources))
      expect(yield* applied("orders_migrations")).toEqual([
        { migration_id: 1, name: "orders" },
        { migration_id: 2, name: "inventory" }
      ])
    }))

  // Bug (server only; an embedded database has one process): the migrator of
  // @effect/sql creates its table, when missing, before it takes its lock, so
  // instances starting together on a fresh database would race to create it;
  // `SqlMigrations.ensureTable` creates it first, under an advisory lock. (The embedded
  // database is one process's own.)
  it.effect("runs an application's migrations in a table of its own, once", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const sources = {
        "1_accounts": [
          `CREATE TABLE app_accounts (id text PRIMARY KEY)`,
          `CREATE INDEX app_accounts_id ON app_accounts (id)`
        ]
      }
      expect(yield* SqlMigrations.runWith({ table: "app_migrations", sources })).toEqual([[1, "accounts"]])
      expect(yield* SqlMigrations.runWith({ table: "app_migrations", sources })).toEqual([])
      const rows = yield* sql<{ readonly migration_id: number; readonly name: string }>`
        SELECT migration_id, name FROM app_migrations`.withoutTransform
      expect(rows).toEqual([{ migration_id: 1, name: "accounts" }])
      yield* sql`DROP TABLE app_accounts, app_migrations`
    }))

  // Each went wrong: a mixed-case table was created quoted and then looked up
  // folded (`'AppMigrations'::regclass`), so every run failed creating it again;
  // the library's table or a key without a number applied nothing, and said so nowhere.
  it.effect("refuses a table that needs quoting, the library's table, and a key that is not <number>_<name>", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = (name: string) =>
        Effect.map(
          sql<{ readonly found: string | null }>`SELECT to_regclass(${name})::text AS found`.withoutTransform,
          ([row]) => row!.found
        )
      const accounts = { "1_accounts": [`CREATE TABLE refused_accounts (id text PRIMARY KEY)`] }
      for (
        const [options, message] of [
          [{ table: "AppMigrations", sources: accounts }, "the table must be a name without quotes"],
          [{ table: "app migrations", sources: accounts }, "the table must be a name without quotes"],
          [{ table: "command_bus_migrations", sources: accounts }, "is the library's migrations table"],
          [{ table: "app_migrations", sources: { accounts: accounts["1_accounts"] } }, "got \"accounts\""]
        ] as const
      ) {
        const exit = yield* Effect.either(SqlMigrations.runWith(options))
        expect(exit._tag).toBe("Left")
        expect(exit._tag === "Left" && exit.left.message).toContain(message)
      }
      expect(yield* table("refused_accounts")).toBeNull()
      expect(yield* table("app_migrations")).toBeNull()
      // A schema's table, as written: run once.
      const sources = { "1_accounts": [`CREATE TABLE qualified_accounts (id text PRIMARY KEY)`] }
      const qualified = "public.qualified_migrations"
      if (TestDatabase.serverUrl === undefined) {
        expect(yield* SqlMigrations.runWith({ table: qualified, sources })).toEqual([[1, "accounts"]])
        expect(yield* SqlMigrations.runWith({ table: qualified, sources })).toEqual([])
        yield* sql`DROP TABLE qualified_accounts, public.qualified_migrations`
      }
    }))

  // The migrations table keeps the number in an integer: the migrator took
  // the failed insert of a timestamp's for another instance's run, applied
  // nothing and answered [], at every start.
  it.effect("refuses a migration numbered past the integer column (a timestamp), and runs nothing", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const sources = { "20261128113900_accounts": [`CREATE TABLE stamped_accounts (id text PRIMARY KEY)`] }
      const refused = yield* Effect.flip(SqlMigrations.runWith({ table: "stamped_migrations", sources }))
      expect(refused.message).toContain(`a migration's number is at most 2147483647`)
      expect(refused.message).toContain(`"20261128113900_accounts"`)
      const [found] = yield* sql<{ readonly accounts: string | null; readonly migrations: string | null }>`
        SELECT to_regclass('stamped_accounts')::text AS accounts,
          to_regclass('stamped_migrations')::text AS migrations`.withoutTransform
      expect(found).toEqual({ accounts: null, migrations: null })
      // The largest number the column holds is applied.
      const largest = { "2147483647_accounts": sources["20261128113900_accounts"] }
      expect(yield* SqlMigrations.runWith({ table: "stamped_migrations", sources: largest }))
        .toEqual([[2147483647, "accounts"]])
      yield* sql`DROP TABLE stamped_accounts, stamped_migrations`
    }))

  // The migrator applies only those above the latest applied: one merged in
  // below it was skipped for good, and the run succeeded.
  it.effect("refuses a migration numbered below the latest applied that was never applied, and runs nothing", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const one = [`CREATE TABLE gap_one (id int)`]
      const two = [`CREATE TABLE gap_two (id int)`]
      const three = [`CREATE TABLE gap_three (id int)`]
      const four = [`CREATE TABLE gap_four (id int)`]
      expect(yield* SqlMigrations.runWith({ table: "gap_migrations", sources: { "1_one": one, "3_three": three } }))
        .toEqual([[1, "one"], [3, "three"]])
      const merged = { "1_one": one, "2_two": two, "3_three": three, "4_four": four }
      const refused = yield* Effect.flip(SqlMigrations.runWith({ table: "gap_migrations", sources: merged }))
      expect(refused.message).toContain(
        `"2_two" in gap_migrations numbered at or below the latest migration applied (3)`
      )
      const [found] = yield* sql<{ readonly two: string | null; readonly four: string | null }>`
        SELECT to_regclass('gap_two')::text AS two, to_regclass('gap_four')::text AS four`.withoutTransform
      expect(found).toEqual({ two: null, four: null })
      // Renumbered above the latest: applied.
      const renumbered = { "1_one": one, "3_three": three, "4_four": four, "5_two": two }
      expect(yield* SqlMigrations.runWith({ table: "gap_migrations", sources: renumbered }))
        .toEqual([[4, "four"], [5, "two"]])
      yield* sql`DROP TABLE gap_one, gap_two, gap_three, gap_four, gap_migrations`
    }))

  const onServer = TestDatabase.serverUrl === undefined ? it.scoped.skip : it.scoped
  onServer(
    "brings up three instances migrating a fresh schema at once",
    () =>
      Effect.gen(function*() {
        const url = TestDatabase.serverUrl!
        const sql = yield* SqlClient.SqlClient
        // three rounds, so a lucky interleaving does not hide the race
        for (let round = 0; round < 3; round++) {
          const schema = TestDatabase.freshSchema()
          yield* Effect.acquireRelease(
            sql.unsafe(`CREATE SCHEMA ${schema}`),
            () => Effect.ignore(sql.unsafe(`DROP SCHEMA ${schema} CASCADE`))
          )
          // connected before they start, as instances are
          const instances = yield* Effect.forEach([1, 2, 3], () => Layer.build(serverPool(url, schema)))
          yield* Effect.forEach(instances, (instance) =>
            Effect.provide(Effect.flatMap(SqlClient.SqlClient, (client) => client`SELECT 1`), instance))
          const outcomes = yield* Effect.all(
            instances.map((instance) =>
              Effect.either(Effect.provide(Migrations.run, instance))
            ),
            { concurrency: "unbounded" }
          )
          expect(outcomes.map((outcome) => outcome._tag)).toEqual(["Right", "Right", "Right"])
          expect(yield* Effect.provide(applied("command_bus_migrations"), instances[0]!)).toHaveLength(
            Object.keys(SqlMigrations.migrations).length
          )
          expect(yield* Effect.provide(applied("orders_migrations"), instances[0]!)).toHaveLength(2)
        }
      })
  )
})
