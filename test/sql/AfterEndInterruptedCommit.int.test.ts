/**
 * A transaction whose work is done commits even when its fiber is
 * interrupted meanwhile (a client that hangs up): `afterEnd` must say it
 * committed, on `sql.withTransaction` (PGlite, or an `@effect/sql` client
 * without `SqlUnitOfWork.PgPool`) as on the pool's connections and in memory,
 * and the idempotency middleware must then keep the key's success rather
 * than release it for a retry that would run the command twice.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, EventPublisher, Handler, Idempotency, Middleware, UnitOfWork } from "../../src/index.js"
import { SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const table = `after_end_commit_${process.pid}`

class Note extends Command.Class<Note>()("Note", {
  payload: { note: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const freshTable = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql.unsafe(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (note text NOT NULL)`)
)

const rows = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => Effect.map(sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, (found) => found[0]!.n)
)

// The embedded database runs `sql.withTransaction`; the server, the pool's own connections.
const Shared = Layer.mergeAll(Idempotency.layerMemory, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
  Layer.provideMerge(EventPublisher.layerMemory),
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `interrupted in its commit (${TestDatabase.kind})`,
  (it) => {
    // On the server, also through `withTransaction` (a client given alone, no pool in sight).
    const alone = Effect.flatMap(
      SqlClient.SqlClient,
      (sql) => Effect.mapInputContext(SqlUnitOfWork.make, () => Context.make(SqlClient.SqlClient, sql))
    )
    const ways: ReadonlyArray<readonly [string, Effect.Effect<UnitOfWork.Service, never, any>]> =
      TestDatabase.serverUrl === undefined
        ? [["the client's transactions", UnitOfWork.UnitOfWork]]
        : [["the pool's connections", UnitOfWork.UnitOfWork], ["withTransaction", alone]]
    for (const [way, made] of ways) {
      it.effect(`afterEnd is told the transaction committed (${way})`, () =>
        Effect.gen(function*() {
          yield* freshTable
          const sql = yield* SqlClient.SqlClient
          const unitOfWork = yield* made
          const told: Array<boolean> = []
          const done = yield* Deferred.make<void>()
          const fiber = yield* Effect.fork(unitOfWork.transactional(Effect.gen(function*() {
            yield* sql`INSERT INTO ${sql(table)} (note) VALUES ('kept')`
            yield* unitOfWork.afterEnd!((committed) => Effect.sync(() => void told.push(committed)))
            yield* Deferred.succeed(done, undefined)
          })))
          yield* Deferred.await(done)
          const exit = yield* Fiber.interrupt(fiber)
          assert.isTrue(Exit.isInterrupted(exit), String(exit))
          // Told as it ended. Past its work it commits, but for `withTransaction`
          // on a client that does not check COMMIT's answer itself, whose check
          // (a statement after the work) an interruption may still cut.
          const committed = (yield* rows) === 1
          expect(told).toEqual([committed])
          if (way !== "withTransaction") expect(committed).toBe(true)
        }))
    }

    it.effect("a keyed dispatch whose client hung up during its commit replays; it does not run twice", () =>
      Effect.gen(function*() {
        yield* freshTable
        const sql = yield* SqlClient.SqlClient
        const done = yield* Deferred.make<void>()
        let runs = 0
        // The last of the dispatch's work: its commit begins after it.
        const signal = Middleware.make("signal", (self, dispatch) => {
          dispatch.beforeCommit.push(() => Deferred.succeed(done, undefined))
          return self
        })
        const bus = CommandBus.make([Note], {
          Note: (command) =>
            Effect.as(
              Effect.zipRight(
                Effect.sync(() => runs++),
                Effect.orDie(sql`INSERT INTO ${sql(table)} (note) VALUES (${command.note})`)
              ),
              Handler.result(undefined)
            )
        }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware(), signal))
        const note = () => new Note({ note: "once", userId: "alice", idempotencyKey: "k-hang-up" })
        const fiber = yield* Effect.fork(bus.dispatch(note()))
        yield* Deferred.await(done)
        yield* Fiber.interrupt(fiber)
        const again = yield* Idempotency.observeReplay(bus.dispatch(note()))
        expect(yield* rows).toBe(1)
        expect({ runs, replayed: again.replayed }).toEqual({ runs: 1, replayed: true })
      }))
  }
)
