/**
 * The unit of work on a `pg` pool's own connections (`SqlUnitOfWork.PgPool`,
 * which the service's database layer provides): the same transactions as
 * `sql.withTransaction`, with every connection handed back, a broken one
 * destroyed, nesting as savepoints, and the same span. Needs a server.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
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
import { SqlUnitOfWork } from "../../src/sql/index.js"
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
      sent.push(typeof args[0] === "string" ? args[0] : args[0]?.text)
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
