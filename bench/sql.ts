/**
 * `CreateOrder` through the bus (full middleware, SQL layers, an idempotency
 * key per order) on a real PostgreSQL, at 1, 4 and 16 fibers, beside the
 * same transaction's SQL sent by a bare `pg` pool at the same concurrency:
 * the limit for this stack. Both send their statements as named prepared
 * statements (the bare pool through the same `PgPreparedClient` the service
 * uses); one more run of the bare pool with `pg`'s default unnamed statements
 * is an info row. Then the embedded database (PGlite) at 16.
 *
 * Targets: the bus ≥ 0.7× the bare client at 16 (≤ 1.43× its time per
 * order), the median of 3 alternating rounds of each (`BENCH_SQL_ROUNDS`);
 * the embedded database ≥ 300 orders/s. Also counts the database
 * round trips of one order, by counting the queries the `pg` driver sends.
 *
 * Run alone with `npm run bench -- sql`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import Pg from "pg"
import { CreateOrder } from "../src/orders/Commands.js"
import * as Migrations from "../src/orders/Migrations.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import * as Persistence from "../src/orders/Persistence.js"
import * as Database from "../src/server/Database.js"
import * as PgliteClient from "../src/sql/PgliteClient.js"
import * as Postgres from "./lib/postgres.js"
import type { Report, Row } from "./lib/report.js"
import {
  ampleStock,
  bareCreateOrderThroughput,
  customerId,
  products,
  randomLines,
  resetTables,
  seedInventory,
  shippingAddress,
  type Throughput,
  throughputRow
} from "./sql-baseline.js"

const durationMs = Number(process.env["BENCH_SQL_DURATION_MS"] ?? 5000)
const warmupMs = Number(process.env["BENCH_SQL_WARMUP_MS"] ?? 1000)
const roundsAt16 = Number(process.env["BENCH_SQL_ROUNDS"] ?? 3)

/** The run whose `by` is the median (the lower middle one of an even number). */
const medianBy = <A>(runs: ReadonlyArray<A>, by: (run: A) => number): A =>
  [...runs].sort((a, b) => by(a) - by(b))[(runs.length - 1) >> 1]!

const listed = (runs: ReadonlyArray<{ readonly ordersPerSecond: number }>) =>
  runs.map((run) => run.ordersPerSecond.toFixed(0)).join("/")

const bus = OrderBus.make()

const newOrder = (userId: string, n: number) =>
  new CreateOrder({
    userId,
    customerId,
    items: randomLines(),
    shippingAddress,
    idempotencyKey: `bench-${userId}-${n}`
  })

interface Measured {
  readonly ordersPerSecond: number
  /** This process's CPU time (user + system) in the measured window, per order, in µs. */
  readonly cpuMicrosPerOrder: number
  readonly perSecond: ReadonlyArray<number>
  readonly errors: number
}

/** Dispatches `CreateOrder` from `concurrency` fibers: warm-up, then a measured window. */
const busThroughput = (concurrency: number) =>
  Effect.gen(function*() {
    const userId = `bench-bus-${concurrency}-${Date.now()}`
    let n = 0
    let done = 0
    let errors = 0
    let measuring = false
    let stop = false
    const perSecond: Array<number> = []
    const worker = Effect.gen(function*() {
      while (!stop) {
        // Back to the event loop between orders, as requests arriving over I/O
        // are: PGlite answers on microtasks, and a closed loop of them would
        // starve the timers this bench measures with.
        yield* Effect.async<void>((resume) => void setImmediate(() => resume(Effect.void)))
        const exit = yield* Effect.exit(bus.dispatch(newOrder(userId, n++)))
        if (!measuring) continue
        if (exit._tag === "Success") done++
        else errors++
      }
    })
    const fibers = yield* Effect.forEach(Array.from({ length: concurrency }), () => Effect.fork(worker))
    yield* Effect.sleep(Duration.millis(warmupMs))
    measuring = true
    const cpuFrom = process.cpuUsage()
    const start = Date.now()
    let last = 0
    for (let second = 0; second < Math.round(durationMs / 1000); second++) {
      yield* Effect.sleep("1 second")
      perSecond.push(done - last)
      last = done
    }
    const elapsed = (Date.now() - start) / 1000
    const cpu = process.cpuUsage(cpuFrom)
    stop = true
    yield* Fiber.joinAll(fibers)
    return {
      ordersPerSecond: done / elapsed,
      cpuMicrosPerOrder: (cpu.user + cpu.system) / done,
      perSecond,
      errors
    } satisfies Measured
  })

