/**
 * PgPreparedClient on a real server (only with `DATABASE_URL`): statements
 * with parameters become named prepared statements, one per text, within the
 * cap; a statement that went stale is prepared again.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import Pg from "pg"
import * as Database from "../../src/server/Database.js"
import { PgPreparedClient } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const url = TestDatabase.serverUrl
const schema = TestDatabase.freshSchema()

/** A one-connection pool of prepared clients in this file's schema. */
const openPool = (capacity?: number) =>
  new Pg.Pool({
    Client: PgPreparedClient.make(capacity === undefined ? {} : { capacity }),
    connectionString: url,
    max: 1,
    options: `-c search_path=${schema}`
  })

const preparedTexts = async (pool: Pg.Pool) =>
  (await pool.query<{ statement: string }>("SELECT statement FROM pg_prepared_statements ORDER BY statement"))
    .rows.map((row) => row.statement)

const sqlState = (error: unknown) => (error as { readonly code?: string }).code

describe.skipIf(url === undefined)("PgPreparedClient", () => {
  beforeAll(async () => {
    const admin = new Pg.Client({ connectionString: url })
    await admin.connect()
    await admin.query(`CREATE SCHEMA ${schema}`)
    await admin.end()
  })
  afterAll(async () => {
    const admin = new Pg.Client({ connectionString: url })
    await admin.connect()
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    await admin.end()
  })

  it("names a statement with parameters once per text, promise, callback and config alike", async () => {
    const pool = openPool()
    try {
      for (let x = 0; x < 3; x++) {
        expect((await pool.query("SELECT $1::int + 1 AS y", [x])).rows).toEqual([{ y: x + 1 }])
      }
      const viaCallback = await new Promise((resolve, reject) =>
        pool.query("SELECT $1::int + 1 AS y", [9], (error, result) => error ? reject(error) : resolve(result.rows))
      )
      expect(viaCallback).toEqual([{ y: 10 }])
      const arrays = await pool.query({ text: "SELECT $1::text AS s", values: ["a"], rowMode: "array" })
      expect(arrays.rows).toEqual([["a"]])
      // Without parameters: unnamed.
      expect((await pool.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
      expect(await preparedTexts(pool)).toEqual(["SELECT $1::int + 1 AS y", "SELECT $1::text AS s"])
    } finally {
      await pool.end()
    }
  })

  it("names at most `capacity` texts; the rest run unnamed", async () => {
    const pool = openPool(2)
    try {
      for (let round = 0; round < 2; round++) {
        for (const k of [1, 2, 3, 4]) {
          expect((await pool.query(`SELECT $1::int * ${k} AS y`, [round + 2])).rows).toEqual([{ y: (round + 2) * k }])
        }
      }
      expect(await preparedTexts(pool)).toEqual(["SELECT $1::int * 1 AS y", "SELECT $1::int * 2 AS y"])
    } finally {
      await pool.end()
    }
    const none = openPool(0)
    try {
      expect((await none.query("SELECT $1::int AS y", [5])).rows).toEqual([{ y: 5 }])
      expect(await preparedTexts(none)).toEqual([])
    } finally {
      await none.end()
    }
  })

  it("prepares again a statement dropped behind its back or outdated by a changed table", async () => {
    const pool = openPool()
    try {
      await pool.query("CREATE TABLE widened (a int)")
      await pool.query("INSERT INTO widened VALUES (1)")
      const select = async () => (await pool.query("SELECT * FROM widened WHERE a = $1", [1])).rows
      expect(await select()).toEqual([{ a: 1 }])

      // Outside a transaction the retry is silent.
      await pool.query("ALTER TABLE widened ADD COLUMN b int")
      expect(await select()).toEqual([{ a: 1, b: null }])
      await pool.query("DEALLOCATE ALL")
      expect(await select()).toEqual([{ a: 1, b: null }])

      // Inside one, the failure has aborted the transaction: it fails once.
      const client = await pool.connect()
      try {
        await client.query("DEALLOCATE ALL")
        await client.query("BEGIN")
        const failed = await client.query("SELECT * FROM widened WHERE a = $1", [1]).catch((error) => error)
        expect(sqlState(failed)).toBe("26000")
        await client.query("ROLLBACK")
        expect((await client.query("SELECT * FROM widened WHERE a = $1", [1])).rows).toEqual([{ a: 1, b: null }])
      } finally {
        client.release()
      }
      expect(await preparedTexts(pool)).toEqual(["SELECT * FROM widened WHERE a = $1"])
    } finally {
      await pool.end()
    }
  })

  it.effect("the service's server layer sends the statements of a transaction prepared", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const texts = yield* sql.withTransaction(Effect.gen(function*() {
        expect(yield* sql<{ y: number }>`SELECT ${1}::int + 41 AS y`).toEqual([{ y: 42 }])
        return yield* sql<{ statement: string }>`SELECT statement FROM pg_prepared_statements`
      }))
      expect(texts.map((row) => row.statement)).toContain("SELECT $1::int + 41 AS y")
    }).pipe(
      Effect.provide(Database.serverLayer({
        url: Redacted.make(url!),
        schema: Option.some(schema),
        poolSize: 1,
        connectTimeout: Duration.seconds(5),
        statementTimeout: Duration.seconds(30)
      }))
    ))
})
