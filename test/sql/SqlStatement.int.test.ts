/**
 * Statements sent on the dispatch's transaction connection (PGlite, or the
 * server in `DATABASE_URL`): the same rows, the same transaction, the same
 * span as `@effect/sql` gives them.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Statement from "@effect/sql/Statement"
import { assert, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { SqlStatement } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { parentId, recordingTracer } from "../support/Tracing.js"

const setUp = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.zipRight(
    sql`CREATE TABLE IF NOT EXISTS sql_statement_test (id integer PRIMARY KEY, label text NOT NULL)`,
    sql`TRUNCATE sql_statement_test`
  ))

const labels = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(
    sql<{ readonly label: string }>`SELECT label FROM sql_statement_test ORDER BY id`,
    (rows) => rows.map((row) => row.label)
  ))

layer(TestDatabase.layer(), { timeout: 60_000 })(`SqlStatement (${TestDatabase.kind})`, (it) => {
  it.effect("inside a transaction: the rows, on the transaction's connection, rolled back with it", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      const insert = (id: number, label: string) =>
        SqlStatement.rows(sql<{ readonly id: number }>`INSERT INTO sql_statement_test (id, label)
          VALUES (${id}, ${label}) RETURNING id`)
      const committed = yield* sql.withTransaction(Effect.zip(
        insert(1, "one"),
        SqlStatement.run(sql`UPDATE sql_statement_test SET label = 'uno' WHERE id = 1`)
      ))
      assert.deepStrictEqual(committed[0], [{ id: 1 }])
      const rolledBack = yield* Effect.exit(sql.withTransaction(Effect.gen(function*() {
        yield* insert(2, "two")
        // Seen inside the transaction, on the same connection.
        const seen = yield* SqlStatement.rows(sql<{ readonly n: number }>`SELECT count(*)::int AS n
          FROM sql_statement_test`)
        assert.deepStrictEqual(seen, [{ n: 2 }])
        return yield* Effect.fail("roll back")
      })))
      assert.deepStrictEqual(rolledBack, Exit.fail("roll back"))
      assert.deepStrictEqual(yield* labels, ["uno"])
    }))

  it.effect("outside a transaction: the rows, committed at once, on the client's connection", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      // Side by side, as concurrent dispatches claim their keys.
      const inserted = yield* Effect.forEach(
        [1, 2, 3, 4],
        (id) =>
          SqlStatement.rows(sql<{ readonly id: number }>`INSERT INTO sql_statement_test (id, label)
            VALUES (${id}, ${`n${id}`}) RETURNING id`),
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(inserted, [[{ id: 1 }], [{ id: 2 }], [{ id: 3 }], [{ id: 4 }]])
      yield* SqlStatement.run(sql`UPDATE sql_statement_test SET label = 'one' WHERE id = 1`)
      // Committed: a transaction that fails afterwards takes none of it back.
      yield* Effect.exit(sql.withTransaction(Effect.fail("roll back")))
      assert.deepStrictEqual(yield* labels, ["one", "n2", "n3", "n4"])
      const failed = yield* Effect.exit(SqlStatement.run(sql`INSERT INTO sql_statement_test (id, label)
        VALUES (1, 'again')`))
      const error = Exit.isFailure(failed) ? Option.getOrUndefined(Cause.failureOption(failed.cause)) : undefined
      assert.strictEqual(error?._tag, "SqlError")
    }))

  it.effect("outside a transaction too: the sql.execute span @effect/sql makes, ended", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      const { spans, tracer } = yield* recordingTracer
      yield* SqlStatement.rows(sql`SELECT label FROM sql_statement_test WHERE id = ${2}`).pipe(
        Effect.withSpan("caller"),
        Effect.withTracer(tracer)
      )
      yield* sql`SELECT label FROM sql_statement_test WHERE id = ${2}`.withoutTransform.pipe(Effect.withTracer(tracer))
      const caller = spans.find((span) => span.name === "caller")!
      const [lean, reference] = spans.filter((span) => span.name === "sql.execute")
      assert.strictEqual(parentId(lean!), caller.spanId)
      assert.strictEqual(lean!.kind, "client")
      assert.deepStrictEqual(Object.fromEntries(lean!.attributes), Object.fromEntries(reference!.attributes))
      assert.strictEqual(lean!.status._tag, "Ended")
    }))

  it.effect("a failed statement fails the transaction with the SqlError", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      const exit = yield* Effect.exit(sql.withTransaction(
        SqlStatement.run(sql`INSERT INTO sql_statement_test (id, label) VALUES (1, NULL)`)
      ))
      const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined
      assert.strictEqual(error?._tag, "SqlError")
      assert.deepStrictEqual(yield* labels, [])
    }))

  it.effect("makes the sql.execute span @effect/sql makes, under the caller's span", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      const { spans, tracer } = yield* recordingTracer
      yield* sql.withTransaction(
        SqlStatement.rows(sql`SELECT label FROM sql_statement_test WHERE id = ${1}`).pipe(Effect.withSpan("caller"))
      ).pipe(Effect.withTracer(tracer))
      // The same statement through @effect/sql, for the attributes to compare.
      yield* sql`SELECT label FROM sql_statement_test WHERE id = ${1}`.withoutTransform.pipe(Effect.withTracer(tracer))
      const caller = spans.find((span) => span.name === "caller")!
      const [lean, reference] = spans.filter((span) => span.name === "sql.execute")
      assert.isDefined(lean)
      assert.isDefined(reference)
      assert.strictEqual(parentId(lean!), caller.spanId)
      assert.strictEqual(lean!.kind, "client")
      assert.deepStrictEqual(Object.fromEntries(lean!.attributes), Object.fromEntries(reference!.attributes))
      assert.strictEqual(lean!.attributes.get("db.query.text"), "SELECT label FROM sql_statement_test WHERE id = $1")
      assert.strictEqual(lean!.status._tag, "Ended")
    }))

  it.effect("with a statement transformer installed, the statement goes through it", () =>
    Effect.gen(function*() {
      yield* setUp
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO sql_statement_test (id, label) VALUES (1, 'one'), (2, 'two')`
      const transformed = yield* sql.withTransaction(
        SqlStatement.rows(sql<{ readonly label: string }>`SELECT label FROM sql_statement_test WHERE id = 1`)
      ).pipe(
        Statement.withTransformer((_, sql) =>
          Effect.succeed(sql<{ readonly label: string }>`SELECT label FROM sql_statement_test WHERE id = 2`)
        )
      )
      assert.deepStrictEqual(transformed, [{ label: "two" }])
    }))
})
