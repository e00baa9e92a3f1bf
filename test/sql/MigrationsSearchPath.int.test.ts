/**
 * SqlMigrations' requireSchema: a search_path whose first schema is
 * missing but a later one exists, "$user", and a schema-qualified table.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PgPool, SqlMigrations } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { randomBytes } from "node:crypto"
import * as TestDatabase from "../support/Database.js"

const url = process.env.DATABASE_URL

const fresh = (prefix: string) => `${prefix}_${randomBytes(6).toString("hex")}`

const freshSchema = () => TestDatabase.scopedSchema(fresh("search_path"))

const withOptions = (options: string) => {
  const parsed = new URL(url!)
  parsed.searchParams.set("options", options)
  return parsed.toString()
}

describe.skipIf(url === undefined)("SqlMigrations on a search_path or a qualified table", () => {
  it.scopedLive("first schema of the search_path missing, a later one exists: the tables go there", () =>
    Effect.gen(function*() {
      const existing = yield* freshSchema()
      const context = yield* Layer.build(
        PgPool.layer({ url: withOptions(`-c search_path=${fresh("missing")},${existing}`), poolSize: 1 })
      )
      yield* Effect.provide(SqlMigrations.run, context)
      const sql = Context.get(context, SqlClient.SqlClient)
      const tables = yield* sql<{ readonly table_name: string }>`
        SELECT table_name FROM information_schema.tables WHERE table_schema = ${existing}`
      expect(tables.map((row) => row.table_name)).toContain("outbox")
    }))

  it.scopedLive("\"$user\" with no schema of that name, and no other existing: a MigrationError", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        PgPool.layer({ url: withOptions(`-c search_path="$user",${fresh("missing")}`), poolSize: 1 })
      )
      const exit = yield* Effect.exit(Effect.provide(SqlMigrations.run, context))
      const printed = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "succeeded"
      expect(printed).toContain("MigrationError")
      expect(printed).toContain("$user")
    }))

  it.scopedLive("a schema-qualified table, on a search_path with no existing schema: a MigrationError naming it", () =>
    Effect.gen(function*() {
      const schema = fresh("missing")
      const table = `public.${fresh("app_migrations")}`
      yield* Effect.addFinalizer(() => TestDatabase.admin(`DROP TABLE IF EXISTS ${table}`))
      const exit = yield* Effect.exit(Effect.provide(
        SqlMigrations.runWith({ table, sources: { "1_t": ["CREATE TABLE t (id int)"] } }),
        PgPool.layer({ url: url!, schema, poolSize: 1 })
      ))
      const printed = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "succeeded"
      expect(printed).toContain("MigrationError")
      expect(printed).toContain(schema)
    }))

  it.scopedLive("a table qualified with a schema that does not exist: a MigrationError naming it", () =>
    Effect.gen(function*() {
      const missing = fresh("missing")
      const exit = yield* Effect.exit(Effect.provide(
        SqlMigrations.runWith({ table: `${missing}.app_migrations`, sources: { "1_t": ["SELECT 1"] } }),
        PgPool.layer({ url: url!, poolSize: 1 })
      ))
      const printed = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "succeeded"
      expect(printed).toContain("MigrationError")
      expect(printed).toContain(missing)
    }))
})
