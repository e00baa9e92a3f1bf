/**
 * The cost of idempotency per command on each store: a claim plus its
 * completion, 16 commands in flight, on the Redis store beside the
 * PostgreSQL store (the baseline), each on a throwaway server of its own.
 * Info rows: the in-memory store, and a whole dispatch through the bus
 * (idempotency and transaction middleware, a handler that does nothing) on
 * each store.
 *
 * Run alone with `npx tsx bench/idempotency.ts`, or with every bench through
 * `npm run bench`. `BENCH_DATABASE_URL` and `BENCH_REDIS_URL` use existing
 * servers instead.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import {
  Command,
  CommandBus,
  EventPublisher,
  Handler,
  Idempotency,
  Middleware,
  Outbox,
  UnitOfWork
} from "../src/index.js"
import { RedisIdempotencyStore } from "../src/redis/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../src/sql/index.js"
import { measure, type Options, type Variant } from "./lib/measure.js"
import * as Postgres from "./lib/postgres.js"
import * as RedisServer from "./lib/redis.js"
import type { Report, Row } from "./lib/report.js"

/** Commands in flight, as the issue asks. */
const concurrency = 16

export const defaultOptions: Options = { rounds: 10, warmupMs: 1000, batchMs: 300 }

class Touch extends Command.Class<Touch>()("Touch", {
  payload: { n: Schema.Int },
  success: Schema.Struct({ n: Schema.Int }),
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Touch], {
  Touch: (command) => Effect.succeed(Handler.result({ n: command.n }))
}).pipe(CommandBus.withMiddleware(Idempotency.middleware(), Middleware.transaction))

type Services = Idempotency.IdempotencyStore | Outbox.Outbox | UnitOfWork.UnitOfWork

const lease = Duration.minutes(1)
// Short, so the keys a run leaves on a shared Redis go soon.
const retention = Duration.minutes(10)

/** One claim of a fresh key and its completion, as the middleware does them. */
const claimAndComplete = (scope: string, key: string) =>
  Effect.flatMap(
    Idempotency.IdempotencyStore,
    (store) =>
      store.claim({ scope, key, fingerprint: "f", commandType: "Touch", lease, retention }).pipe(
        Effect.flatMap((claim) =>
          claim._tag === "Claimed"
            ? store.complete({
              scope,
              key,
              token: claim.token,
              retention,
              result: { _tag: "Success", value: { n: 1 } }
            })
            : Effect.dieMessage(`fresh key not claimed: ${claim._tag}`)
        ),
        Effect.flatMap((held) => held ? Effect.void : Effect.dieMessage("claim lost"))
      )
  )

let sequence = 0
const run16 = (
  runtime: ManagedRuntime.ManagedRuntime<Services, unknown>,
  op: (key: string) => Effect.Effect<unknown, unknown, Services>
) =>
(n: number) => {
  const first = sequence
  sequence += n
  return runtime.runPromise(
    Effect.forEach(Array.from({ length: n }, (_, i) => `k-${first + i}`), op, { concurrency, discard: true })
  )
}

const variants = (id: string, runtime: ManagedRuntime.ManagedRuntime<Services, unknown>): ReadonlyArray<Variant> => {
  const scope = `bench-${randomUUID()}`
  return [
    { id, batch: run16(runtime, (key) => claimAndComplete(scope, key)) },
    {
      id: `${id}-bus`,
      batch: run16(runtime, (key) => bus.dispatch(new Touch({ n: 1, userId: scope, idempotencyKey: key })))
    }
  ]
}

export const run = async (options: Options = defaultOptions): Promise<Report> => {
  const database = await Postgres.start()
  const redis = await RedisServer.start().catch(async (error) => {
    await database.stop()
    throw error
  })
  const quiet = Logger.minimumLogLevel(LogLevel.Error)
  const sqlRuntime = ManagedRuntime.make(
    Layer.mergeAll(
      SqlOutbox.layer,
      SqlUnitOfWork.layer,
      Layer.effect(Idempotency.IdempotencyStore, SqlIdempotencyStore.make)
    ).pipe(
      Layer.provideMerge(PgClient.layer({ url: Redacted.make(database.url), maxConnections: concurrency })),
      Layer.provideMerge(quiet)
    )
  )
  const redisRuntime = ManagedRuntime.make(
    Layer.mergeAll(
      Outbox.layerMemory,
      UnitOfWork.layerNone,
      RedisIdempotencyStore.layer({ url: redis.url, keyPrefix: `bench:${randomUUID()}:` })
    ).pipe(Layer.provide(EventPublisher.layerMemory), Layer.provideMerge(quiet))
  )
  const memoryRuntime = ManagedRuntime.make(
    Layer.mergeAll(
      Outbox.layerMemory,
      UnitOfWork.layerNone,
      Layer.effect(Idempotency.IdempotencyStore, Idempotency.makeMemory)
    ).pipe(Layer.provide(EventPublisher.layerMemory), Layer.provideMerge(quiet))
  )
  try {
    await sqlRuntime.runPromise(
      Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE idempotency_keys`)
    )
    const stats = await measure([
      ...variants("postgres", sqlRuntime as ManagedRuntime.ManagedRuntime<Services, unknown>),
      ...variants("redis", redisRuntime),
      ...variants("memory", memoryRuntime)
    ], options)
    const row = (id: string, label: string): Row => {
      const { batchSize, max, median, min } = stats.get(id)!
      return { id, label, nsPerOp: median, min, max, batchSize }
    }
    return {
      title:
        `idempotency: claim + completion per command, ${concurrency} in flight, median over ${options.rounds} rounds`,
      baseline: "postgres",
      rows: [
        row("postgres", "PostgreSQL store: claim + complete"),
        row("redis", "Redis store: claim + complete"),
        row("memory", "  (info) in-memory store: claim + complete"),
        row("postgres-bus", "  (info) bus dispatch, PostgreSQL store, in a transaction"),
        row("redis-bus", "  (info) bus dispatch, Redis store, no transaction")
      ],
      notes: [
        "Each operation claims a fresh key and completes it with its token: on PostgreSQL the INSERT … ON " +
        "CONFLICT claim and the UPDATE completion of src/sql/SqlIdempotencyStore.ts, each in autocommit; on " +
        "Redis the two Lua scripts of src/redis/RedisIdempotencyStore.ts (EVALSHA) on one ioredis connection.",
        `${concurrency} in flight: Effect.forEach(keys, op, { concurrency: ${concurrency} }) in one ` +
        "ManagedRuntime.runPromise per batch, so time per operation is 1 / throughput. PostgreSQL: a pg pool " +
        `of ${concurrency} connections (@effect/sql-pg).`,
        "Bus rows: CommandBus with Idempotency.middleware() and Middleware.transaction over a handler that " +
        "returns at once: on PostgreSQL BEGIN, the completion and COMMIT join the claim (SqlUnitOfWork); on " +
        "Redis nothing but the two scripts (UnitOfWork.layerNone), as an app whose effects live elsewhere runs.",
        "Throwaway PostgreSQL 15 (default settings, fsync on) and redis-server 7 (no persistence) on " +
        "127.0.0.1, sharing the machine's two cores with the client; min – max are the fastest and slowest round."
      ]
    }
  } finally {
    await Promise.allSettled([sqlRuntime.dispose(), redisRuntime.dispose(), memoryRuntime.dispose()])
    await Promise.allSettled([database.stop(), redis.stop()])
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { format } = await import("./lib/report.js")
  console.log(format(await run()))
}
