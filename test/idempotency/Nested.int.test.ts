/**
 * A handler that dispatches another command with an idempotency key, then
 * fails retryably and is retried: the inner command's writes rolled back
 * with the outer transaction, so its key must not replay a success that
 * never committed. The SQL store records in the transaction; a store outside
 * the database (memory, Redis) records when the outermost transaction
 * commits, and releases the claim when it rolls back. On the real database:
 * embedded (`sql.withTransaction`), or the server in `DATABASE_URL` (the
 * pool's own connections).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import {
  Command,
  CommandBus,
  CommandError,
  EventPublisher,
  Handler,
  Idempotency,
  type Outbox,
  type UnitOfWork
} from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import * as RedisServer from "./RedisServer.js"

class Reserve extends Command.Class<Reserve>()("Reserve", {
  payload: { sku: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Oddity extends Schema.TaggedError<Oddity>()("Oddity", { n: Schema.Number }) {}

class Odd
  extends Command.Class<Odd>()("Odd", { payload: { n: Schema.Number }, success: Schema.Void, failure: Oddity })
{}

class Outer extends Command.Class<Outer>()("Outer", {
  payload: { n: Schema.Number },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Checkout extends Command.Class<Checkout>()("Checkout", {
  payload: { sku: Schema.String, failWith: Schema.Literal("conflict", "declined", "nothing") },
  success: Schema.Void,
  failure: Schema.Union(CommandError.ConcurrencyConflict, Schema.TaggedStruct("Declined", {})),
  retryable: ["ConcurrencyConflict"]
}) {}

const server = RedisServer.available() ? await RedisServer.start() : undefined
afterAll(() => server?.stop())

const table = `nested_reservations_${process.pid}`

/**
 * Checkout reserves through an inner dispatch keyed per checkout, then fails
 * its first attempt as asked; returns how often each ran and what is stored.
 */
