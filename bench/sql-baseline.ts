/**
 * The database's own limit for the service's create-order transaction:
 * the seven statements the service sends (idempotency claim; BEGIN;
 * reserve; insert order; append OrderCreated to the outbox; complete the
 * claim; COMMIT), from a bare `pg` pool with N transactions in flight, and
 * from `pgbench` for reference. No HTTP, no bus: what any stack in front of
 * this database can at best approach.
 *
 * Run alone with `npx tsx bench/sql-baseline.ts`, or with every bench
 * through `npm run bench`. `BENCH_DATABASE_URL` runs it against an existing
 * database instead of a throwaway one.
 */
import { spawn } from "node:child_process"
import { randomInt, randomUUID } from "node:crypto"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import Pg from "pg"
import { PgPreparedClient } from "../src/sql/index.js"
import * as Postgres from "./lib/postgres.js"
import type { Report, Row } from "./lib/report.js"
import { claim, fingerprint, type NewOrder, type OrderLine, placeOrder, type ShippingAddress } from "./reference/sql.js"

// -----------------------------------------------------------------------------
// the workload every create-order bench shares
// -----------------------------------------------------------------------------

/**
 * A catalogue of 1000 products, `sku-1000` to `sku-1999`. Every order takes
 * one unit of one product from each half, so concurrent orders rarely wait
 * on the same inventory row (the bench measures the stack, not a hot row)
 * and lock rows in one order. pgbench's script draws the same way.
 */
export const products: ReadonlyArray<string> = Array.from({ length: 1000 }, (_, i) => `sku-${1000 + i}`)

/** Stock per product, far above what any run can take. */
export const ampleStock = 1_000_000_000

export const customerId = "7d1f5c1e-3b8a-4f0e-9a51-2f6b0c9d4e11"

export const shippingAddress: ShippingAddress = {
  line1: "1 Bench Street",
  city: "Lyon",
  postalCode: "69001",
  country: "FR"
}

export const randomLines = (): Array<OrderLine> => [
  { productId: products[randomInt(0, 500)]!, quantity: 1 },
  { productId: products[randomInt(500, 1000)]!, quantity: 1 }
]

/** The body of `POST /api/v1/orders` for the same workload. */
export const randomOrderBody = () => ({
  customer_id: customerId,
  items: randomLines().map((line) => ({ product_id: line.productId, quantity: line.quantity })),
  shipping_address: {
    line1: shippingAddress.line1,
    city: shippingAddress.city,
    postal_code: shippingAddress.postalCode,
    country: shippingAddress.country
  }
})

/**
 * A `pg` pool; `prepared`: its statements with parameters are named prepared
 * statements, as the service sends them (`PgPreparedClient`, one name per
 * text), so the server parses and plans each once per connection.
 */
export const openPool = (url: string, max: number, prepared = false): Pg.Pool => {
  const pool = new Pg.Pool({ connectionString: url, max, ...(prepared ? { Client: PgPreparedClient.make() } : {}) })
  // An idle connection the server drops (a stop racing pool.end()) must not crash the bench.
  pool.on("error", () => {})
  return pool
}

/**
 * Empties every table the transaction writes, so each measured run starts
 * from the same state and none inherits another's outbox backlog or bloat.
 */
export const resetTables = async (url: string): Promise<void> => {
  const pool = openPool(url, 1)
  try {
    await pool.query("TRUNCATE orders, outbox, idempotency_keys, inventory")
  } finally {
    await pool.end()
  }
}

/** Gives every product `ampleStock`, in one statement. */
export const seedInventory = async (url: string): Promise<void> => {
  const pool = openPool(url, 1)
  try {
    await pool.query(
      `INSERT INTO inventory (product_id, available) SELECT unnest($1::text[]), $2
       ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, updated_at = now()`,
      [products, ampleStock]
    )
  } finally {
    await pool.end()
  }
}

// -----------------------------------------------------------------------------
// bare pg
// -----------------------------------------------------------------------------

export interface ThroughputOptions {
  readonly url: string
  /** Transactions in flight. */
  readonly concurrency: number
  /** Connections in the pool. Default: `concurrency`. */
  readonly poolSize?: number
  /** Measured time, after the warm-up. */
  readonly durationMs: number
  /** Time run before measuring. Default 1 s. */
  readonly warmupMs?: number
  /** With a key: claim first, complete before commit (7 statements); without: 5. */
  readonly withIdempotencyKey: boolean
  /** The scope of the keys and the orders' user. Default "bench-bare". */
  readonly userId?: string
  /** Statements as named prepared statements, as the service sends them. Default true. */
  readonly prepared?: boolean
}

export interface Throughput {
  readonly ordersPerSecond: number
  /** Orders committed in the measured window. */
  readonly orders: number
  /** Transactions that failed in the measured window (none expected). */
  readonly errors: number
  /** Milliseconds per transaction, claim to commit. */
  readonly p50Ms: number
  readonly p99Ms: number
  /** Orders committed in each whole second of the measured window. */
  readonly perSecond: ReadonlyArray<number>
  /** Every committed order's latency in the measured window, sorted. */
  readonly latenciesMs: ReadonlyArray<number>
  /** This process's CPU time (user + system) in the measured window, per order, in µs. */
  readonly cpuMicrosPerOrder: number
}

