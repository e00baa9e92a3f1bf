/**
 * A keyed dispatch inside a raw `sql.withTransaction` savepoint that is
 * itself inside a `UnitOfWork.transactional` savepoint which rolls back,
 * while the outermost transaction commits: the keyed command's writes are
 * gone (the transactional savepoint rolled them back), so its key must not
 * replay a success. Memory store (outside the database).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, EventPublisher, Handler, Idempotency, UnitOfWork } from "../../src/index.js"
import { SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Reserve extends Command.Class<Reserve>()("Reserve", {
  payload: { sku: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Checkout extends Command.Class<Checkout>()("Checkout", {
  payload: {},
  success: Schema.Void,
  failure: Schema.Never
}) {}

const table = `raw_in_transactional_${process.pid}`

layer(
  Layer.mergeAll(Idempotency.layerMemory, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
    Layer.provideMerge(EventPublisher.layerMemory),
    Layer.provideMerge(TestDatabase.layer()),
    Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
  ),
  { excludeTestServices: true, timeout: "60 seconds" }
)(`raw savepoint inside a rolled-back transactional (${TestDatabase.kind})`, (it) => {
  it.effect("a keyed dispatch whose enclosing UnitOfWork.transactional rolled back runs again", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (sku text NOT NULL)`)
      const runs = { reserve: 0 }
      const key = `reserve-${Math.random()}`
      const reserve = () => new Reserve({ sku: "apple", userId: "alice", idempotencyKey: key })
      const bus: any = CommandBus.make([Reserve, Checkout], {
        Reserve: (command) =>
          Effect.suspend(() => {
            runs.reserve++
            return Effect.as(
              Effect.orDie(sql`INSERT INTO ${sql(table)} (sku) VALUES (${command.sku})`),
              Handler.result(undefined)
            )
          }),
        Checkout: () =>
          Effect.as(
            Effect.ignore(
              unitOfWork.transactional(
                Effect.zipRight(Effect.orDie(sql.withTransaction(bus.dispatch(reserve()))), Effect.fail("undo"))
              )
            ),
            Handler.result(undefined)
          )
      }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      yield* bus.dispatch(new Checkout({ userId: "alice" }))
      const stored = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
      const again = yield* Idempotency.observeReplay(bus.dispatch(reserve()) as Effect.Effect<void>)
      expect({ stored: stored[0]!.n, replayed: again.replayed, runs: runs.reserve }).toEqual({
        stored: 0,
        replayed: false,
        runs: 2
      })
    }) as Effect.Effect<void, unknown, never>)
})