const checkout = (failWith: "conflict" | "declined" | "nothing") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (sku text NOT NULL)`)
    yield* sql.unsafe(`TRUNCATE ${table}`)
    const runs = { checkout: 0, reserve: 0 }
    // The handler dispatches on the bus it belongs to.
    const bus: any = CommandBus.make(
      [Reserve, Checkout],
      {
        Reserve: (command) =>
          Effect.suspend(() => {
            runs.reserve++
            return Effect.as(
              Effect.orDie(sql`INSERT INTO ${sql(table)} (sku) VALUES (${command.sku})`),
              Handler.result(undefined)
            )
          }),
        Checkout: (command) =>
          Effect.gen(function*() {
            const attempt = ++runs.checkout
            yield* Effect.orDie(bus.dispatch(
              new Reserve({ sku: command.sku, userId: "alice", idempotencyKey: `reserve:${command.commandId}` })
            ))
            if (attempt === 1 && command.failWith === "conflict") {
              return yield* new CommandError.ConcurrencyConflict({
                aggregateType: "Cart",
                aggregateId: "c",
                expectedVersion: 1
              })
            }
            if (command.failWith === "declined") return yield* Effect.fail({ _tag: "Declined" as const })
            return Handler.result(undefined)
          })
      }
    ).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
    const command = new Checkout({ sku: "apple", failWith, userId: "alice" })
    const exit = yield* Effect.exit(bus.dispatch(command) as Effect.Effect<void, unknown, Services>)
    const stored = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
    // The inner key after the outer ended: taken by a dispatch that committed, free otherwise.
    const again = yield* Idempotency.observeReplay(bus.dispatch(
      new Reserve({ sku: "apple", userId: "alice", idempotencyKey: `reserve:${command.commandId}` })
    ) as Effect.Effect<void, unknown, Services>)
    expect(again.exit._tag).toBe("Success")
    return { exit, runs, stored: stored[0]!.n, replayedAfter: again.replayed }
  })

type Services =
  | Idempotency.IdempotencyStore
  | UnitOfWork.UnitOfWork
  | Outbox.Outbox
  | EventPublisher.EventPublisher
  | SqlClient.SqlClient

const quiet = Logger.minimumLogLevel(LogLevel.Error)

/** What each way of ending the checkout leaves: its exit, the runs, the reservations, the inner key. */
const cases = [
  {
    name: "an outer command retried after a conflict runs its inner command again; one reservation stands",
    failWith: "conflict",
    exit: "Success",
    runs: { checkout: 2, reserve: 2 },
    stored: 1,
    replayedAfter: true
  },
  {
    // Reserve runs once in the checkout, once more afterwards: its key was free.
    name: "an outer command that fails for good leaves its inner command's key free: nothing committed",
    failWith: "declined",
    exit: "Failure",
    runs: { checkout: 1, reserve: 2 },
    stored: 0,
    replayedAfter: false
  },
  {
    name: "an outer command that commits records its inner command's success",
    failWith: "nothing",
    exit: "Success",
    runs: { checkout: 1, reserve: 1 },
    stored: 1,
    replayedAfter: true
  }
] as const

const suite = (
  name: string,
  store: Layer.Layer<Idempotency.IdempotencyStore, unknown, SqlClient.SqlClient>,
  database: Layer.Layer<SqlClient.SqlClient, unknown>
) =>
  layer(
    Layer.mergeAll(store, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
      Layer.provideMerge(EventPublisher.layerMemory),
      Layer.provideMerge(database),
      Layer.provideMerge(quiet)
    ),
    { excludeTestServices: true, timeout: "60 seconds" }
  )(`${name} (${TestDatabase.kind})`, (it) => {
    for (const expected of cases) {
      it.effect(expected.name, () =>
        Effect.gen(function*() {
          const { exit, replayedAfter, runs, stored } = yield* checkout(expected.failWith)
          expect(exit._tag).toBe(expected.exit)
          expect(runs).toEqual(expected.runs)
          expect(stored).toBe(expected.stored)
          expect(replayedAfter).toBe(expected.replayedAfter)
        }))
    }

    // Its failure cannot be recorded (NaN is not JSON): the inner dispatch's
    // own defect, found before anything waits for the outer commit, so the
    // outer one fails and commits nothing; a retry runs it again.
    it.effect("an inner failure that cannot be recorded fails the outer dispatch, which commits nothing", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (sku text NOT NULL)`)
        yield* sql.unsafe(`TRUNCATE ${table}`)
        let outerRuns = 0
        const bus: any = CommandBus.make([Odd, Outer], {
          Odd: () => Effect.fail(new Oddity({ n: NaN })),
          Outer: (command) =>
            Effect.gen(function*() {
              outerRuns++
              yield* Effect.orDie(sql`INSERT INTO ${sql(table)} (sku) VALUES ('outer')`)
              yield* Effect.ignore(
                bus.dispatch(
                  new Odd({ n: 1, userId: "alice", idempotencyKey: `odd:${command.idempotencyKey}` })
                ) as Effect.Effect<
                  void,
                  unknown
                >
              )
              return Handler.result(undefined)
            })
        }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
        const key = `outer-${Math.random()}`
        const first = yield* Effect.exit(
          bus.dispatch(new Outer({ n: 1, userId: "alice", idempotencyKey: key })) as Effect.Effect<
            void,
            unknown,
            Services
          >
        )
        const second = yield* Effect.exit(
          bus.dispatch(new Outer({ n: 1, userId: "alice", idempotencyKey: key })) as Effect.Effect<
            void,
            unknown,
            Services
          >
        )
        const [row] = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
        expect([first._tag, second._tag, outerRuns, row!.n]).toEqual(["Failure", "Failure", 2, 0])
      }))

    // A transaction the unit of work did not begin (the caller's own) has
    // no end it runs: the record is written at once, as outside any.
    it.effect("a keyed dispatch inside the caller's own sql.withTransaction is recorded, and replays", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        let runs = 0
        const bus = CommandBus.make([Reserve], {
          Reserve: () => Effect.sync(() => (runs++, Handler.result(undefined)))
        }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
        const reserve = (key: string) => new Reserve({ sku: "fig", userId: "alice", idempotencyKey: key })
        const key = `own-${Math.random()}`
        yield* sql.withTransaction(bus.dispatch(reserve(key)))
        const again = yield* Idempotency.observeReplay(bus.dispatch(reserve(key)))
        expect(again.exit._tag).toBe("Success")
        expect(again.replayed).toBe(true)
        expect(runs).toBe(1)
      }))
  })

const database = TestDatabase.layer()

suite("nested dispatch, memory store", Idempotency.layerMemory, database)
suite("nested dispatch, SQL store", SqlIdempotencyStore.layer, database)
if (server !== undefined) {
  suite("nested dispatch, Redis store", RedisIdempotencyStore.layer({ url: server.url }), database)
} else {
  describe("nested dispatch, Redis store", () => {
    it.skip("needs redis-server on PATH (apt-get install redis-server)", () => {})
  })
}
