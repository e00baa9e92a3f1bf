/**
 * The unit of work on a `pg` pool's own connections (`SqlUnitOfWork.PgPool`,
 * which the service's database layer provides): the same transactions as
 * `sql.withTransaction`, with every connection handed back, a broken one
 * destroyed, nesting as savepoints, and the same span. Needs a server.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import Pg from "pg"
import { CommandError, UnitOfWork } from "../../src/index.js"
import * as Database from "../../src/server/Database.js"
import { SqlFailure, SqlStatement, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { parentId, recordingTracer } from "../support/Tracing.js"

const serverLayer = (poolSize: number, connectTimeout: Duration.Duration = Duration.seconds(5)) =>
  Database.serverLayer({
    url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused"),
    schema: Option.none(),
    poolSize,
    connectTimeout,
    statementTimeout: Duration.seconds(30)
  })

// Each test file on the server has a table of its own in the public schema.
const table = `uow_pool_${process.pid}`

const Shared = SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(3)))

const rows = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => Effect.map(sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, (found) => found[0]!.n)
)

const freshTable = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql.unsafe(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (note text NOT NULL)`)
)

const insert = (note: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`INSERT INTO ${sql(table)} (note) VALUES (${note})`)

const notes = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    Effect.map(
      sql<{ readonly note: string }>`SELECT note FROM ${sql(table)} ORDER BY note`,
      (found) => found.map((row) => row.note)
    )
)

class HeldFailed extends Data.TaggedError("HeldFailed")<{ readonly code: unknown }> {}

/** A write held for the commit where the unit of work can hold it; its error is `HeldFailed`. */
const held = (note: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    SqlStatement.runAtCommit(
      sql`INSERT INTO ${sql(table)} (note) VALUES (${note})`,
      (error) => Effect.fail(new HeldFailed({ code: SqlFailure.sqlState(error) }))
    ))

/** The pool's connections are all idle again, none waited for. */
const everyConnectionBack = Effect.gen(function*() {
  const { pool } = yield* SqlUnitOfWork.PgPool
  // A release is seen when the COMMIT's answer is: give the pool its turn.
  yield* Effect.sleep("10 millis")
  expect(pool.idleCount).toBe(pool.totalCount)
  expect(pool.waitingCount).toBe(0)
})

/** The texts `pg` was given to send while `self` ran (BEGIN sent with a statement is not one of its own). */
const sentDuring = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const sent: Array<string> = []
    const query = Pg.Client.prototype.query
    Pg.Client.prototype.query = function(this: Pg.Client, ...args: Array<any>) {
      // A commit with held writes has no text: named by its class.
      sent.push(
        typeof args[0] === "string" ? args[0] : args[0]?.constructor?.name === "CommitExchange"
          ? "CommitExchange"
          : args[0]?.text
      )
      return (query as any).apply(this, args)
    } as typeof query
    return self.pipe(
      Effect.as(sent),
      Effect.ensuring(Effect.sync(() => Pg.Client.prototype.query = query))
    )
  })

