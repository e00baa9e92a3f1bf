/**
 * `PgPool.layer({ schema })` on a schema that does not exist (it "must
 * exist": `SqlMigrations` creates tables, not schemas): the migrations'
 * first statement failed with "SqlError: Failed to execute statement", whose
 * printed cause hides PostgreSQL's "no schema has been selected to create
 * in", and nothing named the schema. Refused instead, naming it.
 */
import { describe, expect, it } from "@effect/vitest"
import { PgPool, SqlMigrations } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { randomBytes } from "node:crypto"

const url = process.env.DATABASE_URL

describe.skipIf(url === undefined)("SqlMigrations on a search_path with no schema", () => {
  it.live("run fails with a MigrationError naming the schema, which it does not create", () =>
    Effect.gen(function*() {
      const schema = `missing_${randomBytes(6).toString("hex")}`
      const exit = yield* Effect.exit(
        Effect.provide(SqlMigrations.run, PgPool.layer({ url: url!, schema, poolSize: 1 }))
      )
      expect(Exit.isFailure(exit)).toBe(true)
      const printed = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""
      expect(printed).toContain("MigrationError")
      expect(printed).toContain(schema)
    }))

  it.live("runWith too, for an unqualified table", () =>
    Effect.gen(function*() {
      const schema = `missing_${randomBytes(6).toString("hex")}`
      const exit = yield* Effect.exit(Effect.provide(
        SqlMigrations.runWith({ table: "app_migrations", sources: { "1_t": ["CREATE TABLE t (id int)"] } }),
        PgPool.layer({ url: url!, schema, poolSize: 1 })
      ))
      const printed = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "succeeded"
      expect(printed).toContain("MigrationError")
      expect(printed).toContain(schema)
    }))
})
