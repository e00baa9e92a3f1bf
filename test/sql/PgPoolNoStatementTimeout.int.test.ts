/**
 * `statementTimeout: Duration.infinity` ("none, for migrations that
 * may run long", as the service runs its migrations) leaves whatever
 * statement_timeout the session would otherwise get: one in the URL's
 * `options`, or the database's or role's default (`ALTER ROLE/DATABASE ...
 * SET statement_timeout`, common on managed servers). A long migration is
 * then cut (57014) though the pool was asked for none: it sets 0, last.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PgPool } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { randomBytes } from "node:crypto"
import * as TestDatabase from "../support/Database.js"

const url = process.env.DATABASE_URL

const timeoutOf = (poolUrl: string) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(PgPool.layer({ url: poolUrl, poolSize: 1, statementTimeout: Duration.infinity }))
    const sql = Context.get(context, SqlClient.SqlClient)
    const [row] = yield* sql<{ readonly statement_timeout: string }>`SHOW statement_timeout`
    const slow = yield* Effect.exit(sql`SELECT pg_sleep(0.5)`)
    return { setting: row!.statement_timeout, slow: Exit.isSuccess(slow) ? "ran" : "cut" }
  })

describe.skipIf(url === undefined)("statementTimeout: Duration.infinity", () => {
  it.scopedLive("sets none, whatever the URL's options say", () =>
    Effect.gen(function*() {
      const withOptions = `${url}?options=${encodeURIComponent("-c statement_timeout=200")}`
      expect(yield* timeoutOf(withOptions)).toEqual({ setting: "0", slow: "ran" })
    }))

  // On a database of its own: a default set on the suite's database would
  // reach the connections other test files open meanwhile.
  it.scopedLive("sets none, whatever the database's default is", () =>
    Effect.gen(function*() {
      const database = `t_timeout_${randomBytes(4).toString("hex")}`
      yield* Effect.acquireRelease(
        TestDatabase.admin(`CREATE DATABASE ${database}`),
        () => TestDatabase.admin(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
      )
      yield* TestDatabase.admin(`ALTER DATABASE ${database} SET statement_timeout = '200ms'`)
      const scratch = new URL(url!)
      scratch.pathname = `/${database}`
      expect(yield* timeoutOf(scratch.toString())).toEqual({ setting: "0", slow: "ran" })
    }))
})
