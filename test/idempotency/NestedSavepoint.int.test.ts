/**
 * A keyed command dispatched inside a savepoint that rolls back while the
 * outermost transaction commits: a handler that dispatches another command
 * which dispatches a keyed one and then fails, and goes on past that
 * failure (or runs such a dispatch in a savepoint of its own, made with
 * `UnitOfWork.transactional`, that rolls back). The keyed command's
 * writes rolled back with the savepoint, so its key must not replay a
 * success. Every store; embedded or the server in `DATABASE_URL`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, EventPublisher, Handler, Idempotency, UnitOfWork } from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import * as RedisServer from "./RedisServer.js"

class Refused extends Schema.TaggedError<Refused>()("Refused", {}) {}

class Reserve extends Command.Class<Reserve>()("Reserve", {
  payload: { sku: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Hold extends Command.Class<Hold>()("Hold", {
  payload: { key: Schema.String },
  success: Schema.Void,
  failure: Refused
}) {}

class Checkout extends Command.Class<Checkout>()("Checkout", {
  payload: { key: Schema.String, via: Schema.Literal("dispatch", "savepoint") },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const server = RedisServer.available() ? await RedisServer.start() : undefined
afterAll(() => server?.stop())

const table = `nested_savepoint_${process.pid}`

const run = (via: "dispatch" | "savepoint") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const unitOfWork = yield* UnitOfWork.UnitOfWork
    yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (sku text NOT NULL)`)
    yield* sql.unsafe(`TRUNCATE ${table}`)
    const runs = { reserve: 0 }
    const key = `reserve-${Math.random()}`
    const reserve = () => new Reserve({ sku: "apple", userId: "alice", idempotencyKey: key })
    const bus: any = CommandBus.make([Reserve, Hold, Checkout], {
      Reserve: (command) =>
        Effect.suspend(() => {
          runs.reserve++
          return Effect.as(
            Effect.orDie(sql`INSERT INTO ${sql(table)} (sku) VALUES (${command.sku})`),
            Handler.result(undefined)
          )
        }),
      // Reserves, then refuses: its savepoint rolls the reservation back.
      Hold: () => Effect.zipRight(Effect.orDie(bus.dispatch(reserve())), Effect.fail(new Refused())),
      // Goes on past the refusal, and commits.
      Checkout: (command) =>
        Effect.as(
          command.via === "dispatch"
            ? Effect.ignore(bus.dispatch(new Hold({ key: command.key, userId: "alice" })))
            : Effect.ignore(
              unitOfWork.transactional(Effect.zipRight(Effect.orDie(bus.dispatch(reserve())), Effect.fail("undo")))
            ),
          Handler.result(undefined)
        )
    }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
    yield* bus.dispatch(new Checkout({ key, via, userId: "alice" }))
    const stored = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
    const again = yield* Idempotency.observeReplay(bus.dispatch(reserve()) as Effect.Effect<void>)
    return { stored: stored[0]!.n, replayed: again.replayed, runs: runs.reserve }
  })

const suite = (
  name: string,
  store: Layer.Layer<Idempotency.IdempotencyStore, unknown, SqlClient.SqlClient>
) =>
  layer(
    Layer.mergeAll(store, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
      Layer.provideMerge(EventPublisher.layerMemory),
      Layer.provideMerge(TestDatabase.layer()),
      Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
    ),
    { excludeTestServices: true, timeout: "60 seconds" }
  )(`${name} (${TestDatabase.kind})`, (it) => {
    for (const via of ["dispatch", "savepoint"] as const) {
      it.effect(`a keyed dispatch whose ${via} rolled back while the outermost committed runs again`, () =>
        Effect.gen(function*() {
          const result = yield* run(via) as Effect.Effect<
            { stored: number; replayed: boolean; runs: number },
            unknown,
            any
          >
          // Nothing of the first run was kept; the second ran and was kept.
          expect(result).toEqual({ stored: 0, replayed: false, runs: 2 })
        }) as Effect.Effect<void, unknown, never>)
    }
  })

suite("savepoint rolled back, memory store", Idempotency.layerMemory)
suite("savepoint rolled back, SQL store", SqlIdempotencyStore.layer)
if (server !== undefined) {
  suite("savepoint rolled back, Redis store", RedisIdempotencyStore.layer({ url: server.url }))
} else {
  describe("savepoint rolled back, Redis store", () => {
    it.skip("needs redis-server on PATH", () => {})
  })
}