const transactional = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.flatMap(UnitOfWork.UnitOfWork, (unitOfWork) => unitOfWork.transactional(self))

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })("unit of work on the pool", (it) => {
  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "commits, rolls back, and hands back each connection",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        yield* transactional(Effect.zipRight(insert("kept"), insert("kept too")))
        const failed = yield* Effect.exit(transactional(Effect.zipRight(insert("gone"), Effect.fail("refused"))))
        assert.deepStrictEqual(failed, Exit.fail("refused"))
        const died = yield* Effect.exit(transactional(Effect.zipRight(insert("gone"), Effect.dieMessage("crashed"))))
        assert.isTrue(Exit.isFailure(died) && Cause.isDie(died.cause))
        expect(yield* rows).toBe(2)
        yield* everyConnectionBack
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "rolls back a transaction interrupted in a statement",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        const running = yield* Effect.fork(transactional(Effect.zipRight(insert("gone"), sql`SELECT pg_sleep(30)`)))
        yield* Effect.sleep("200 millis")
        const exit = yield* Fiber.interrupt(running)
        assert.isTrue(Exit.isInterrupted(exit))
        expect(yield* rows).toBe(0)
        yield* everyConnectionBack
      })
  )

  // A deadline, a hang-up or a shutdown cut must not wait for the pool: the
  // wait for a connection was uninterruptible, up to the pool's connect
  // timeout (a minute here, so that only the fix ends the wait early).
  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a transaction waiting for a connection of a full pool is interrupted at once; the one handed out later goes back",
    () =>
      Effect.gen(function*() {
        const { pool } = yield* SqlUnitOfWork.PgPool
        yield* freshTable
        const taken = yield* Effect.promise(() => Promise.all([pool.connect(), pool.connect(), pool.connect()]))
        const waiting = yield* Effect.fork(transactional(insert("late")))
        yield* Effect.sleep("100 millis")
        expect(pool.waitingCount).toBe(1)
        // Bounded, so that a wait that is not cut fails the test rather than hangs it.
        const interrupted = yield* Effect.timeoutOption(Fiber.interrupt(waiting), "10 seconds")
        for (const client of taken) client.release()
        assert.isTrue(Option.isSome(interrupted), "the interruption waited for a connection")
        expect(yield* rows).toBe(0)
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(3, Duration.minutes(1))))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "nests as a savepoint: an inner failure undoes only the inner writes",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        yield* transactional(Effect.gen(function*() {
          yield* insert("outer")
          const inner = yield* Effect.exit(
            transactional(Effect.zipRight(insert("inner"), Effect.fail("inner refused")))
          )
          assert.deepStrictEqual(inner, Exit.fail("inner refused"))
          yield* transactional(insert("inner kept"))
        }))
        const notes = yield* sql<{ readonly note: string }>`SELECT note FROM ${sql(table)} ORDER BY note`
        assert.deepStrictEqual(notes.map((row) => row.note), ["inner kept", "outer"])
        yield* everyConnectionBack
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "destroys a connection that broke in a transaction, reports StoreUnavailable, and goes on with a new one",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const { pool } = yield* SqlUnitOfWork.PgPool
        yield* freshTable
        const exit = yield* Effect.exit(transactional(Effect.zipRight(
          insert("gone"),
          sql`SELECT pg_terminate_backend(pg_backend_pid())`
        )))
        assert.instanceOf(
          Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined,
          CommandError.StoreUnavailable
        )
        const backendsAfter = yield* Effect.promise(() => pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid"))
        assert.isNumber(backendsAfter.rows[0]!.pid)
        yield* transactional(insert("kept"))
        expect(yield* rows).toBe(1)
        yield* everyConnectionBack
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "makes the sql.transaction span, with the client's attributes, as the parent of its statements",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        const { spans, tracer } = yield* recordingTracer
        yield* transactional(insert("traced")).pipe(Effect.withTracer(tracer))
        const transaction = spans.find((span) => span.name === "sql.transaction")
        assert.isDefined(transaction)
        expect(transaction!.status._tag).toBe("Ended")
        expect(transaction!.attributes.get("db.system.name")).toBe("postgresql")
        // The native tracer's spans keep their events.
        const events =
          (transaction as unknown as { readonly events: ReadonlyArray<readonly [string, ...Array<unknown>]> })
            .events
        expect(events.map(([name]) => name)).toEqual(["db.transaction.commit"])
        const statement = spans.find((span) => span.name === "sql.execute")
        assert.isDefined(statement)
        expect(parentId(statement!)).toBe(transaction!.spanId)
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "ends the sql.transaction span of a transaction that got no connection",
    () =>
      Effect.gen(function*() {
        const held = yield* Deferred.make<void>()
        const entered = yield* Deferred.make<void>()
        const { spans, tracer } = yield* recordingTracer
        const exit = yield* Effect.gen(function*() {
          const unitOfWork = yield* UnitOfWork.UnitOfWork
          // The pool's only connection, held by another transaction.
          const holder = yield* Effect.fork(
            unitOfWork.transactional(Effect.zipRight(Deferred.succeed(entered, undefined), Deferred.await(held)))
          )
          yield* Deferred.await(entered)
          const exit = yield* Effect.exit(unitOfWork.transactional(Effect.void).pipe(Effect.withTracer(tracer)))
          yield* Deferred.succeed(held, undefined)
          yield* Fiber.join(holder)
          yield* everyConnectionBack
          return exit
        }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1, Duration.millis(300))))))
        assert.isTrue(Exit.isFailure(exit))
        const transaction = spans.find((span) => span.name === "sql.transaction")
        assert.isDefined(transaction)
        expect(transaction!.status._tag).toBe("Ended")
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "sends BEGIN with the first statement, and nothing for a transaction that sends none",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        const twice = transactional(Effect.zipRight(insert("a"), insert("b")))
        yield* twice // the pool's one connection has parsed the statement
        const [first, second, last, ...more] = yield* sentDuring(twice)
        expect([first, second === first, last, more]).toEqual([expect.stringMatching(/^INSERT/), true, "COMMIT", []])
        expect(yield* sentDuring(transactional(Effect.void))).toEqual([])
        expect(yield* sentDuring(Effect.exit(transactional(Effect.fail("refused"))))).toEqual([])
        // Rolled back after its first statement: ROLLBACK ends what that statement began.
        const failed = yield* sentDuring(Effect.exit(transactional(Effect.zipRight(insert("c"), Effect.fail("no")))))
        expect(failed.slice(1)).toEqual(["ROLLBACK"])
        expect(yield* rows).toBe(4)
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "sends the writes held for the commit with COMMIT, in one exchange, and commits them",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        const { spans, tracer } = yield* recordingTracer
        // Never parsed on the connection: the exchange parses the held write.
        // The write's span is its caller's child, as a statement sent at once is, and ends with the commit.
        const sent = yield* sentDuring(
          transactional(
            Effect.zipRight(insert("a"), Effect.zipRight(held("b").pipe(Effect.withSpan("caller")), held("c")))
          )
            .pipe(Effect.withTracer(tracer))
        )
        // BEGIN went alone (the INSERT was not parsed yet), then the exchange.
        expect(sent).toEqual(["BEGIN", expect.stringMatching(/^INSERT/), "CommitExchange"])
        expect(yield* notes).toEqual(["a", "b", "c"])
        // Each statement's span, the held ones ended with the commit, under the transaction's.
        const transaction = spans.find((span) => span.name === "sql.transaction")!
        const caller = spans.find((span) => span.name === "caller")!
        const statements = spans.filter((span) => span.name === "sql.execute")
        expect(statements.map((span) => [span.status._tag, parentId(span)])).toEqual([
          ["Ended", transaction.spanId],
          ["Ended", caller.spanId],
          ["Ended", transaction.spanId]
        ])
        // Parsed by the exchange: the next one binds it.
        const again = yield* sentDuring(transactional(Effect.zipRight(insert("d"), held("e"))))
        expect(again).toEqual([expect.stringMatching(/^INSERT/), "CommitExchange"])
        // None held: COMMIT as before.
        expect(yield* sentDuring(transactional(insert("f")))).toEqual([expect.stringMatching(/^INSERT/), "COMMIT"])
        // Nothing sent before it, so no BEGIN yet: a held write runs at once.
        expect(yield* sentDuring(transactional(held("g")))).toEqual([expect.stringMatching(/^INSERT/), "COMMIT"])
        expect(yield* notes).toEqual(["a", "b", "c", "d", "e", "f", "g"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a held write that fails rolls its whole transaction back, and fails as its store says",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        yield* sql.unsafe(`ALTER TABLE ${table} ADD CHECK (note <> 'refused')`)
        yield* transactional(Effect.zipRight(insert("a"), held("b")))
        const refused = transactional(Effect.zipRight(insert("c"), Effect.zipRight(held("d"), held("refused"))))
        const sent = yield* sentDuring(
          Effect.exit(refused).pipe(
            Effect.tap((exit) => Effect.sync(() => expect(exit).toEqual(Exit.fail(new HeldFailed({ code: "23514" })))))
          )
        )
        // The exchange left the transaction open and aborted: rolled back.
        expect(sent).toEqual([expect.stringMatching(/^INSERT/), "CommitExchange", "ROLLBACK"])
        expect(yield* notes).toEqual(["a", "b"])
        yield* everyConnectionBack
        // The connection goes on.
        yield* transactional(Effect.zipRight(insert("e"), held("f")))
        expect(yield* notes).toEqual(["a", "b", "e", "f"])
        // A held write that a later statement sent ahead fails the commit as its own.
        const ahead = yield* Effect.exit(transactional(Effect.gen(function*() {
          yield* insert("g")
          yield* held("refused")
          // Sent after the held write: the transaction it finds is aborted.
          const after = yield* Effect.exit(notes)
          assert.isTrue(Exit.isFailure(after))
        })))
        expect(ahead).toEqual(Exit.fail(new HeldFailed({ code: "23514" })))
        // The same when the later statement's own error (25P02) is what the transaction fails with.
        const through = yield* Effect.exit(transactional(Effect.gen(function*() {
          yield* insert("h")
          yield* held("refused")
          yield* notes
        })))
        expect(through).toEqual(Exit.fail(new HeldFailed({ code: "23514" })))
        expect(yield* notes).toEqual(["a", "b", "e", "f"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a transaction that fails after holding writes sends none of them, and ends their spans",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        const { spans, tracer } = yield* recordingTracer
        const sent = yield* sentDuring(
          Effect.exit(transactional(Effect.zipRight(insert("a"), Effect.zipRight(held("b"), Effect.fail("refused")))))
            .pipe(Effect.withTracer(tracer))
        )
        expect(sent).toEqual(["BEGIN", expect.stringMatching(/^INSERT/), "ROLLBACK"])
        expect(yield* notes).toEqual([])
        const statements = spans.filter((span) => span.name === "sql.execute")
        expect(statements.map((span) => span.status._tag)).toEqual(["Ended", "Ended"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a statement after held writes sends them first: it sees them, in order",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        yield* transactional(Effect.zipRight(insert("warm"), held("warm held")))
        const seen = yield* transactional(Effect.gen(function*() {
          yield* insert("a")
          yield* held("b")
          yield* held("c")
          // An id per row, in the order the rows went in.
          return yield* sql<{ readonly note: string }>`SELECT note FROM ${sql(table)} ORDER BY ctid`
        }))
        expect(seen.map((row) => row.note)).toEqual(["warm", "warm held", "a", "b", "c"])
        expect(yield* notes).toEqual(["a", "b", "c", "warm", "warm held"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "inside a savepoint a write is not held: it goes with the savepoint",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        yield* sql.unsafe(`ALTER TABLE ${table} ADD CHECK (note <> 'refused')`)
        yield* transactional(Effect.zipRight(insert("warm"), held("warm held")))
        yield* transactional(Effect.gen(function*() {
          yield* insert("outer")
          const inner = yield* Effect.exit(transactional(Effect.zipRight(held("inner"), Effect.fail("inner refused"))))
          assert.deepStrictEqual(inner, Exit.fail("inner refused"))
          // Its failure is the savepoint's, which the outer transaction goes past.
          const refused = yield* Effect.exit(transactional(held("refused")))
          expect(refused).toEqual(Exit.fail(new HeldFailed({ code: "23514" })))
          yield* held("outer held")
        }))
        expect(yield* notes).toEqual(["outer", "outer held", "warm", "warm held"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a COMMIT that fails after its held writes fails the transaction, and commits none of it",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* freshTable
        // Checked at COMMIT, so the exchange's COMMIT is what fails.
        yield* sql.unsafe(`ALTER TABLE ${table} ADD UNIQUE (note) DEFERRABLE INITIALLY DEFERRED`)
        yield* transactional(Effect.zipRight(insert("warm"), held("warm held")))
        const exit = yield* Effect.exit(transactional(Effect.zipRight(insert("twice"), held("twice"))))
        assert.isTrue(Exit.isFailure(exit))
        const defect = Exit.isFailure(exit) ? Cause.dieOption(exit.cause) : Option.none()
        assert.isTrue(Option.isSome(defect) && defect.value instanceof SqlError)
        expect(SqlFailure.sqlState(Option.getOrThrow(defect))).toBe("23505")
        expect(yield* notes).toEqual(["warm", "warm held"])
        yield* everyConnectionBack
      }).pipe(Effect.provide(SqlUnitOfWork.layer.pipe(Layer.provideMerge(serverLayer(1)))))
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "uses a PgPool only for the client it was made from",
    () =>
      Effect.gen(function*() {
        yield* freshTable
        // Another client's pool, ended: were it used, every transaction would fail.
        const other = yield* Effect.scoped(
          Effect.flatMap(Layer.build(serverLayer(1)), (context) => Effect.succeed(Layer.succeedContext(context)))
        )
        const stale = yield* Effect.provide(SqlUnitOfWork.PgPool, other)
        const unitOfWork = yield* SqlUnitOfWork.make.pipe(Effect.provideService(SqlUnitOfWork.PgPool, stale))
        yield* unitOfWork.transactional(insert("kept"))
        expect(yield* rows).toBe(1)
      })
  )
})
