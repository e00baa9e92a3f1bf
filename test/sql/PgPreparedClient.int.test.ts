/**
 * PgPreparedClient on a real server (only with `DATABASE_URL`): statements
 * with parameters become named prepared statements, one per text, within the
 * cap; a statement that went stale is prepared again.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, assert, beforeAll, describe, expect, it } from "@effect/vitest"
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

/** Runs `f` with a fresh `openPool(capacity)`, ended after. */
const withPool = async <A>(f: (pool: Pg.Pool) => Promise<A>, capacity?: number): Promise<A> => {
  const pool = openPool(capacity)
  try {
    return await f(pool)
  } finally {
    await pool.end()
  }
}

/** Runs `f` with the one connection of a fresh pool, checked out. */
const withPooledClient = <A>(f: (client: Pg.PoolClient) => Promise<A>): Promise<A> =>
  withPool(async (pool) => {
    const client = await pool.connect()
    try {
      return await f(client)
    } finally {
      client.release()
    }
  })

/** Runs `f` with a prepared client of its own (no pool), ended after. */
const withClient = async <A>(config: Pg.ClientConfig, f: (client: Pg.Client) => Promise<A>): Promise<A> => {
  const Client = PgPreparedClient.make()
  const client = new Client({ connectionString: url, ...config })
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end()
  }
}

/** One statement as a plain `pg` client, for the schema's creation and removal. */
const asAdmin = async (statement: string) => {
  const admin = new Pg.Client({ connectionString: url })
  await admin.connect()
  try {
    await admin.query(statement)
  } finally {
    await admin.end()
  }
}

const preparedTexts = async (pool: Pg.Pool) =>
  (await pool.query<{ statement: string }>("SELECT statement FROM pg_prepared_statements ORDER BY statement"))
    .rows.map((row) => row.statement)

const sqlState = (error: unknown) => (error as { readonly code?: string }).code