const seedStock = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql`INSERT INTO inventory (product_id, available)
      SELECT value, ${ampleStock} FROM jsonb_array_elements_text(${JSON.stringify(products)}::jsonb)
      ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available`)

// Migrated and stocked before the stores (and the relay) start, as in the service.
const prepared = <E>(database: Layer.Layer<SqlClient.SqlClient | any, E>) =>
  Layer.effectDiscard(Effect.zipRight(Migrations.run, seedStock)).pipe(Layer.provideMerge(database))

// The relay is off: it publishes after commit, in the background, and the
// bare client it is compared with publishes nothing.
export const runOn = <E>(database: Layer.Layer<SqlClient.SqlClient | any, E>, concurrency: number) =>
  busThroughput(concurrency).pipe(
    Effect.scoped,
    Effect.provide(Persistence.layerSql(false).pipe(Layer.provideMerge(prepared(database)))),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )

/** Queries the `pg` driver sends for one order, claim to commit. */
const roundTripsPerOrder = async (url: string): Promise<number> => {
  let queries = 0
  const query = Pg.Client.prototype.query
  const layer = serverLayer(url, 2)
  return Effect.gen(function*() {
    yield* bus.dispatch(newOrder("bench-count", 0)) // warm: connections open, schema cached
    Pg.Client.prototype.query = function(this: Pg.Client, ...args: Array<any>) {
      queries++
      return (query as any).apply(this, args)
    } as any
    yield* bus.dispatch(newOrder("bench-count", 1))
    Pg.Client.prototype.query = query
    return queries
  }).pipe(
    Effect.scoped,
    Effect.provide(Persistence.layerSql(false).pipe(Layer.provideMerge(prepared(layer)))),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
}

export const serverLayer = (url: string, poolSize: number) =>
  Database.serverLayer({
    url: Redacted.make(url),
    schema: Option.none(),
    poolSize,
    connectTimeout: Duration.seconds(5),
    statementTimeout: Duration.seconds(30)
  })

export const run = async (): Promise<Report> => {
  const rows: Array<Row> = []
  const notes: Array<string> = []
  const database = process.env["BENCH_SQL_EMBEDDED_ONLY"] === "1" ? undefined : await Postgres.start()
  if (database !== undefined) {
    try {
      for (const concurrency of [1, 4, 16]) {
        // At 16, the target's row: rounds alternate which runs first, and the
        // median round of each is reported, so one slow stretch of a shared
        // machine does not decide it.
        const rounds = concurrency === 16 ? roundsAt16 : 1
        const bare: Array<Throughput> = []
        const bus: Array<Measured> = []
        for (let round = 0; round < rounds; round++) {
          const runBare = async () => {
            await resetTables(database.url)
            await seedInventory(database.url)
            bare.push(
              await bareCreateOrderThroughput({
                url: database.url,
                concurrency,
                durationMs,
                warmupMs,
                withIdempotencyKey: true
              })
            )
          }
          const runBus = async () => {
            await resetTables(database.url)
            bus.push(await runOn(serverLayer(database.url, concurrency + 2), concurrency))
          }
          if (round % 2 === 0) {
            await runBare()
            await runBus()
          } else {
            await runBus()
            await runBare()
          }
        }
        const bareMedian = medianBy(bare, (run) => run.ordersPerSecond)
        const busMedian = medianBy(bus, (run) => run.ordersPerSecond)
        rows.push(
          throughputRow(
            `bare-${concurrency}`,
            `bare pg, ${concurrency} in flight`,
            bareMedian.ordersPerSecond,
            bare.flatMap((run) => run.perSecond)
          )
        )
        rows.push(throughputRow(
          `bus-${concurrency}`,
          `bus, full middleware + SQL layers, ${concurrency} fibers`,
          busMedian.ordersPerSecond,
          bus.flatMap((run) => run.perSecond),
          concurrency === 16 ? { of: "bare-16", maxRatio: 1 / 0.7 } : undefined
        ))
        const each = rounds === 1 ? "" : ` (rounds: bare ${listed(bare)}, bus ${listed(bus)}; the median round of each)`
        notes.push(
          `${concurrency} in flight: bare ${
            bareMedian.ordersPerSecond.toFixed(0)
          } orders/s (${bareMedian.errors} errors, ` +
            `Node CPU ${bareMedian.cpuMicrosPerOrder.toFixed(0)} µs/order), bus ${
              busMedian.ordersPerSecond.toFixed(0)
            } ` +
            `orders/s (${busMedian.errors} errors, Node CPU ${busMedian.cpuMicrosPerOrder.toFixed(0)} µs/order)${each}`
        )
      }
      // The limit as it stood before the service prepared its statements: pg's
      // default, every statement unnamed, parsed and planned on each run.
      await resetTables(database.url)
      const unnamed = await bareCreateOrderThroughput({
        url: database.url,
        concurrency: 16,
        durationMs,
        warmupMs,
        withIdempotencyKey: true,
        prepared: false
      })
      rows.push(throughputRow(
        "bare-16-unnamed",
        "bare pg, unnamed statements (pg's default), 16 in flight (info)",
        unnamed.ordersPerSecond,
        unnamed.perSecond
      ))
      notes.push(
        `16 in flight, bare pg with unnamed statements: ${unnamed.ordersPerSecond.toFixed(0)} orders/s ` +
          `(Node CPU ${unnamed.cpuMicrosPerOrder.toFixed(0)} µs/order)`
      )
      await resetTables(database.url)
      const trips = await roundTripsPerOrder(database.url)
      notes.push(`database round trips per order (claim to commit, with an idempotency key): ${trips}`)
    } finally {
      await database.stop()
    }
  }

  const dataDir = mkdtempSync(join(tmpdir(), "bench-pglite-"))
  try {
    const embedded = await runOn(PgliteClient.layer({ dataDir }), 16)
    rows.push({
      id: "target-300",
      label: "300 orders/s (the embedded target)",
      short: "300 orders/s",
      nsPerOp: 1e9 / 300,
      min: 1e9 / 300,
      max: 1e9 / 300,
      batchSize: 1
    })
    rows.push(throughputRow(
      "embedded-16",
      "bus on the embedded database (PGlite), 16 fibers",
      embedded.ordersPerSecond,
      embedded.perSecond,
      { of: "target-300", maxRatio: 1 }
    ))
    notes.push(
      `embedded: ${embedded.ordersPerSecond.toFixed(0)} orders/s (${embedded.errors} errors, ` +
        `Node CPU ${embedded.cpuMicrosPerOrder.toFixed(0)} µs/order, the database included)`
    )
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }

  notes.push(
    "Each order: 2 lines (one product from each half of 1000, stocked far above demand), a fresh idempotency key; " +
      "the bus sends the same 7 statements the bare client does (claim; BEGIN; reserve; insert order; insert " +
      "outbox; complete; COMMIT), BEGIN in the same exchange as reserve, insert order, insert outbox and complete " +
      "in the one of COMMIT (3 round trips; the bare client, `pg` as it is, sends each statement on its own: 7). " +
      "The outbox relay is off, as the bare client publishes nothing: it runs after " +
      "commit, in the background (the HTTP bench runs the service with it on).",
    `Each run: ${warmupMs} ms warm-up, ${durationMs} ms measured, tables emptied first; at 16 in flight, ` +
      `${roundsAt16} rounds alternating which of the two runs first, and the median round of each reported. ` +
      "min – max are the slowest and fastest 1-second windows of all rounds. One machine runs the bench and " +
      "PostgreSQL: compare ratios, not absolute figures."
  )
  return {
    title: "sql: CreateOrder on PostgreSQL 15, time per order (1 / throughput)",
    baseline: database === undefined ? "target-300" : "bare-16",
    rows,
    notes
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { format } = await import("./lib/report.js")
  console.log(format(await run()))
}
