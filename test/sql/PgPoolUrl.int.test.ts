/**
 * `PgPool.layer` with a URL that carries settings of its own, which `pg`
 * takes over the pool's: its `options` (another `-c` setting, a cloud
 * provider's `endpoint=`) dropped the `search_path` of `schema`, and the
 * tables went to public; its `statement_timeout` replaced `statementTimeout`
 * while the answer timeout was counted from the option; its
 * `application_name` replaced `applicationName`.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PgPool, SqlMigrations } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as TestDatabase from "../support/Database.js"

const url = process.env.DATABASE_URL

const withParam = (name: string, value: string) => {
  const parsed = new URL(url!)
  parsed.searchParams.set(name, value)
  return parsed.toString()
}

describe.skipIf(url === undefined)("PgPool: a URL with options of its own", () => {
  it.scopedLive("keeps the URL's options and still sets search_path to the schema", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema()
      const context = yield* Layer.build(
        PgPool.layer({ url: withParam("options", "-c lock_timeout=4321"), schema, poolSize: 1 })
      )
      const sql = Context.get(context, SqlClient.SqlClient)
      expect(yield* sql`SELECT current_schema() AS schema, current_setting('lock_timeout') AS lock_timeout`).toEqual([
        { schema, lock_timeout: "4321ms" }
      ])
      yield* Effect.provide(SqlMigrations.run, context)
      const tables = yield* sql<{ readonly table_name: string }>`
        SELECT table_name FROM information_schema.tables WHERE table_schema = ${schema}`
      expect(tables.map((row) => row.table_name)).toContain("outbox")
    }))

  it.scopedLive("without a schema, a search_path the URL's options set is kept", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema()
      const context = yield* Layer.build(
        PgPool.layer({ url: withParam("options", `-c search_path=${schema}`), poolSize: 1 })
      )
      const sql = Context.get(context, SqlClient.SqlClient)
      expect(yield* sql`SELECT current_schema() AS schema`).toEqual([{ schema }])
    }))

  it.effect("a statement_timeout in the URL is refused: statementTimeout sets it, and the answer timeout after it", () =>
    Effect.gen(function*() {
      // pg took the URL's statement_timeout (1 min) over the pool's, while the
      // answer timeout was still counted from statementTimeout: a statement
      // the server allowed lost its connection ("Connection error") at 0.6 s.
      const refused = yield* Effect.flip(Effect.scoped(Layer.build(
        PgPool.layer({ url: withParam("statement_timeout", "60000"), statementTimeout: "300 millis", poolSize: 1 })
      )))
      expect(refused.message).toContain("url must not set statement_timeout")
      expect(refused.message).not.toContain("postgres://")
    }))

  it.scopedLive("applicationName, when given, wins over the URL's application_name; else the URL's is kept", () =>
    Effect.gen(function*() {
      const nameOf = (options: PgPool.Options) =>
        Effect.flatMap(Layer.build(PgPool.layer(options)), (context) =>
          Effect.map(
            Context.get(context, SqlClient.SqlClient)<
              { readonly name: string }
            >`SELECT current_setting('application_name') AS name`,
            (rows) => rows[0]!.name
          ))
      const inUrl = withParam("application_name", "from-url")
      expect(yield* nameOf({ url: inUrl, applicationName: "from-option", poolSize: 1 })).toBe("from-option")
      expect(yield* nameOf({ url: inUrl, poolSize: 1 })).toBe("from-url")
    }))
})