export const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/**
 * Runs the create-order transaction from a bare `pg` pool, `concurrency`
 * at a time, each with a fresh order id and (if asked) a fresh idempotency
 * key; seeds ample stock first.
 */
export const bareCreateOrderThroughput = async (options: ThroughputOptions): Promise<Throughput> => {
  await seedInventory(options.url)
  const poolSize = Math.min(options.poolSize ?? options.concurrency, options.concurrency)
  const pool = openPool(options.url, poolSize, options.prepared ?? true)
  const userId = options.userId ?? "bench-bare"
  const createOrder = async () => {
    const order: NewOrder = {
      id: randomUUID(),
      customerId,
      userId,
      items: randomLines(),
      shippingAddress,
      correlationId: randomUUID()
    }
    if (!options.withIdempotencyKey) return placeOrder(pool, order)
    const request = {
      scope: userId,
      key: randomUUID(),
      commandType: "CreateOrder",
      fingerprint: fingerprint({ customerId: order.customerId, items: order.items, shippingAddress })
    }
    const claimed = await claim(pool, request)
    if (claimed._tag !== "Claimed") throw new Error(`fresh key not claimed: ${claimed._tag}`)
    return placeOrder(pool, order, {
      request,
      token: claimed.token,
      response: { status: 201, body: { order_id: order.id, status: "created" } }
    })
  }

  try {
    // Open every connection before the clock starts.
    await Promise.all(Array.from({ length: poolSize }, () => pool.query("SELECT 1")))
    const start = performance.now()
    const measureFrom = start + (options.warmupMs ?? 1000)
    const measureUntil = measureFrom + options.durationMs
    const latencies: Array<number> = []
    const perSecond = new Array<number>(Math.floor(options.durationMs / 1000)).fill(0)
    let errors = 0
    let firstError: unknown
    let cpuFrom: NodeJS.CpuUsage | undefined
    let cpuUntil: NodeJS.CpuUsage | undefined
    const cpuMarks = [
      setTimeout(() => cpuFrom = process.cpuUsage(), measureFrom - start),
      setTimeout(() => cpuUntil = process.cpuUsage(cpuFrom), measureUntil - start)
    ]
    const worker = async () => {
      for (;;) {
        const began = performance.now()
        if (began >= measureUntil) return
        let ok = false
        try {
          ok = (await createOrder())._tag === "Created"
        } catch (error) {
          firstError ??= error
        }
        const ended = performance.now()
        if (ended >= measureFrom && ended <= measureUntil) {
          if (ok) {
            latencies.push(ended - began)
            const second = Math.floor((ended - measureFrom) / 1000)
            if (second < perSecond.length) perSecond[second]!++
          } else errors++
        }
      }
    }
    await Promise.all(Array.from({ length: options.concurrency }, worker))
    cpuMarks.forEach(clearTimeout)
    cpuUntil ??= process.cpuUsage(cpuFrom)
    if (latencies.length === 0) throw new Error(`no order committed`, { cause: firstError })
    latencies.sort((a, b) => a - b)
    return {
      ordersPerSecond: latencies.length / (options.durationMs / 1000),
      orders: latencies.length,
      errors,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      perSecond,
      latenciesMs: latencies,
      cpuMicrosPerOrder: (cpuUntil.user + cpuUntil.system) / latencies.length
    }
  } finally {
    await pool.end()
  }
}

// -----------------------------------------------------------------------------
// pgbench
// -----------------------------------------------------------------------------

const pgbenchScript = join(dirname(fileURLToPath(import.meta.url)), "pgbench", "create-order.sql")

export interface PgbenchOptions {
  readonly url: string
  readonly clients: number
  readonly threads?: number
  readonly durationS: number
}

export interface PgbenchResult {
  /** Transactions per second, excluding connection time. */
  readonly tps: number
  /** tps of each second (`-P 1`). */
  readonly perSecond: ReadonlyArray<number>
}

/**
 * `pgbench -M extended` with `bench/pgbench/create-order.sql` (the same
 * seven statements).
 */