describe.skipIf(url === undefined)("PgPreparedClient", () => {
  beforeAll(() => asAdmin(`CREATE SCHEMA ${schema}`))
  afterAll(() => asAdmin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))

  it("names a statement with parameters once per text, promise, callback and config alike", () =>
    withPool(async (pool) => {
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
    }))

  it("names at most `capacity` texts; the rest run unnamed", async () => {
    await withPool(async (pool) => {
      for (let round = 0; round < 2; round++) {
        for (const k of [1, 2, 3, 4]) {
          expect((await pool.query(`SELECT $1::int * ${k} AS y`, [round + 2])).rows).toEqual([{ y: (round + 2) * k }])
        }
      }
      expect(await preparedTexts(pool)).toEqual(["SELECT $1::int * 1 AS y", "SELECT $1::int * 2 AS y"])
    }, 2)
    await withPool(async (none) => {
      expect((await none.query("SELECT $1::int AS y", [5])).rows).toEqual([{ y: 5 }])
      expect(await preparedTexts(none)).toEqual([])
    }, 0)
  })

  it("prepares again a statement dropped behind its back or outdated by a changed table", () =>
    withPool(async (pool) => {
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
    }))

  it("a stale statement with others queued behind it fails rather than run after them", () =>
    withPooledClient(async (client) => {
      await client.query("CREATE TABLE queued (n int)")
      await client.query("INSERT INTO queued VALUES ($1)", [1])
      await client.query("DEALLOCATE ALL")
      const [insert, count] = await Promise.allSettled([
        client.query("INSERT INTO queued VALUES ($1)", [2]),
        client.query("SELECT count(*)::int AS n FROM queued")
      ])
      expect(insert.status === "rejected" && sqlState(insert.reason)).toBe("26000")
      expect(count.status === "fulfilled" && count.value.rows).toEqual([{ n: 1 }])
      await client.query("INSERT INTO queued VALUES ($1)", [2])
      expect((await client.query("SELECT n FROM queued ORDER BY n")).rows).toEqual([{ n: 1 }, { n: 2 }])
    }))

  it("a value pg cannot serialize leaves the statement usable in the same transaction", () =>
    withPooledClient(async (client) => {
      await client.query("CREATE TABLE documents (body jsonb)")
      const insert = (body: unknown) => client.query("INSERT INTO documents VALUES ($1)", [body])
      await insert({ a: 0 })
      await client.query("BEGIN")
      await expect(insert({ a: 1n })).rejects.toThrow(/BigInt/)
      await insert({ a: 2 })
      await client.query("COMMIT")
      expect((await client.query("SELECT body FROM documents ORDER BY body->>'a'")).rows).toEqual([
        { body: { a: 0 } },
        { body: { a: 2 } }
      ])
    }))

  it("reads a config as pg does: getters kept, values beside it win, its own callback called", () =>
    withPooledClient(async (client) => {
      class Statement {
        get text() {
          return "SELECT $1::int AS v"
        }
        readonly values = [5]
      }
      expect((await client.query(new Statement() as unknown as Pg.QueryConfig)).rows).toEqual([{ v: 5 }])
      expect((await client.query({ text: "SELECT $1::int AS v", values: [1] }, [2])).rows).toEqual([{ v: 2 }])
      const viaOwnCallback = await new Promise((resolve, reject) => {
        client.query({
          text: "SELECT $1::int AS v",
          values: [3],
          callback: (error: Error | null, result: Pg.QueryResult) => error ? reject(error) : resolve(result.rows)
        } as Pg.QueryConfig)
      })
      expect(viaOwnCallback).toEqual([{ v: 3 }])
      expect((await client.query("SELECT $1::int AS v", [4])).rows).toEqual([{ v: 4 }])
    }))

  it("a column that changes type: one failure, then the statement is parsed again; nothing left behind", () =>
    withPool(async (pool) => {
      await pool.query("CREATE TABLE widening (id int)")
      const insert = (id: string) => pool.query("INSERT INTO widening VALUES ($1)", [id])
      await insert("1")
      await pool.query("ALTER TABLE widening ALTER id TYPE bigint")
      expect(sqlState(await insert("3000000000").catch((error) => error))).toBe("22003")
      await insert("3000000000")
      const select = async () => (await pool.query("SELECT * FROM widening WHERE id = $1", [1])).rows
      expect(await select()).toEqual([{ id: "1" }])
      for (const column of ["a", "b", "c"]) {
        await pool.query(`ALTER TABLE widening ADD COLUMN ${column} int`)
        expect(Object.keys((await select())[0]!)).toContain(column)
      }
      // One statement per text on the server, whatever was renamed.
      expect((await preparedTexts(pool)).filter((text) => text.includes("widening")).sort()).toEqual([
        "INSERT INTO widening VALUES ($1)",
        "SELECT * FROM widening WHERE id = $1"
      ])
    }))

  it("a statement left behind is deallocated only when the connection is idle, never in a transaction", () =>
    withPooledClient(async (client) => {
      await client.query("CREATE TABLE narrowing (id int)")
      const insert = (id: string) => client.query("INSERT INTO narrowing VALUES ($1)", [id])
      await insert("1")
      // A data exception leaves the statement to be parsed again, the old one left behind.
      expect(sqlState(await insert("3000000000").catch((error) => error))).toBe("22003")
      // Gone already, so deallocating it would be an error, in a transaction an aborting one.
      await client.query("DEALLOCATE ALL")
      const begin = client.query("BEGIN")
      await insert("2")
      await begin
      await client.query("COMMIT")
      expect((await client.query("SELECT id FROM narrowing ORDER BY id")).rows).toEqual([{ id: 1 }, { id: 2 }])
    }))

  it("bad input over and over: one statement on the server, pg's own list bounded, nothing in a transaction", () =>
    withClient({ options: `-c search_path=${schema}` }, async (client) => {
      const lookup = (id: string) => client.query("SELECT $1::uuid AS id", [id])
      for (let i = 0; i < 50; i++) {
        expect(sqlState(await lookup("not-a-uuid").catch((error) => error))).toBe("22P02")
        expect((await lookup("00000000-0000-0000-0000-000000000000")).rows).toHaveLength(1)
      }
      // A data exception raised at Parse: that statement never existed, and
      // nothing may try to deallocate it inside the transaction begun next.
      expect(sqlState(await client.query("SELECT $1::int + 'x'", [1]).catch((error) => error))).toBe("22P02")
      await client.query("SELECT 1")
      const begin = client.query("BEGIN")
      const inside = client.query("SELECT $1::int AS v", [1])
      await begin
      expect((await inside).rows).toEqual([{ v: 1 }])
      expect((await client.query("COMMIT")).command).toBe("COMMIT")
      const onServer = await client.query<{ statement: string }>("SELECT statement FROM pg_prepared_statements")
      expect(onServer.rows.filter((row) => row.statement.includes("uuid"))).toHaveLength(1)
      const parsed = (client as unknown as { readonly connection: { readonly parsedStatements: object } }).connection
        .parsedStatements
      expect(Object.keys(parsed).length).toBeLessThanOrEqual(4)
    }))

  it("bad input in transaction after transaction: statements left behind are deallocated, one per BEGIN", () =>
    withClient({ options: `-c search_path=${schema}` }, async (client) => {
      await client.query("CREATE TABLE counted (n int)")
      for (let i = 0; i < 50; i++) {
        await client.query("BEGIN")
        await client.query("INSERT INTO counted VALUES ($1)", [String(i)])
        expect(sqlState(await client.query("INSERT INTO counted VALUES ($1)", ["not-a-number"]).catch((e) => e)))
          .toBe("22P02")
        await client.query("ROLLBACK")
      }
      const onServer = await client.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_prepared_statements")
      expect(onServer.rows[0]!.n).toBeLessThanOrEqual(2)
    }))

  it("a read timeout leaves no statement behind; pipeline mode sends statements unnamed", async () => {
    await withClient({ query_timeout: 100 }, async (timed) => {
      for (let i = 0; i < 3; i++) {
        await expect(timed.query("SELECT pg_sleep($1::float8)", [0.3])).rejects.toThrow(/timeout/)
      }
      // Behind the three sleeps the server still runs: a timeout of its own.
      const onServer = await timed.query<{ n: number }>({
        text: "SELECT count(*)::int AS n FROM pg_prepared_statements",
        query_timeout: 10_000
      } as Pg.QueryConfig)
      expect(onServer.rows).toEqual([{ n: 1 }])
    })
    await withClient({ pipeline: true } as Pg.ClientConfig, async (pipelined) => {
      expect((await pipelined.query("SELECT $1::int AS v", [7])).rows).toEqual([{ v: 7 }])
      const onServer = await pipelined.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_prepared_statements")
      expect(onServer.rows).toEqual([{ n: 0 }])
    })
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

  // A pool's clients are typed `PoolClient`; these are the pool's `Client` class's.
  const deferring = (client: Pg.PoolClient) => client as Pg.PoolClient & PgPreparedClient.PreparedClient
  /** Counts the exchanges the server ends (one ReadyForQuery each) from now on. */
  const exchanges = (client: Pg.PoolClient) => {
    let count = 0
    ;(client as unknown as { readonly connection: Pg.Connection }).connection.on("readyForQuery", () => count++)
    return () => count
  }
  const status = (client: Pg.PoolClient) =>
    (client as unknown as { getTransactionStatus(): string }).getTransactionStatus()
  const notes = async (client: Pg.PoolClient) =>
    (await client.query<{ note: string }>("SELECT note FROM deferred ORDER BY note")).rows.map((row) => row.note)
  const withTable = (f: (client: Pg.PoolClient & PgPreparedClient.PreparedClient) => Promise<void>) =>
    withPooledClient(async (client) => {
      await client.query("CREATE TABLE IF NOT EXISTS deferred (note text PRIMARY KEY)")
      await client.query("TRUNCATE deferred")
      await f(deferring(client))
    })
  const insert = (client: Pg.PoolClient, note: string) => client.query("INSERT INTO deferred VALUES ($1)", [note])

  describe("deferBegin", () => {
    it("sends BEGIN with a statement the connection has parsed: one exchange, in the transaction", () =>
      withTable(async (client) => {
        await insert(client, "warm")
        const counted = exchanges(client)
        expect(client.deferBegin()).toBe(true)
        await insert(client, "rolled back")
        expect(counted()).toBe(1)
        expect(status(client)).toBe("T")
        await client.query("ROLLBACK")
        expect(await notes(client)).toEqual(["warm"])
      }))

    it("sends BEGIN on its own before a statement not parsed yet, or one without parameters", () =>
      withTable(async (client) => {
        for (
          const first of [() => insert(client, "cold"), () => client.query("INSERT INTO deferred VALUES ('plain')")]
        ) {
          const counted = exchanges(client)
          expect(client.deferBegin()).toBe(true)
          await first()
          expect(counted()).toBe(2)
          expect(status(client)).toBe("T")
          await client.query("ROLLBACK")
        }
        expect(await notes(client)).toEqual([])
      }))

    it("a first statement that fails leaves the transaction aborted, as after a BEGIN of its own", () =>
      withTable(async (client) => {
        await insert(client, "taken")
        expect(client.deferBegin()).toBe(true)
        expect(sqlState(await insert(client, "taken").catch((error) => error))).toBe("23505")
        // (The status is read from the answer after the error: the next statement tells.)
        expect(sqlState(await insert(client, "after").catch((error) => error))).toBe("25P02")
        await client.query("ROLLBACK")
        await insert(client, "after")
        expect(await notes(client)).toEqual(["after", "taken"])
      }))

    // The statement is retried on an idle connection; after BEGIN it ran in
    // the transaction, and a retry would run it again outside it, committed.
    it("a stale first statement fails once and is not run again outside the transaction", () =>
      withTable(async (client) => {
        await insert(client, "warm")
        await client.query("DEALLOCATE ALL")
        expect(client.deferBegin()).toBe(true)
        expect(sqlState(await insert(client, "lost").catch((error) => error))).toBe("26000")
        expect(sqlState(await client.query("SELECT 1").catch((error) => error))).toBe("25P02")
        await client.query("ROLLBACK")
        expect(await notes(client)).toEqual(["warm"])
        await insert(client, "prepared again")
        expect(await notes(client)).toEqual(["prepared again", "warm"])
      }))

    it("a transaction that sent nothing is called off: nothing sent, the next statement outside any", () =>
      withTable(async (client) => {
        await insert(client, "warm")
        const counted = exchanges(client)
        expect(client.deferBegin()).toBe(true)
        expect(client.cancelDeferredBegin()).toBe(true)
        expect(client.cancelDeferredBegin()).toBe(false)
        expect(counted()).toBe(0)
        await insert(client, "committed")
        expect(status(client)).toBe("I")
        expect(await notes(client)).toEqual(["committed", "warm"])
      }))

    // Pipeline mode sends a statement before BEGIN's answer is in: were
    // BEGIN to fail, the statement would run outside any transaction.
    it("defers nothing in pg's pipeline mode", async () => {
      const Client = PgPreparedClient.make()
      const client = new Client({ connectionString: url, pipeline: true } as Pg.ClientConfig)
      await client.connect()
      try {
        expect(client.deferBegin()).toBe(false)
        expect(client.cancelDeferredBegin()).toBe(false)
        await client.query("SELECT $1::int AS v", [1])
        expect(client.getTransactionStatus()).toBe("I")
      } finally {
        await client.end()
      }
    })

    it("a BEGIN that fails closes the connection", () =>
      withTable(async (client) => {
        await insert(client, "warm")
        const emitted: Array<unknown> = []
        client.on("error", (error) => emitted.push(error))
        // A transaction some statement aborted: BEGIN there fails (25P02).
        await client.query("BEGIN")
        await client.query("SELECT 1/0").catch(() => undefined)
        expect(client.deferBegin()).toBe(true)
        expect(sqlState(await insert(client, "never").catch((error) => error))).toBe("25P02")
        const after = await client.query("SELECT 1").then(() => "answered", (error) => error)
        expect(after).toBeInstanceOf(Error)
        expect(emitted.map(sqlState)).toEqual(["25P02"])
      }))
  })

  describe("deferUntilCommit", () => {
    type Outcome = { readonly error: Error | null; readonly outcome?: PgPreparedClient.CommitOutcome | undefined }
    const commit = (client: PgPreparedClient.PreparedClient): Promise<Outcome | false> =>
      new Promise((resolve) => {
        if (!client.commitDeferred((error, outcome) => resolve({ error, outcome }))) resolve(false)
      })
    const hold = (client: PgPreparedClient.PreparedClient, note: string) =>
      client.deferUntilCommit("INSERT INTO deferred VALUES ($1)", [note])

    it("holds a write only in a transaction that began, with nothing in flight", () =>
      withTable(async (client) => {
        await insert(client, "warm")
        const counted = exchanges(client)
        // Idle, and with BEGIN still to go out: nothing to hold it for.
        expect(hold(client, "idle")).toBe(false)
        expect(client.deferBegin()).toBe(true)
        expect(hold(client, "before BEGIN")).toBe(false)
        await insert(client, "begun")
        expect(hold(client, "held")).toBe(true)
        expect(counted()).toBe(1)
        await client.query("ROLLBACK")
        // An aborted transaction: a write there fails at once, as any statement.
        await client.query("BEGIN")
        await client.query("SELECT 1/0").catch(() => undefined)
        expect(hold(client, "aborted")).toBe(false)
        await client.query("ROLLBACK")
        expect(await notes(client)).toEqual(["warm"])
      }))

    it("sends the held writes and COMMIT in one exchange, parsing what the connection has not, transaction after transaction", () =>
      withTable(async (client) => {
        for (const round of [1, 2, 3]) {
          await client.query("BEGIN")
          await insert(client, `${round} a`)
          const counted = exchanges(client)
          expect(hold(client, `${round} b`)).toBe(true)
          expect(client.deferUntilCommit("UPDATE deferred SET note = note || $1 WHERE note = $2", [" c", `${round} a`]))
            .toBe(true)
          expect(await commit(client)).toEqual({ error: null, outcome: { _tag: "Committed" } })
          expect(counted()).toBe(1)
          expect(status(client)).toBe("I")
        }
        expect(await notes(client)).toEqual(["1 a c", "1 b", "2 a c", "2 b", "3 a c", "3 b"])
        // Nothing held: nothing sent.
        await client.query("BEGIN")
        expect(await commit(client)).toBe(false)
        await client.query("COMMIT")
      }))

    it("a held write that fails stops the commit: its index, and the transaction left open and aborted", () =>
      withTable(async (client) => {
        await insert(client, "taken")
        for (const fresh of [true, false]) {
          await client.query("BEGIN")
          await insert(client, "lost")
          expect(hold(client, `${fresh} first`)).toBe(true)
          // Never parsed on this connection the first time round.
          expect(
            client.deferUntilCommit(
              fresh ? "INSERT INTO deferred VALUES ($1) -- fresh" : "INSERT INTO deferred VALUES ($1)",
              ["taken"]
            )
          ).toBe(true)
          expect(hold(client, "after")).toBe(true)
          const answer = await commit(client)
          assert(answer !== false && answer.outcome?._tag === "Failed")
          expect([answer.error, answer.outcome.index, sqlState(answer.outcome.error)]).toEqual([null, 1, "23505"])
          // The callback comes with the error, before the status does: the next statement tells.
          expect(sqlState(await client.query("SELECT 1").catch((error) => error))).toBe("25P02")
          expect(status(client)).toBe("E")
          await client.query("ROLLBACK")
        }
        expect(await notes(client)).toEqual(["taken"])
        // Each statement parsed in a failed exchange is known to the connection as it is to the server.
        await insert(client, "again")
        await client.query("INSERT INTO deferred VALUES ($1) -- fresh", ["again fresh"])
        expect(await notes(client)).toEqual(["again", "again fresh", "taken"])
      }))

    it("a statement sent after held writes sends them first; one that failed is the commit's answer", () =>
      withTable(async (client) => {
        await insert(client, "taken")
        await client.query("BEGIN")
        await insert(client, "a")
        expect(hold(client, "b")).toBe(true)
        expect(await notes(client)).toEqual(["a", "b", "taken"])
        expect(hold(client, "taken")).toBe(true)
        expect(sqlState(await client.query("SELECT 1").catch((error) => error))).toBe("25P02")
        const answer = await commit(client)
        assert(answer !== false && answer.outcome?._tag === "Failed")
        expect([answer.outcome.index, sqlState(answer.outcome.error)]).toEqual([1, "23505"])
        await client.query("ROLLBACK")
        expect(await notes(client)).toEqual(["taken"])
      }))

    // The server has every message up to COMMIT by then, and may commit: a
    // lost connection is the commit's unknown outcome, never a write's failure.
    it("a connection lost during the exchange is its error, not a failed write", () =>
      withTable(async (client) => {
        client.on("error", () => {})
        await client.query("BEGIN")
        await insert(client, "a")
        expect(client.deferUntilCommit("INSERT INTO deferred SELECT $1 FROM pg_sleep(0.3)", ["slow"])).toBe(true)
        const answered = commit(client)
        setTimeout(() => {
          const stream =
            (client as unknown as { readonly connection: { readonly stream: { destroy(e: Error): void } } })
              .connection.stream
          stream.destroy(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }))
        }, 100)
        const answer = await answered
        assert(answer !== false)
        expect(answer.outcome).toBeUndefined()
        expect((answer.error as { readonly code?: string } | null)?.code).toBe("ECONNRESET")
      }))

    it("drops what it holds when the transaction rolls back, and when the next one begins", () =>
      withTable(async (client) => {
        await client.query("BEGIN")
        await insert(client, "a")
        expect(hold(client, "dropped")).toBe(true)
        client.dropDeferred()
        expect(await commit(client)).toBe(false)
        await client.query("ROLLBACK")
        await client.query("BEGIN")
        await insert(client, "b")
        // Sent ahead of a ROLLBACK that is not the unit of work's, where it fails.
        expect(hold(client, "b")).toBe(true)
        await client.query("ROLLBACK")
        // A new transaction starts with nothing held and no failure of the last one's.
        expect(client.deferBegin()).toBe(true)
        await insert(client, "c")
        expect(await commit(client)).toBe(false)
        await client.query("COMMIT")
        expect(await notes(client)).toEqual(["c"])
      }))
  })

  describe("answerTimeout", () => {
    /** A client of its own with `answerTimeout`, ended after (or already closed by the timeout). */
    const withAnswerTimeout = async <A>(answerTimeout: number, f: (client: Pg.Client) => Promise<A>): Promise<A> => {
      const Client = PgPreparedClient.make({ answerTimeout })
      const client = new Client({ connectionString: url })
      client.on("error", () => {})
      await client.connect()
      try {
        return await f(client)
      } finally {
        await client.end().catch(() => {})
      }
    }

    it("closes a connection whose statement gets no answer in time: ETIMEDOUT, also for what waits behind it", () =>
      withAnswerTimeout(300, async (client) => {
        expect((await client.query("SELECT $1::int AS y", [1])).rows).toEqual([{ y: 1 }])
        const slow = client.query("SELECT pg_sleep(5)").then(() => "answered", (error) => error)
        const behind = client.query("SELECT 1").then(() => "answered", (error) => error)
        for (const outcome of [await slow, await behind]) {
          expect(outcome).toBeInstanceOf(Error)
          expect((outcome as { readonly code?: string }).code).toBe("ETIMEDOUT")
        }
        const after = await client.query("SELECT 1").then(() => "answered", (error) => error)
        expect(after).toBeInstanceOf(Error)
      }))

    // Node fires a timer of more than 2^31 - 1 ms at once: every statement's connection was closed.
    it("takes a delay longer than Node's timers as none", () =>
      withAnswerTimeout(2 ** 31 - 1 + 2_000, async (client) => {
        expect((await client.query("SELECT $1::int AS y, pg_sleep(0.05)", [2])).rows).toEqual([{ y: 2, pg_sleep: "" }])
      }))

    it("answers a config's own callback, as pg does", () =>
      withAnswerTimeout(5_000, async (client) => {
        const answered = await new Promise((resolve) =>
          client.query(
            {
              text: "SELECT $1::int AS y",
              values: [3],
              callback: (error: Error | null, result: Pg.QueryResult) => resolve(error ?? result.rows)
            } as Pg.QueryConfig
          )
        )
        expect(answered).toEqual([{ y: 3 }])
        const failed = await new Promise((resolve) =>
          client.query({ text: "SELECT nope", callback: (error: Error | null) => resolve(error) } as Pg.QueryConfig)
        )
        expect(sqlState(failed)).toBe("42703")
        // A class instance's getters are its config too (a spread left them behind).
        class Statement {
          get text() {
            return "SELECT $1::int AS v"
          }
          readonly values = [5]
          constructor(readonly callback: (error: Error | null, result?: Pg.QueryResult) => void) {}
        }
        const fromInstance = await new Promise((resolve) =>
          client.query(
            new Statement((error, result) => resolve(error ?? result!.rows)) as unknown as Pg.QueryConfig
          )
        )
        expect(fromInstance).toEqual([{ v: 5 }])
      }))

    // Sent ahead of a read, three held writes and the read shared one
    // statement's time: the healthy connection was closed.
    it(
      "gives each held write sent ahead of a statement a statement's time",
      () =>
        withAnswerTimeout(1_500, async (client) => {
          const prepared = client as unknown as PgPreparedClient.PreparedClient & Pg.Client
          await client.query("CREATE TEMP TABLE slow (note text)")
          await client.query("SET statement_timeout = 1000")
          await client.query("BEGIN")
          await client.query("SELECT $1::int", [1])
          for (const note of ["d", "e", "f"]) {
            expect(prepared.deferUntilCommit("INSERT INTO slow SELECT $1 FROM pg_sleep(0.7)", [note])).toBe(true)
          }
          expect((await client.query("SELECT count(*)::int AS n FROM slow")).rows).toEqual([{ n: 3 }])
          await client.query("ROLLBACK")
        }),
      20_000
    )
  })
})
