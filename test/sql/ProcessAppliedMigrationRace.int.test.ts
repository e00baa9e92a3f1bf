/**
 * Migration 17 during a rolling deploy: an instance of the release before
 * it (migrations 1 to 16) applies an event to a process, its transaction
 * committing while the migration runs. The event's id must be in
 * `process_applied` afterwards, or its redelivery is applied a second time.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as PgMigrator from "@effect/sql-pg/PgMigrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { randomUUID } from "node:crypto"
import Pg from "pg"
import * as Database from "../../src/server/Database.js"
import { SqlMigrations, SqlProcesses } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const through = (last: number) =>
  Object.fromEntries(Object.entries(SqlMigrations.sources).filter(([id]) => Number(id.split("_")[0]) <= last))

const schema = TestDatabase.freshSchema()

const inSchema = (inSchema: Option.Option<string>) =>
  Database.serverLayer({
    url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused"),
    schema: inSchema,
    poolSize: 2,
    connectTimeout: Duration.seconds(5),
    statementTimeout: Duration.seconds(30)
  })

const migrated = Layer.unwrapScoped(Effect.gen(function*() {
  const admin = (statement: string) =>
    Effect.provide(Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement)), inSchema(Option.none()))
  yield* Effect.acquireRelease(
    admin(`CREATE SCHEMA "${schema}"`),
    () => Effect.ignore(admin(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`))
  )
  return inSchema(Option.some(schema))
}))

it.scopedLive.skipIf(TestDatabase.serverUrl === undefined)(
  "an event applied by the previous release while migration 17 runs stays applied",
  () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* PgMigrator.run({
        loader: PgMigrator.fromRecord(SqlMigrations.fromSources(through(16))),
        table: "command_bus_migrations"
      }).pipe(Effect.provide(NodeContext.layer))
      const [first, second] = [randomUUID(), randomUUID()]
      yield* sql`
        INSERT INTO processes (manager, key, state, version, done, applied, deadlines, updated_at)
        VALUES ('checkout', 'o-1', '{}'::json, 1, false, ${JSON.stringify([first])}::jsonb, '[]'::jsonb, now())`
      // The old instance: its save of the second event, in its dispatch's transaction, not committed yet.
      const old = new Pg.Client({ connectionString: TestDatabase.serverUrl, options: `-c search_path="${schema}"` })
      yield* Effect.promise(() => old.connect())
      yield* Effect.addFinalizer(() => Effect.promise(() => old.end()))
      yield* Effect.promise(() => old.query("BEGIN"))
      yield* Effect.promise(() =>
        old.query(
          `UPDATE processes SET version = 2, applied = $1::jsonb, updated_at = now()
           WHERE manager = 'checkout' AND key = 'o-1' AND version = 1`,
          [JSON.stringify([first, second])]
        )
      )
      // The new instance starts and migrates.
      const migrating = yield* Effect.fork(SqlMigrations.run)
      // Bounded: until the migration waits for a lock the old transaction holds.
      const waiting = () =>
        Effect.map(
          sql<{ readonly n: number }>`
            SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE wait_event_type = 'Lock' AND datname = current_database()`.withoutTransform,
          (rows) => rows[0]!.n
        )
      let n = yield* waiting()
      for (let i = 0; i < 200 && n === 0; i++) {
        yield* Effect.sleep("25 millis")
        n = yield* waiting()
      }
      expect(n).toBeGreaterThan(0)
      yield* Effect.promise(() => old.query("COMMIT"))
      yield* Fiber.join(migrating)
      const processes = yield* SqlProcesses.make
      const applied = (eventId: string) =>
        Effect.map(processes.load("checkout", "o-1", eventId), (loaded) => Option.getOrThrow(loaded).applied)
      expect({ version: Option.getOrThrow(yield* processes.load("checkout", "o-1")).version }).toEqual({ version: 2 })
      // A redelivery of the second event is skipped.
      expect(yield* Effect.forEach([first, second], applied)).toEqual([true, true])
    }).pipe(Effect.provide(migrated)),
  { timeout: 20_000 }
)