export const pgbenchThroughput = async (options: PgbenchOptions): Promise<PgbenchResult> => {
  await seedInventory(options.url)
  const args = [
    "-n",
    "-P",
    "1",
    "-M",
    "extended",
    "-c",
    String(options.clients),
    "-j",
    String(options.threads ?? 2),
    "-T",
    String(options.durationS),
    "-f",
    pgbenchScript,
    "-D",
    "scope=bench-pgbench",
    "-D",
    `customer_id=${customerId}`,
    "-D",
    `fingerprint=${fingerprint({ customerId, items: randomLines(), shippingAddress })}`,
    options.url
  ]
  const child = spawn(join(Postgres.binDir(), "pgbench"), args, { stdio: ["ignore", "pipe", "pipe"] })
  const stop = () => child.kill("SIGINT")
  process.once("exit", stop)
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk))
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk))
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject)
    child.once("close", resolve)
  })
  process.removeListener("exit", stop)
  const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)?.[1]
  const failed = /number of failed transactions: (\d+)/.exec(stdout)?.[1]
  if (code !== 0 || tps === undefined) throw new Error(`pgbench failed (${code}): ${stderr || stdout}`)
  if (failed !== undefined && failed !== "0") throw new Error(`pgbench: ${failed} failed transactions\n${stdout}`)
  const perSecond = [...stderr.matchAll(/^progress: [\d.]+ s, ([\d.]+) tps/gm)].map((match) => Number(match[1]))
  return { tps: Number(tps), perSecond }
}

// -----------------------------------------------------------------------------
// run
// -----------------------------------------------------------------------------

export interface Options {
  readonly durationMs: number
  readonly warmupMs: number
}

export const defaultOptions: Options = { durationMs: 5000, warmupMs: 1000 }

/**
 * A throughput as a `Report` row: time per order is the inverse of
 * throughput, so "× baseline" reads as how many times longer an order takes
 * (lower is better), as in every other bench table.
 */
export const throughputRow = (
  id: string,
  label: string,
  ordersPerSecond: number,
  perSecond: ReadonlyArray<number>,
  target?: Row["target"]
): Row => {
  const seconds = perSecond.length > 0 ? perSecond : [ordersPerSecond]
  return {
    id,
    label,
    nsPerOp: 1e9 / ordersPerSecond,
    min: 1e9 / Math.max(...seconds),
    max: 1e9 / Math.min(...seconds),
    batchSize: 1,
    ...(target === undefined ? {} : { target })
  }
}

export const run = async (options: Options = defaultOptions): Promise<Report> => {
  const database = await Postgres.start()
  try {
    const rows: Array<Row> = []
    const lines: Array<string> = []
    const bare = async (id: string, concurrency: number, withIdempotencyKey: boolean) => {
      await resetTables(database.url)
      const result = await bareCreateOrderThroughput({
        url: database.url,
        concurrency,
        durationMs: options.durationMs,
        warmupMs: options.warmupMs,
        withIdempotencyKey
      })
      const label = `bare pg, ${concurrency} in flight${withIdempotencyKey ? "" : ", no idempotency key"}`
      rows.push(throughputRow(id, label, result.ordersPerSecond, result.perSecond))
      lines.push(
        `${label}: ${result.ordersPerSecond.toFixed(0)} orders/s, p50 ${result.p50Ms.toFixed(2)} ms, ` +
          `p99 ${result.p99Ms.toFixed(2)} ms, ${result.errors} errors`
      )
    }
    const durationS = Math.max(1, Math.round(options.durationMs / 1000))
    await resetTables(database.url)
    const pgbench = await pgbenchThroughput({ url: database.url, clients: 16, threads: 2, durationS })
    rows.push(throughputRow("pgbench-16", "pgbench -M extended -c 16 -j 2", pgbench.tps, pgbench.perSecond))
    lines.push(`pgbench -M extended -c 16 -j 2 -T ${durationS}: ${pgbench.tps.toFixed(0)} tps`)
    await bare("bare-1", 1, true)
    await bare("bare-4", 4, true)
    await bare("bare-16", 16, true)
    await bare("bare-64", 64, true)
    await bare("bare-16-nokey", 16, false)
    return {
      title: "sql-baseline: create-order transaction on PostgreSQL 15, time per order (1 / throughput)",
      baseline: "pgbench-16",
      rows,
      notes: [
        ...lines,
        "One order = idempotency claim (autocommit), BEGIN, reserve 2 lines, INSERT order, INSERT OrderCreated " +
        "into the outbox, complete the claim, COMMIT: the SQL of src/sql/SqlIdempotencyStore.ts, " +
        "src/orders/Inventory.ts, src/orders/OrderRepository.ts and src/sql/SqlOutbox.ts (copied in " +
        "bench/reference/sql.ts); without a key, the claim and its completion are left out.",
        `Tables emptied before each row. Bare pg: a pg.Pool sized to the concurrency, its statements prepared (PgPreparedClient, as the service sends them), N async loops; ` +
        `${options.warmupMs} ms warm-up, then ` +
        `${options.durationMs} ms counted; latency is claim to commit.`,
        "pgbench: bench/pgbench/create-order.sql, the same statements with the per-order values (ids, keys, " +
        "JSON) built in SQL from random numbers, since pgbench variables are numbers only.",
        "A throwaway PostgreSQL 15 on 127.0.0.1 with default settings (fsync on, BENCH_PG_SETTINGS adds more), " +
        "sharing the machine's cores with the client; median is the whole run, min – max its fastest and " +
        "slowest 1-second window."
      ]
    }
  } finally {
    await database.stop()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { format } = await import("./lib/report.js")
  console.log(format(await run()))
}
