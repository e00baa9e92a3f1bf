/**
 * The unit of work on `sql.withTransaction` (an `@effect/sql-pg` client
 * without `SqlUnitOfWork.PgPool`): a savepoint a forked fiber began in a
 * transaction must not write once that transaction's work is done, as on
 * the pool's own connections and on PGlite. Needs a server.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { UnitOfWork } from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const table = `uow_forked_tx_${process.pid}`

// One connection: the transaction that follows the outer one gets its client.
const Shared = SqlUnitOfWork.layer.pipe(
  Layer.provideMerge(
    PgClient.layer({ url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused"), maxConnections: 1 })
  )
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

/**
 * A transaction that inserts "outer" and forks a savepoint that waits, then
 * runs `late`: the fiber of that savepoint, and what lets it go on.
 */
const forkedStraddling = <E>(late: Effect.Effect<void, E, SqlClient.SqlClient>) =>
  Effect.gen(function*() {
    const unitOfWork = yield* UnitOfWork.UnitOfWork
    const started = yield* Deferred.make<void>()
    const ended = yield* Deferred.make<void>()
    const forked = yield* unitOfWork.transactional(Effect.gen(function*() {
      yield* insert("outer")
      const fiber = yield* Effect.forkDaemon(unitOfWork.transactional(Effect.gen(function*() {
        yield* Deferred.succeed(started, undefined)
        yield* Deferred.await(ended)
        yield* late
      })))
      yield* Deferred.await(started)
      return fiber
    }))
    return { forked, goOn: Deferred.succeed(ended, undefined) }
  })

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })("unit of work on withTransaction", (it) => {
  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a savepoint a forked fiber began in a transaction fails once that transaction's work is done",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql.unsafe(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (note text NOT NULL)`)
        const unitOfWork = yield* UnitOfWork.UnitOfWork
        const { forked, goOn } = yield* forkedStraddling(Effect.asVoid(insert("forked")))
        // Another transaction, on the only connection, rolled back.
        const otherIn = yield* Deferred.make<void>()
        const forkedDone = yield* Deferred.make<void>()
        const other = yield* Effect.fork(unitOfWork.transactional(Effect.gen(function*() {
          yield* insert("other")
          yield* Deferred.succeed(otherIn, undefined)
          yield* Deferred.await(forkedDone)
          return yield* Effect.fail("roll back")
        })))
        yield* Deferred.await(otherIn)
        yield* goOn
        const exit = yield* Fiber.await(forked)
        yield* Deferred.succeed(forkedDone, undefined)
        yield* Fiber.await(other)
        const left = yield* notes
        yield* sql.unsafe(`DROP TABLE ${table}`)
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(exit))
        expect(left).toEqual(["outer"])
      })
  )

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "a write a forked fiber makes after the transaction ended does not commit on its own",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql.unsafe(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (note text NOT NULL)`)
        const { forked, goOn } = yield* forkedStraddling(
          Effect.zipRight(insert("forked"), Effect.fail("the savepoint rolls back" as const))
        )
        yield* goOn
        const exit = yield* Fiber.await(forked)
        const left = yield* notes
        yield* sql.unsafe(`DROP TABLE ${table}`)
        assert.isTrue(Exit.isFailure(exit), String(exit))
        expect(left).toEqual(["outer"])
      })
  )
})
