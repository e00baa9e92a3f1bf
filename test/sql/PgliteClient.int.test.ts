import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { afterAll, assert, describe, expect, it, layer } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as HashMap from "effect/HashMap"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as PgliteClient from "../../src/sql/PgliteClient.js"

const tmpRoot = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pglite-client-test-"))
// File-level hook: runs after the describe blocks below have closed their databases.
afterAll(() => Fs.rmSync(tmpRoot, { recursive: true, force: true }))

class Boom extends Data.TaggedError("Boom")<{}> {}

const sqlState = (error: unknown): string | undefined =>
  error instanceof SqlError ? (error.cause as { code?: string } | undefined)?.code : undefined

/** Polls (bounded) until `count` channels are LISTENed on by the session. */
const awaitListening = (count: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_listening_channels()`
    if (rows[0]!.n !== count) return yield* Effect.fail("not yet" as const)
  }).pipe(Effect.retry({ schedule: Schedule.spaced("10 millis"), times: 500 }))

const Shared = PgliteClient.layer({ dataDir: Path.join(tmpRoot, "shared") })

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })("PgliteClient", (it) => {
  it.effect("provides the same client under the PgClient and SqlClient tags", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const sql = yield* SqlClient.SqlClient
      expect(pg).toBe(sql)
      expect(pg[PgClient.TypeId]).toBe(PgClient.TypeId)
    }))

  it.effect("selects with parameters", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ sum: number; s: string; nothing: null }>`
        SELECT ${1}::int + ${2}::int AS sum, ${"x"}::text AS s, ${null}::text AS nothing`
      expect(rows).toEqual([{ sum: 3, s: "x", nothing: null }])
      const ids = [1, 2, 3]
      const inList = yield* sql<{ n: number }>`
        SELECT n FROM generate_series(1, 5) AS n WHERE ${sql.in("n", ids)} ORDER BY n`
      expect(inList.map((r) => r.n)).toEqual([1, 2, 3])
    }))

  it.effect("returns the same JS types as pg: int8 as string, timestamptz as Date", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const at = new Date("2024-06-01T10:00:00.123Z")
      const [row] = yield* sql<Record<string, unknown>>`
        SELECT
          ${"9007199254740993"}::int8 AS big,
          1::int8 AS small,
          ARRAY[1, 2]::int8[] AS bigs,
          ${at}::timestamptz AS at,
          '2024-06-01 12:00:00.123+02'::timestamptz AS literal_at,
          '2024-06-01'::date AS day,
          1.50::numeric AS amount,
          '\\x0102ff'::bytea AS bytes,
          true AS flag`
      expect(row!.big).toBe("9007199254740993")
      expect(row!.small).toBe("1")
      expect(row!.bigs).toEqual(["1", "2"])
      expect(row!.at).toBeInstanceOf(Date)
      expect((row!.at as Date).getTime()).toBe(at.getTime())
      expect((row!.literal_at as Date).toISOString()).toBe("2024-06-01T10:00:00.123Z")
      // pg reads a bare date as local midnight
      expect(row!.day).toEqual(new Date(2024, 5, 1))
      expect(row!.amount).toBe("1.50")
      expect(Buffer.isBuffer(row!.bytes)).toBe(true)
      expect([...(row!.bytes as Buffer)]).toEqual([1, 2, 255])
      expect(row!.flag).toBe(true)
    }))

  it.effect("returns what pg returns for dates of the first century and BC, intervals and points", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<Record<string, any>>`
        SELECT
          '0050-03-01 10:00:00+00'::timestamptz AS early,
          '0044-03-15 12:00:00+00 BC'::timestamptz AS bc,
          '1 day 02:03:04'::interval AS span,
          '(1,2)'::point AS spot`
      expect((row!.early as Date).getUTCFullYear()).toBe(50)
      expect((row!.early as Date).toISOString()).toBe("0050-03-01T10:00:00.000Z")
      expect(Number.isNaN((row!.bc as Date).getTime())).toBe(false)
      expect((row!.bc as Date).getUTCFullYear()).toBe(-43)
      expect([row!.span.days, row!.span.hours, row!.span.minutes, row!.span.seconds]).toEqual([1, 2, 3, 4])
      expect(row!.spot).toEqual({ x: 1, y: 2 })
    }))

  it.effect("inserts and selects jsonb", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      yield* pg`CREATE TABLE docs (id serial PRIMARY KEY, body jsonb NOT NULL)`
      const body = { a: 1, nested: { list: [1, "two", null], ok: true }, text: "héllo \"quoted\"" }
      const inserted = yield* pg<{ id: number }>`INSERT INTO docs (body) VALUES (${pg.json(body)}) RETURNING id`
      const rows = yield* pg<{ body: unknown; a: number }>`
        SELECT body, (body->>'a')::int AS a FROM docs WHERE id = ${inserted[0]!.id}`
      expect(rows).toEqual([{ body, a: 1 }])
      // the record helper goes through the same compiler
      yield* pg`INSERT INTO docs ${pg.insert({ body: pg.json({ list: [1, 2] }) })}`
      // A top-level array is sent as a PostgreSQL array literal, as `pg` sends
      // it to a server (where the same statement fails the same way): send
      // JSON text for a JSON array.
      const asArray = yield* Effect.flip(pg`INSERT INTO docs (body) VALUES (${pg.json([1, 2])})`)
      expect(asArray._tag).toBe("SqlError")
      yield* pg`INSERT INTO docs (body) VALUES (${JSON.stringify([1, 2])}::jsonb)`
      const all = yield* pg<{ body: unknown }>`SELECT body FROM docs ORDER BY id`
      expect(all.map((r) => r.body)).toEqual([body, { list: [1, 2] }, [1, 2]])
    }))

  it.effect("executes values, raw, stream and multi-statement unprepared queries", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const values = yield* sql`SELECT n, n * 2 AS twice FROM generate_series(1, 3) AS n`.values
      expect(values).toEqual([[1, 2], [2, 4], [3, 6]])
      const raw = (yield* sql`SELECT ${5}::int AS five`.raw) as { rows: Array<unknown>; command: string }
      expect(raw.rows).toEqual([{ five: 5 }])
      expect(raw.command).toBe("SELECT")
      const streamed = yield* Stream.runCollect(sql<{ n: number }>`SELECT n FROM generate_series(1, 300) AS n`.stream)
      expect(Chunk.toReadonlyArray(streamed).map((r) => r.n)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1))
      const multi = yield* sql.unsafe("SELECT 1 AS a; SELECT 2 AS b").unprepared
      expect(multi).toEqual([[{ a: 1 }], [{ b: 2 }]])
    }))

  it.effect("commits a transaction", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE tx_commit (id int PRIMARY KEY)`
      const result = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`INSERT INTO tx_commit ${sql.insert([{ id: 1 }, { id: 2 }])}`
          return "done"
        })
      )
      expect(result).toBe("done")
      const rows = yield* sql<{ id: number }>`SELECT id FROM tx_commit ORDER BY id`
      expect(rows).toEqual([{ id: 1 }, { id: 2 }])
    }))

  it.effect("rolls back when the transaction fails with a typed error", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE tx_rollback (id int PRIMARY KEY)`
      const error = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`INSERT INTO tx_rollback VALUES (1)`
          return yield* new Boom()
        })
      ).pipe(Effect.flip)
      expect(error).toBeInstanceOf(Boom)
      const rows = yield* sql`SELECT id FROM tx_rollback`
      expect(rows).toEqual([])
    }))

  it.effect("rolls back only the inner (savepoint) transaction", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE tx_nested (id text PRIMARY KEY)`
      yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`INSERT INTO tx_nested VALUES ('outer-before')`
          const inner = yield* sql.withTransaction(
            Effect.gen(function*() {
              yield* sql`INSERT INTO tx_nested VALUES ('inner')`
              const seen = yield* sql<{ id: string }>`SELECT id FROM tx_nested ORDER BY id`
              expect(seen.map((r) => r.id)).toEqual(["inner", "outer-before"])
              return yield* new Boom()
            })
          ).pipe(Effect.flip)
          expect(inner).toBeInstanceOf(Boom)
          // a committed (released) savepoint keeps its rows
          yield* sql.withTransaction(sql`INSERT INTO tx_nested VALUES ('inner-ok')`)
          yield* sql`INSERT INTO tx_nested VALUES ('outer-after')`
        })
      )
      const rows = yield* sql<{ id: string }>`SELECT id FROM tx_nested ORDER BY id`
      expect(rows.map((r) => r.id)).toEqual(["inner-ok", "outer-after", "outer-before"])
    }))

  it.effect("serializes 50 concurrent read-modify-write transactions", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE counter (id int PRIMARY KEY, value int NOT NULL)`
      yield* sql`INSERT INTO counter VALUES (1, 0)`
      const increment = sql.withTransaction(
        Effect.gen(function*() {
          const [row] = yield* sql<{ value: number }>`SELECT value FROM counter WHERE id = 1`
          // give other fibers every chance to interleave between read and write
          yield* Effect.sleep("1 millis")
          yield* sql`UPDATE counter SET value = ${row!.value + 1} WHERE id = 1`
        })
      )
      // plain statements compete for the session at the same time
      const reads = sql`SELECT value FROM counter WHERE id = 1`
      yield* Effect.all(
        [
          Effect.all(Array.from({ length: 50 }, () => increment), { concurrency: "unbounded", discard: true }),
          Effect.all(Array.from({ length: 50 }, () => reads), { concurrency: "unbounded", discard: true })
        ],
        { concurrency: "unbounded", discard: true }
      )
      const [row] = yield* sql<{ value: number }>`SELECT value FROM counter WHERE id = 1`
      expect(row!.value).toBe(50)
    }))

  it.effect("serves 3000 queued statements in FIFO order", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const entered = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(
        Deferred.succeed(entered, undefined).pipe(Effect.zipRight(Deferred.await(release)))
      ).pipe(Effect.fork)
      yield* Deferred.await(entered)
      const order: Array<number> = []
      const fibers = yield* Effect.forEach(
        Array.from({ length: 3000 }, (_, i) => i),
        (i) => sql<{ i: number }>`SELECT ${i}::int AS i`.pipe(Effect.tap((rows) => order.push(rows[0]!.i)), Effect.fork)
      )
      yield* Effect.sleep("20 millis")
      // nothing ran while the transaction held the session
      expect(order).toEqual([])
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.joinAll(fibers)
      // (How fast the queue hands off is the benchmarks' to measure.)
      expect(order).toEqual(Array.from({ length: 3000 }, (_, i) => i))
    }), 60_000)

  it.effect("rolls back and releases the session when a transaction holder is interrupted", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE tx_interrupt (id text PRIMARY KEY)`
      const entered = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`INSERT INTO tx_interrupt VALUES ('holder')`
          yield* Deferred.succeed(entered, undefined)
          return yield* Effect.never
        })
      ).pipe(Effect.fork)
      yield* Deferred.await(entered)

      // another fiber's statement must wait, not run inside the open transaction
      const waiter = yield* sql`INSERT INTO tx_interrupt VALUES ('waiter')`.pipe(Effect.fork)
      // a transaction waiting for the session can itself be interrupted while queued
      const queuedTx = yield* sql.withTransaction(sql`INSERT INTO tx_interrupt VALUES ('queued-tx')`).pipe(Effect.fork)
      yield* Effect.sleep("50 millis")
      expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
      const queuedExit = yield* Fiber.interrupt(queuedTx).pipe(Effect.timeout("5 seconds"))
      expect(Exit.isInterrupted(queuedExit)).toBe(true)

      const holderExit = yield* Fiber.interrupt(holder).pipe(Effect.timeout("5 seconds"))
      expect(Exit.isInterrupted(holderExit)).toBe(true)
      yield* Fiber.join(waiter).pipe(Effect.timeout("5 seconds"))

      const rows = yield* sql<{ id: string }>`SELECT id FROM tx_interrupt ORDER BY id`
      expect(rows.map((r) => r.id)).toEqual(["waiter"])
      // the session is free and not left inside a transaction
      const after = yield* sql.withTransaction(sql<{ ok: number }>`SELECT 1 AS ok`).pipe(Effect.timeout("5 seconds"))
      expect(after).toEqual([{ ok: 1 }])
    }))

  // Effect yields to the scheduler every so many operations (64 here), where
  // an interruption lands: swept over each step around taking the session,
  // it must never leave the session taken with no one to give it back.
  it.effect("an interruption at any step around taking the session leaves it free", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const probe = pg`SELECT 1`.pipe(Effect.timeout("2 seconds"), Effect.option)
      const takers: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]> = [
        ["withTransaction", pg.withTransaction(pg`SELECT 1`)],
        ["reserve", Effect.scoped(Effect.flatMap(pg.reserve, (conn) => conn.execute("SELECT 1", [], undefined)))]
      ]
      for (const [name, take] of takers) {
        for (let pad = 0; pad < 70; pad++) {
          for (let yields = 1; yields <= 2; yields++) {
            let padded: Effect.Effect<void> = Effect.void
            for (let i = 0; i < pad; i++) padded = Effect.zipRight(padded, Effect.void)
            const fiber = yield* Effect.fork(Effect.zipRight(padded, take).pipe(Effect.withMaxOpsBeforeYield(64)))
            for (let i = 0; i < yields; i++) yield* Effect.yieldNow()
            yield* Fiber.interrupt(fiber)
            expect(Option.isSome(yield* probe), `${name}, interrupted after ${pad} steps and ${yields} yields`).toBe(
              true
            )
          }
        }
      }
    }), 60_000)

  it.effect("rejects statements on a transaction's connection once the transaction ended", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const reserved = yield* Effect.scoped(sql.reserve)
      const error = yield* reserved.execute("SELECT 1", [], undefined).pipe(Effect.flip)
      expect(error.message).toContain("ended")

      // a fiber forked inside a transaction must not run into whoever holds the session next
      const gate = yield* Deferred.make<void>()
      const leaked = yield* sql.withTransaction(
        Effect.forkDaemon(Deferred.await(gate).pipe(Effect.zipRight(sql`SELECT 1`)))
      )
      yield* Deferred.succeed(gate, undefined)
      const exit = yield* Fiber.await(leaked).pipe(Effect.timeout("5 seconds"))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(yield* sql`SELECT 1 AS ok`).toEqual([{ ok: 1 }])
    }))

  it.effect("delivers notifications sent in a transaction on commit only", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      const channel = "Orders.Placed" // mixed case and a dot: must be quoted consistently
      const received = yield* Queue.unbounded<string>()
      const listener = yield* pg.listen(channel).pipe(
        Stream.runForEach((payload) => Queue.offer(received, payload)),
        Effect.fork
      )
      yield* awaitListening(1)

      yield* pg.withTransaction(
        Effect.gen(function*() {
          yield* pg.notify(channel, "committed")
          yield* Effect.sleep("20 millis")
          // not delivered before COMMIT
          expect(yield* Queue.size(received)).toBe(0)
        })
      )
      expect(yield* Queue.take(received).pipe(Effect.timeout("5 seconds"))).toBe("committed")

      const error = yield* pg.withTransaction(
        pg.notify(channel, "rolled-back").pipe(Effect.zipRight(new Boom()))
      ).pipe(Effect.flip)
      expect(error).toBeInstanceOf(Boom)
      // notifications are delivered in commit order, so the marker proves the
      // rolled-back one was dropped
      yield* pg`SELECT pg_notify(${channel}, ${"marker"})`
      expect(yield* Queue.take(received).pipe(Effect.timeout("5 seconds"))).toBe("marker")
      expect(yield* Queue.size(received)).toBe(0)

      yield* Fiber.interrupt(listener)
      yield* awaitListening(0)
    }))

  it.effect("surfaces constraint violations as SqlError with the SQLSTATE in the cause", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE constrained (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0))`
      yield* sql`INSERT INTO constrained VALUES (1, 1)`
      const duplicate = yield* sql`INSERT INTO constrained VALUES (1, 1)`.pipe(Effect.flip)
      assert.instanceOf(duplicate, SqlError)
      expect(sqlState(duplicate)).toBe("23505")
      const negative = yield* sql`UPDATE constrained SET qty = -1 WHERE id = 1`.pipe(Effect.flip)
      expect(sqlState(negative)).toBe("23514")

      // inside a transaction the whole transaction is rolled back and the session stays usable
      const inTx = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`INSERT INTO constrained VALUES (2, 1)`
          yield* sql`INSERT INTO constrained VALUES (1, 1)`
        })
      ).pipe(Effect.flip)
      expect(sqlState(inTx)).toBe("23505")
      const rows = yield* sql<{ id: number }>`SELECT id FROM constrained ORDER BY id`
      expect(rows).toEqual([{ id: 1 }])
    }))
})

/** The pid of a process that has exited. */
const deadPid = () => {
  const child = ChildProcess.spawnSync(process.execPath, ["-e", ""])
  return child.pid
}

describe("PgliteClient persistence", () => {
  it.live("refuses a dataDir locked by another live process", () =>
    Effect.gen(function*() {
      const dataDir = Path.join(tmpRoot, "locked")
      Fs.mkdirSync(dataDir, { recursive: true })
      Fs.writeFileSync(Path.join(dataDir, ".pglite-client.lock"), String(process.ppid))
      const error = yield* Effect.scoped(PgliteClient.make({ dataDir })).pipe(
        Effect.provide(Reactivity.layer),
        Effect.flip
      )
      assert.instanceOf(error, SqlError)
      expect(error.message).toContain(`in use by process ${process.ppid}`)
      expect(Fs.existsSync(Path.join(dataDir, "PG_VERSION"))).toBe(false)
    }))

  it.live(
    "claims a dataDir by its real path: a link to an open one is refused, a link alone opens",
    () =>
      Effect.gen(function*() {
        const root = Path.join(tmpRoot, "links")
        const real = Path.join(root, "data")
        Fs.mkdirSync(real, { recursive: true })
        Fs.symlinkSync(real, Path.join(root, "alias"), "dir")
        const open = (dataDir: string) => PgliteClient.make({ dataDir }).pipe(Effect.provide(Reactivity.layer))
        yield* Effect.scoped(Effect.gen(function*() {
          const first = yield* open(Path.join(real, "pg"))
          yield* first`CREATE TABLE through_real (id int)`
          const error = yield* Effect.flip(Effect.scoped(open(Path.join(root, "alias", "pg"))))
          expect(error.message).toContain("already open in this process")
          // The refused open did not take the lock away from the open one.
          expect(Fs.readFileSync(Path.join(real, "pg", ".pglite-client.lock"), "utf8")).toBe(String(process.pid))
        }))
        // Closed: the same database opens through the link.
        const tables = yield* Effect.scoped(Effect.flatMap(
          open(Path.join(root, "alias", "pg")),
          (sql) =>
            sql<{ readonly name: string }>`SELECT tablename AS name FROM pg_tables WHERE tablename = 'through_real'`
        ))
        expect(tables).toEqual([{ name: "through_real" }])
        expect(Fs.existsSync(Path.join(real, "pg", ".pglite-client.lock"))).toBe(false)
      }),
    120_000
  )

  it.live(
    "takes over a lock file left with this process's own pid (a pid reused after a crash)",
    () =>
      Effect.gen(function*() {
        const dataDir = Path.join(tmpRoot, "own-pid")
        Fs.mkdirSync(dataDir, { recursive: true })
        Fs.writeFileSync(Path.join(dataDir, ".pglite-client.lock"), String(process.pid))
        const rows = yield* Effect.scoped(Effect.flatMap(
          PgliteClient.make({ dataDir }).pipe(Effect.provide(Reactivity.layer)),
          (sql) => sql<{ readonly one: number }>`SELECT 1 AS one`
        ))
        expect(rows).toEqual([{ one: 1 }])
      }),
    120_000
  )

  it.live("keeps its data directory its owner's alone: new ones 0700, open ones made 0700 with a warning", () =>
    Effect.gen(function*() {
      // PGlite writes its files 0666 whatever the umask: the directory is what keeps other users out.
      const shared = Path.join(tmpRoot, "private-parent")
      Fs.mkdirSync(shared, { mode: 0o755 })
      Fs.chmodSync(shared, 0o755)
      const fresh = Path.join(shared, "a", "pg")
      const umask = process.umask(0o000)
      try {
        yield* Effect.scoped(Effect.gen(function*() {
          const pg = yield* PgliteClient.make({ dataDir: fresh }).pipe(Effect.provide(Reactivity.layer))
          yield* pg`CREATE TABLE secrets (address text)`
          yield* pg`INSERT INTO secrets VALUES ('1 Private Lane')`
        }))
      } finally {
        process.umask(umask)
      }
      for (const dir of [fresh, Path.dirname(fresh)]) expect(Fs.statSync(dir).mode & 0o777, dir).toBe(0o700)
      // The directory it was given as a parent is not its to change.
      expect(Fs.statSync(shared).mode & 0o777).toBe(0o755)

      // One left open to others (an earlier version's): made private before
      // anything else, even when the open then fails (here: in use).
      const open = Path.join(tmpRoot, "private-open")
      Fs.mkdirSync(open)
      Fs.chmodSync(open, 0o755)
      Fs.writeFileSync(Path.join(open, ".pglite-client.lock"), String(process.ppid))
      const warnings: Array<unknown> = []
      const error = yield* Effect.scoped(PgliteClient.make({ dataDir: open })).pipe(
        Effect.provide(Reactivity.layer),
        Effect.provide(Logger.replace(
          Logger.defaultLogger,
          Logger.make(({ annotations, logLevel, message }) => {
            if (logLevel._tag === "Warning") warnings.push({ message, mode: HashMap.get(annotations, "mode") })
          })
        )),
        Effect.flip
      )
      expect(error.message).toContain("in use")
      expect(Fs.statSync(open).mode & 0o777).toBe(0o700)
      expect(warnings).toEqual([{ message: ["pglite.data-dir-restricted"], mode: Option.some("755") }])
    }))

  it.live.skipIf(process.getuid?.() !== 0)(
    "refuses a data directory of another user (run as root)",
    () =>
      Effect.gen(function*() {
        const theirs = Path.join(tmpRoot, "theirs")
        Fs.mkdirSync(theirs, { mode: 0o700 })
        Fs.chownSync(theirs, 65534, 65534)
        const error = yield* Effect.scoped(PgliteClient.make({ dataDir: theirs })).pipe(
          Effect.provide(Reactivity.layer),
          Effect.flip
        )
        expect(error.message).toContain("belongs to another user (uid 65534)")
        expect(Fs.readdirSync(theirs)).toEqual([])
      })
  )

  it.live("keeps data across close and reopen of the same dataDir", () =>
    Effect.gen(function*() {
      const dataDir = Path.join(tmpRoot, "persistent", "db")
      // a lock file left behind by a crashed process does not block the open
      Fs.mkdirSync(dataDir, { recursive: true })
      Fs.writeFileSync(Path.join(dataDir, ".pglite-client.lock"), String(deadPid()))

      yield* Effect.scoped(
        Effect.gen(function*() {
          const pg = yield* PgliteClient.make({ dataDir, maxQueued: 1 })
          yield* pg`CREATE TABLE kept (id int PRIMARY KEY, body jsonb NOT NULL)`
          yield* pg.withTransaction(pg`INSERT INTO kept VALUES (1, ${pg.json({ a: 1 })})`)
          yield* pg`INSERT INTO kept VALUES (2, ${pg.json({ b: 2 })})`

          // the directory cannot be opened twice
          const second = yield* Effect.scoped(PgliteClient.make({ dataDir })).pipe(Effect.flip)
          assert.instanceOf(second, SqlError)

          // maxQueued: with the session held and one waiter queued, more work fails fast
          const entered = yield* Deferred.make<void>()
          const release = yield* Deferred.make<void>()
          const holder = yield* pg.withTransaction(
            Deferred.succeed(entered, undefined).pipe(Effect.zipRight(Deferred.await(release)))
          ).pipe(Effect.fork)
          yield* Deferred.await(entered)
          const queued = yield* pg`SELECT 1`.pipe(Effect.fork)
          yield* Effect.sleep("20 millis")
          const rejected = yield* pg`SELECT 2`.pipe(Effect.flip)
          expect(rejected.message).toContain("maxQueued")
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(holder)
          yield* Fiber.join(queued)
        }).pipe(Effect.provide(Reactivity.layer))
      )

      expect(Fs.existsSync(Path.join(dataDir, "PG_VERSION"))).toBe(true)
      expect(Fs.existsSync(Path.join(dataDir, ".pglite-client.lock"))).toBe(false)

      const rows = yield* Effect.scoped(
        Effect.gen(function*() {
          const pg = yield* PgliteClient.make({ dataDir })
          return yield* pg<{ id: number; body: unknown }>`SELECT id, body FROM kept ORDER BY id`
        }).pipe(Effect.provide(Reactivity.layer))
      )
      expect(rows).toEqual([{ id: 1, body: { a: 1 } }, { id: 2, body: { b: 2 } }])
    }), 120_000)
})

/** The session's named statements, by text. */
const preparedTexts = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ statement: string }>`SELECT statement FROM pg_prepared_statements ORDER BY statement`
  return rows.map((row) => row.statement)
})

/** Tests on a throwaway in-memory database that keeps `preparedStatements` texts prepared. */
const inMemory = (preparedStatements: number) =>
  layer(PgliteClient.layer({ dataDir: "memory://", preparedStatements }), {
    excludeTestServices: true,
    timeout: "120 seconds"
  })

inMemory(3)(
  "PgliteClient prepared statements",
  (it) => {
    it.effect("parses a statement once, binds it after, and keeps the least recently used within the cap", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const add = (x: number) => sql<{ y: number }>`SELECT ${x}::int + 1 AS y`
        for (let x = 0; x < 5; x++) expect(yield* add(x)).toEqual([{ y: x + 1 }])
        expect(yield* preparedTexts).toEqual(["SELECT $1::int + 1 AS y"])

        // Six texts through a cap of three, twice over: right answers throughout, three kept.
        const texts = [1, 2, 3, 4, 5, 6].map((k) => (x: number) =>
          sql<{ y: number }>`SELECT ${x}::int * ${sql.literal(String(k))} AS y`
        )
        for (let round = 0; round < 2; round++) {
          for (const [i, times] of texts.entries()) {
            expect(yield* times(round + 2)).toEqual([{ y: (round + 2) * (i + 1) }])
          }
        }
        const kept = yield* preparedTexts
        expect(kept).toHaveLength(3)
        expect(kept).toEqual(["SELECT $1::int * 4 AS y", "SELECT $1::int * 5 AS y", "SELECT $1::int * 6 AS y"])
      }))

    it.effect("a statement whose Parse or Execute failed runs correctly afterwards", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE checked (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0))`
        const insert = (id: number, qty: number) => sql`INSERT INTO checked VALUES (${id}, ${qty})`
        yield* insert(1, 1)
        // Fails at Execute: the statement stays prepared and usable.
        expect(sqlState(yield* insert(2, -1).pipe(Effect.flip))).toBe("23514")
        yield* insert(2, 2)

        // A first use inside an aborted transaction fails at Parse.
        const read = (id: number) => sql<{ qty: number }>`SELECT qty FROM checked WHERE id = ${id}`
        const aborted = yield* sql.withTransaction(
          Effect.gen(function*() {
            yield* insert(3, -1).pipe(Effect.ignore)
            return yield* read(1)
          })
        ).pipe(Effect.flip)
        expect(sqlState(aborted)).toBe("25P02")
        expect(yield* read(1)).toEqual([{ qty: 1 }])
        expect(yield* read(2)).toEqual([{ qty: 2 }])
        // One name per text: nothing parsed twice under two names.
        const texts = yield* preparedTexts
        expect(texts.filter((text) => text.startsWith("SELECT qty FROM checked"))).toHaveLength(1)
      }))

    it.effect("statements outlive a rolled-back transaction", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const echo = (s: string) => sql<{ s: string }>`SELECT ${s}::text AS s`
        const failed = yield* sql.withTransaction(
          Effect.zipRight(echo("in"), Effect.fail(new Boom()))
        ).pipe(Effect.flip)
        assert.instanceOf(failed, Boom)
        expect(yield* preparedTexts).toContain("SELECT $1::text AS s")
        expect(yield* echo("out")).toEqual([{ s: "out" }])
      }))

    it.effect("prepares again a statement dropped behind its back or outdated by a changed table", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE widened (a int)`
        yield* sql`INSERT INTO widened VALUES (1)`
        const select = (a: number) => sql<Record<string, number | null>>`SELECT * FROM widened WHERE a = ${a}`
        expect(yield* select(1)).toEqual([{ a: 1 }])

        // Outside a transaction the retry is silent.
        yield* sql`ALTER TABLE widened ADD COLUMN b int`
        expect(yield* select(1)).toEqual([{ a: 1, b: null }])
        yield* sql`DEALLOCATE ALL`
        expect(yield* select(1)).toEqual([{ a: 1, b: null }])

        // Inside one, the failure has aborted the transaction: it fails once.
        yield* sql`DEALLOCATE ALL`
        const inTransaction = yield* sql.withTransaction(select(1)).pipe(Effect.flip)
        expect(sqlState(inTransaction)).toBe("26000")
        expect(yield* select(1)).toEqual([{ a: 1, b: null }])
      }))

    it.effect("concurrent statements of one transaction past the cap: none closed under another in flight", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const times = (k: number) => sql<{ y: number }>`SELECT ${k}::int * ${sql.literal(String(k + 10))} AS y`
        yield* times(1)
        yield* times(2)
        const results = yield* sql.withTransaction(
          Effect.all([times(1), times(3), times(4), times(5), times(2)], { concurrency: "unbounded" })
        )
        expect(results).toEqual([[{ y: 11 }], [{ y: 39 }], [{ y: 56 }], [{ y: 75 }], [{ y: 24 }]])
        expect((yield* preparedTexts).length).toBeLessThanOrEqual(3)
      }))

    it.effect("a column that changes type: one failure, then the statement is parsed again", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE widening (id int)`
        const insert = (id: string) => sql`INSERT INTO widening VALUES (${id})`
        yield* insert("1")
        yield* sql`ALTER TABLE widening ALTER id TYPE bigint`
        expect(sqlState(yield* insert("3000000000").pipe(Effect.flip))).toBe("22003")
        yield* insert("3000000000")
        const rows = yield* sql<{ id: string }>`SELECT id FROM widening ORDER BY id`
        expect(rows).toEqual([{ id: "1" }, { id: "3000000000" }])
      }))

    it.effect("unprepared statements stay unnamed", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const before = yield* preparedTexts
        const rows = yield* sql<{ z: number }>`SELECT ${7}::int AS z`.unprepared
        expect(rows).toEqual([{ z: 7 }])
        expect(yield* preparedTexts).toEqual(before)
      }))
  }
)

inMemory(0)(
  "PgliteClient with preparedStatements: 0",
  (it) => {
    it.effect("sends every statement unnamed", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        expect(yield* sql<{ y: number }>`SELECT ${1}::int + 1 AS y`).toEqual([{ y: 2 }])
        expect(yield* preparedTexts).toEqual([])
      }))
  }
)
