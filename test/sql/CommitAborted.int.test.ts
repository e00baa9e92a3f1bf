/**
 * A handler that goes on past a failed statement: PostgreSQL has aborted
 * the transaction, and answers its COMMIT with ROLLBACK and no error. The
 * dispatch must not succeed then, since nothing it wrote was kept; and its
 * idempotency key must be free for a retry. A failure caught inside a nested
 * transaction (a savepoint) leaves the rest to commit.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, Handler, UnitOfWork } from "../../src/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Write extends Command.Class<Write>()("Write", {
  payload: { note: Schema.String, nested: Schema.Boolean },
  success: Schema.Struct({ ok: Schema.Boolean }),
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Write], {
  Write: (command) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO notes (note) VALUES (${command.note})`
      // An optional write whose failure the handler tolerates: a duplicate key.
      const optional = sql`INSERT INTO taken (note) VALUES ('same')`
      yield* Effect.ignore(command.nested ? sql.withTransaction(optional) : optional)
      return Handler.result({ ok: true })
    }).pipe(Effect.orDie)
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))

const Services = Layer.mergeAll(SqlOutbox.layer, SqlUnitOfWork.layer, SqlIdempotencyStore.layer).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
)

layer(Services, { excludeTestServices: true, timeout: "60 seconds" })(
  `a COMMIT that rolls back (${TestDatabase.kind})`,
  (it) => {
    // On a server, both ways a unit of work runs a transaction: on the pool's
    // connections (`SqlUnitOfWork.PgPool`, which the test database provides)
    // and through `@effect/sql`'s `withTransaction` (a client given alone).
    const asProvided = Layer.effect(UnitOfWork.UnitOfWork, UnitOfWork.UnitOfWork)
    const ways: ReadonlyArray<
      readonly [string, Layer.Layer<UnitOfWork.UnitOfWork, never, SqlClient.SqlClient | UnitOfWork.UnitOfWork>]
    > = TestDatabase.serverUrl === undefined
      ? [["the client's transactions", asProvided]]
      : [
        ["the pool's connections", asProvided],
        [
          "withTransaction",
          // Built from the client alone: no pool in sight.
          Layer.effect(
            UnitOfWork.UnitOfWork,
            Effect.flatMap(
              SqlClient.SqlClient,
              (sql) => Effect.mapInputContext(SqlUnitOfWork.make, () => Context.make(SqlClient.SqlClient, sql))
            )
          )
        ]
      ]
    for (const [way, unitOfWork] of ways) {
      it.effect(`fails the dispatch, keeps nothing, and frees the key; a savepoint lets the rest commit (${way})`, () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          yield* sql.unsafe(`
            CREATE TABLE notes (note text NOT NULL);
            CREATE TABLE taken (note text PRIMARY KEY);
            INSERT INTO taken VALUES ('same');`)
          const dispatch = (write: Write) => Effect.provide(bus.dispatch(write), unitOfWork)
          // Nothing else runs in the transaction after the handler: COMMIT tells.
          const lost = yield* Effect.exit(dispatch(new Write({ note: "lost", nested: false, userId: "u" })))
          expect(Exit.isFailure(lost) && Cause.isDie(lost.cause)).toBe(true)
          if (Exit.isFailure(lost)) expect(Cause.pretty(lost.cause)).toContain("rolled back at COMMIT")
          // With a key, its record's statement fails first, in the aborted transaction.
          const keyed = yield* Effect.exit(
            dispatch(new Write({ note: "lost too", nested: false, userId: "u", idempotencyKey: "k-1" }))
          )
          expect(Exit.isFailure(keyed) && Cause.isDie(keyed.cause)).toBe(true)
          expect(yield* sql`SELECT note FROM notes`).toEqual([])
          expect(yield* sql`SELECT state FROM idempotency_keys WHERE key = 'k-1'`).toEqual([])
          // Caught inside a nested transaction, the failure leaves the rest whole.
          const kept = yield* dispatch(new Write({ note: "kept", nested: true, userId: "u", idempotencyKey: "k-1" }))
          expect(kept).toEqual({ ok: true })
          expect(yield* sql`SELECT note FROM notes`).toEqual([{ note: "kept" }])
          yield* sql.unsafe("DROP TABLE notes; DROP TABLE taken; DELETE FROM idempotency_keys")
        }).pipe(Effect.orDie))
    }
  }
)
