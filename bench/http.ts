/**
 * Orders per second over HTTP: `POST /api/v1/orders` with a fresh
 * `Idempotency-Key` each, 64 connections on loopback, against one fresh
 * PostgreSQL, for
 *
 * (a) the database's limit: the same transaction from a bare `pg` pool,
 *     64 in flight, no HTTP (and pgbench's figure for reference);
 * (b) the reference implementation: Fastify 5 + `@nestjs/cqrs` + `pg`
 *     (`bench/reference/main.ts`);
 * (c) the service (`BENCH_SERVICE_ENTRY`, default `dist/server/main.js`, run
 *     as `npm start` runs it: built, with its node flags),
 *
 * each server a child process, `node --import tsx <entry>`, with its peak
 * RSS. Targets: (c) ≥ 0.6× (a), ≥ 1.0× (b), peak RSS < 200 MB.
 *
 * Run alone with `npx tsx bench/http.ts`, or with every bench through
 * `npm run bench`. Environment: `BENCH_SERVICE_ENTRY`; `BENCH_HTTP_DURATION_S`
 * (10, measured seconds per variant, split over the rounds),
 * `BENCH_HTTP_ROUNDS` (2), `BENCH_HTTP_WARMUP_S` (3, per round);
 * `BENCH_LOG_LEVEL` (warn, the servers' `LOG_LEVEL`); `BENCH_DATABASE_URL`,
 * `BENCH_PG_SETTINGS` (see `lib/postgres.ts`).
 */
import autocannon from "autocannon"
import { SignJWT } from "jose"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { randomBytes, randomUUID } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import * as Postgres from "./lib/postgres.js"
import type { Report, Row } from "./lib/report.js"
import {
  ampleStock,
  bareCreateOrderThroughput,
  openPool,
  percentile,
  type PgbenchResult,
  pgbenchThroughput,
  products,
  randomOrderBody,
  resetTables,
  throughputRow
} from "./sql-baseline.js"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")

// -----------------------------------------------------------------------------
// servers as child processes
// -----------------------------------------------------------------------------

/** An HS256 bearer token as the service expects it: `sub` the user, `roles` its roles. */
export const makeToken = (secret: string, userId: string, roles: ReadonlyArray<string> = []): Promise<string> =>
  new SignJWT({ roles: [...roles] })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(secret))

export interface Server {
  readonly name: string
  readonly url: string
  readonly pid: number
  /** Peak resident set of the server's node process so far (VmHWM), in bytes. */
  readonly peakRss: () => number
  /** The last lines it printed, for error messages. */
  readonly output: () => string
  readonly stop: () => Promise<void>
}

// Servers still running, killed if the bench exits without stopping them.
const running = new Set<ChildProcess>()
let hooked = false
const killAllOnExit = () => {
  if (hooked) return
  hooked = true
  process.on("exit", () => running.forEach((child) => child.kill("SIGKILL")))
  process.on("SIGINT", () => process.exit(130))
  process.on("SIGTERM", () => process.exit(143))
}

const readPeakRss = (pid: number): number => {
  const kb = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]
  if (kb === undefined) throw new Error(`no VmHWM for process ${pid}`)
  return Number(kb) * 1024
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// See the README's Operations: V8's allocation-site pretenuring misjudges
// the service's per-request objects as long-lived.
const noPretenuring = "--no-allocation-site-pretenuring"

/** The node flags of `npm start` (`node <flags> dist/server/main.js`). */
const startFlags = (): Array<string> => {
  const start: string = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).scripts.start
  return start.split(/\s+/).filter((token) => token.startsWith("--"))
}

/**
 * Starts `node --import tsx <entry>` (node itself, no wrapper, so the pid is
 * the server's) and waits until `GET /health/ready` answers 200.
 */
export const startServer = async (options: {
  readonly name: string
  readonly entry: string
  readonly env: Record<string, string>
  readonly readyTimeoutMs?: number
}): Promise<Server> => {
  killAllOnExit()
  const port = await Postgres.freePort()
  // A compiled entry runs as `npm start` runs the service (its node flags
  // read from package.json); a TypeScript one under tsx, as the reference,
  // with the service's V8 tuning (not its heap cap): both on the same engine.
  const args = options.entry.endsWith(".js")
    ? [...startFlags(), options.entry]
    : [...startFlags().filter((flag) => flag === noPretenuring), "--import", "tsx", options.entry]
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { ...process.env, ...options.env, PORT: String(port), HOST: "127.0.0.1" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  running.add(child)
  let output = ""
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000)
  }
  child.stdout!.on("data", keep)
  child.stderr!.on("data", keep)
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  let hasExited = false
  void exited.then(() => {
    hasExited = true
    running.delete(child)
  })

  const stop = async () => {
    if (hasExited) return
    child.kill("SIGTERM")
    if (await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)])) return
    child.kill("SIGKILL")
    await exited
  }
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000)
  for (;;) {
    if (hasExited) throw new Error(`${options.name} exited before it was ready (${child.exitCode}):\n${output}`)
    try {
      if ((await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(1000) })).status === 200) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop()
      throw new Error(`${options.name} not ready within ${options.readyTimeoutMs ?? 60_000} ms:\n${output}`)
    }
    await sleep(100)
  }
  return {
    name: options.name,
    url,
    pid: child.pid!,
    peakRss: () => readPeakRss(child.pid!),
    output: () => output,
    stop
  }
}

/** Stocks every product through `PUT /api/v1/products/{id}/stock`, 16 at a time. */
export const seedThroughApi = async (server: Server, adminToken: string, available: number) => {
  const queue = [...products]
  const worker = async () => {
    for (let productId = queue.pop(); productId !== undefined; productId = queue.pop()) {
      const response = await fetch(`${server.url}/api/v1/products/${productId}/stock`, {
        method: "PUT",
        headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
        body: JSON.stringify({ available })
      })
      if (response.status !== 200) {
        throw new Error(
          `${server.name}: PUT stock of ${productId} answered ${response.status}: ${await response.text()}`
        )
      }
    }
  }
  await Promise.all(Array.from({ length: 16 }, worker))
}

/**
 * Checked before timing: a create answers 201 with a Location, and the same
 * key and body again replays it. Returns what does not hold.
 */
const checkContract = async (server: Server, token: string): Promise<Array<string>> => {
  const problems: Array<string> = []
  const post = (key: string, body: unknown) =>
    fetch(`${server.url}/api/v1/orders`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "idempotency-key": key },
      body: JSON.stringify(body)
    })
  const key = randomUUID()
  const body = randomOrderBody()
  const first = await post(key, body)
  const firstBody = await first.text()
  if (first.status !== 201) {
    throw new Error(`${server.name}: POST /api/v1/orders answered ${first.status}: ${firstBody}`)
  }
  const created = JSON.parse(firstBody) as { readonly order_id?: string; readonly status?: string }
  if (typeof created.order_id !== "string" || created.status !== "created") {
    problems.push(`201 body is ${firstBody}, not { order_id, status: "created" }`)
  }
  if (first.headers.get("location") === null) problems.push("201 without a Location header")
  const again = await post(key, body)
  const againBody = await again.text()
  if (again.status !== 201 || again.headers.get("idempotent-replayed") !== "true" || againBody !== firstBody) {
    problems.push(
      `a repeat with the same key answered ${again.status}, Idempotent-Replayed ` +
        `${again.headers.get("idempotent-replayed")}, ${againBody}`
    )
  }
  const mismatch = await post(key, randomOrderBody())
  await mismatch.text()
  if (mismatch.status !== 422) problems.push(`the same key with another body answered ${mismatch.status}, not 422`)
  return problems.map((problem) => `${server.name}: ${problem}`)
}

// -----------------------------------------------------------------------------
// load
// -----------------------------------------------------------------------------

/** One timed run of load. */
export interface LoadRun {
  /** 201s. */
  readonly orders: number
  /** Every other answer, connection errors and timeouts. */
  readonly failed: number
  readonly durationS: number
  /** 201s in each whole second of the run. */
  readonly perSecond: ReadonlyArray<number>
  /** Every answer's latency, unsorted. */
  readonly latenciesMs: ReadonlyArray<number>
}

/** POSTs orders, each with a fresh Idempotency-Key and random lines, for `durationS`. */
export const loadOrders = (options: {
  readonly url: string
  readonly token: string
  readonly connections: number
  readonly durationS: number
}): Promise<LoadRun> =>
  new Promise((resolve, reject) => {
    const headers = { authorization: `Bearer ${options.token}`, "content-type": "application/json" }
    const perSecond = new Array<number>(Math.floor(options.durationS)).fill(0)
    const latenciesMs: Array<number> = []
    let start = 0
    const instance = autocannon({
      url: options.url,
      connections: options.connections,
      duration: options.durationS,
      requests: [{
        method: "POST",
        path: "/api/v1/orders",
        setupRequest: (request) => ({
          ...request,
          headers: { ...headers, "idempotency-key": randomUUID() },
          body: JSON.stringify(randomOrderBody())
        })
      }]
    }, (error, result) => {
      if (error !== null && error !== undefined) return reject(error)
      const orders = Number(result.statusCodeStats?.["201"]?.count ?? 0)
      resolve({
        orders,
        failed: result.non2xx + result.errors + result.timeouts,
        durationS: result.duration,
        perSecond,
        latenciesMs
      })
    })
    instance.on("start", () => {
      start = performance.now()
    })
    instance.on("response", (_client, statusCode, _bytes, responseTime) => {
      latenciesMs.push(responseTime)
      const second = Math.floor((performance.now() - start) / 1000)
      if (statusCode === 201 && second < perSecond.length) perSecond[second]!++
    })
  })

/** A variant's figures over every round. */
export interface Figures {
  readonly ordersPerSecond: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly failed: number
  readonly perSecond: ReadonlyArray<number>
}

export interface ServerFigures extends Figures {
  /** The highest peak RSS of the server's processes, one per round. */
  readonly peakRss: number
}

const combine = (runs: ReadonlyArray<LoadRun>): Figures => {
  const latencies = runs.flatMap((run) => run.latenciesMs).sort((a, b) => a - b)
  const orders = runs.reduce((sum, run) => sum + run.orders, 0)
  return {
    ordersPerSecond: orders / runs.reduce((sum, run) => sum + run.durationS, 0),
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    failed: runs.reduce((sum, run) => sum + run.failed, 0),
    perSecond: runs.flatMap((run) => run.perSecond)
  }
}

const countOrders = async (url: string, userId: string): Promise<number> => {
  const pool = openPool(url, 1)
  try {
    const { rows } = await pool.query<{ readonly n: string }>(
      "SELECT count(*) AS n FROM orders WHERE user_id = $1",
      [userId]
    )
    return Number(rows[0]!.n)
  } finally {
    await pool.end()
  }
}

export interface Options {
  /** Measured time per variant, split over the rounds. */
  readonly durationS: number
  /** Load before each measured run, per round. */
  readonly warmupS: number
  readonly connections: number
  /** Each variant runs once per round; rounds alternate the order (a b c, c b a, …). */
  readonly rounds: number
}

const numberFromEnv = (name: string, fallback: number) => {
  const raw = process.env["BENCH_HTTP_" + name]
  return raw === undefined || raw === "" ? fallback : Number(raw)
}

export const defaultOptions: Options = {
  durationS: numberFromEnv("DURATION_S", 10),
  warmupS: numberFromEnv("WARMUP_S", 3),
  connections: 64,
  rounds: numberFromEnv("ROUNDS", 2)
}

/**
 * One round of a server: a fresh process, stock through its API, the
 * contract checked, warm-up, the measured run, its peak RSS, and a count of
 * the orders it really stored.
 */
const serverRound = async (
  name: string,
  entry: string,
  database: Postgres.Database,
  options: { readonly warmupS: number; readonly durationS: number; readonly connections: number },
  contractProblems: Set<string>
): Promise<LoadRun & { readonly peakRss: number }> => {
  const jwtSecret = randomBytes(32).toString("hex")
  const userId = `bench-${name}-${randomUUID().slice(0, 8)}`
  const server = await startServer({
    name,
    entry,
    env: {
      DATABASE_URL: database.url,
      JWT_SECRET: jwtSecret,
      LOG_LEVEL: process.env["BENCH_LOG_LEVEL"] ?? "warn",
      DB_POOL_SIZE: "20",
      NODE_ENV: "production"
    }
  })
  try {
    const token = await makeToken(jwtSecret, userId)
    await seedThroughApi(server, await makeToken(jwtSecret, `${userId}-admin`, ["admin"]), ampleStock)
    for (const problem of await checkContract(server, token)) contractProblems.add(problem)
    const load = { url: server.url, token, connections: options.connections }
    const warmup = await loadOrders({ ...load, durationS: options.warmupS })
    const measured = await loadOrders({ ...load, durationS: options.durationS })
    const peakRss = server.peakRss()
    if (measured.orders === 0) throw new Error(`${name}: no 201 under load:\n${server.output()}`)
    const stored = await countOrders(database.url, userId)
    const answered = 1 + warmup.orders + measured.orders
    if (stored < answered) contractProblems.add(`${name}: ${answered} answers 201 but ${stored} orders stored`)
    return { ...measured, peakRss }
  } finally {
    await server.stop()
  }
}

// -----------------------------------------------------------------------------
// report
// -----------------------------------------------------------------------------

export interface Target {
  readonly label: string
  /** The measured figure, as printed. */
  readonly actual: string
  readonly pass: boolean
}

export interface HttpReport {
  readonly title: string
  readonly options: Options
  readonly pgbench: PgbenchResult
  readonly bare: Figures
  readonly reference: ServerFigures
  readonly service: ServerFigures | { readonly skipped: string }
  readonly targets: ReadonlyArray<Target>
  readonly notes: ReadonlyArray<string>
}

const ratio = (value: number) => value >= 10 ? `${value.toFixed(1)}×` : `${value.toFixed(2)}×`
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`
const ms = (value: number) => `${value.toFixed(1)} ms`

const labels = (options: Options) => ({
  pgbench: `pgbench -M extended -c ${options.connections} -j 2 (info)`,
  bare: `(a) bare pg pool, ${options.connections} in flight, no HTTP`,
  reference: "(b) reference: Fastify + @nestjs/cqrs + pg",
  service: "(c) service"
})

/** The figures in orders/s with their ratios to (a) and (b), then the targets with their verdicts. */
export const formatDetail = (report: HttpReport): string => {
  const a = report.bare.ordersPerSecond
  const b = report.reference.ordersPerSecond
  const label = labels(report.options)
  const row = (name: string, figures: Figures, peakRss?: number) => [
    name,
    figures.ordersPerSecond.toFixed(0),
    figures === report.bare ? "baseline" : ratio(figures.ordersPerSecond / a),
    figures === report.reference ? "baseline" : ratio(figures.ordersPerSecond / b),
    ms(figures.p50Ms),
    ms(figures.p99Ms),
    String(figures.failed),
    peakRss === undefined ? "" : mb(peakRss)
  ]
  const header = ["variant", "orders/s", "× (a)", "× (b)", "p50", "p99", "non-2xx", "peak RSS"]
  const lines = [
    [label.pgbench, report.pgbench.tps.toFixed(0), ratio(report.pgbench.tps / a), "", "", "", "", ""],
    row(label.bare, report.bare),
    row(label.reference, report.reference, report.reference.peakRss),
    "skipped" in report.service
      ? [`${label.service}: skipped (${report.service.skipped})`, "", "", "", "", "", "", ""]
      : row(label.service, report.service, report.service.peakRss)
  ]
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => line[column]!.length)))
  const align = (cells: ReadonlyArray<string>) =>
    cells.map((cell, column) => column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))
      .join("  ").trimEnd()
  const targetWidth = Math.max(0, ...report.targets.map((target) => target.label.length))
  return [
    report.title,
    "",
    align(header),
    widths.map((width) => "-".repeat(width)).join("  "),
    ...lines.map(align),
    "",
    ...(report.targets.length === 0
      ? ["targets: not checked, no service"]
      : report.targets.map((target) =>
        `${target.label.padEnd(targetWidth)}  ${target.pass ? "PASS" : "FAIL"}  ${target.actual}`
      )),
    "",
    ...report.notes.map((note) => `- ${note}`)
  ].join("\n")
}

// -----------------------------------------------------------------------------
// run
// -----------------------------------------------------------------------------

const progress = (message: string) => process.stderr.write(`[bench/http] ${message}\n`)

/**
 * Runs pgbench once, then (a), (b) and (c) once per round against one fresh
 * PostgreSQL, the tables emptied before each run, the order reversed every
 * other round so that a drift in the machine's load falls on all of them.
 */
export const measure = async (options: Options = defaultOptions): Promise<HttpReport> => {
  const serviceEntry = process.env["BENCH_SERVICE_ENTRY"] || "dist/server/main.js"
  // Built as `npm start` builds it (`prestart`).
  if (serviceEntry.startsWith("dist/")) execFileSync("npm", ["run", "-s", "build"], { cwd: root, stdio: "inherit" })
  const hasService = existsSync(join(root, serviceEntry))
  if (!hasService) progress(`(c) skipped: ${serviceEntry} does not exist (set BENCH_SERVICE_ENTRY)`)
  const roundS = Math.max(1, Math.round(options.durationS / options.rounds))
  const round = { warmupS: options.warmupS, durationS: roundS, connections: options.connections }
  const database = await Postgres.start()
  try {
    progress(`pgbench, ${roundS} s`)
    await resetTables(database.url)
    const pgbench = await pgbenchThroughput({
      url: database.url,
      clients: options.connections,
      threads: 2,
      durationS: roundS
    })

    const contractProblems = new Set<string>()
    const runs = { bare: [] as Array<LoadRun>, reference: [] as Array<LoadRun>, service: [] as Array<LoadRun> }
    const peakRss = { reference: 0, service: 0 }
    const variants: Array<{ readonly name: keyof typeof runs; readonly run: () => Promise<void> }> = [
      {
        name: "bare",
        run: async () => {
          const result = await bareCreateOrderThroughput({
            url: database.url,
            concurrency: options.connections,
            durationMs: roundS * 1000,
            warmupMs: options.warmupS * 1000,
            withIdempotencyKey: true
          })
          runs.bare.push({ ...result, failed: result.errors, durationS: roundS })
        }
      },
      {
        name: "reference",
        run: async () => {
          const result = await serverRound("reference", "bench/reference/main.ts", database, round, contractProblems)
          runs.reference.push(result)
          peakRss.reference = Math.max(peakRss.reference, result.peakRss)
        }
      },
      ...(hasService
        ? [{
          name: "service" as const,
          run: async () => {
            const result = await serverRound("service", serviceEntry, database, round, contractProblems)
            runs.service.push(result)
            peakRss.service = Math.max(peakRss.service, result.peakRss)
          }
        }]
        : [])
    ]
    for (let index = 0; index < options.rounds; index++) {
      for (const variant of index % 2 === 0 ? variants : [...variants].reverse()) {
        progress(`round ${index + 1}/${options.rounds}: ${variant.name}`)
        await resetTables(database.url)
        await variant.run()
      }
    }

    const bare = combine(runs.bare)
    const reference = { ...combine(runs.reference), peakRss: peakRss.reference }
    const service = hasService
      ? { ...combine(runs.service), peakRss: peakRss.service }
      : { skipped: `${serviceEntry} not found` }
    const targets: Array<Target> = "skipped" in service ? [] : [
      {
        label: "(c) ≥ 0.6× (a) orders/s",
        actual: ratio(service.ordersPerSecond / bare.ordersPerSecond),
        pass: service.ordersPerSecond >= 0.6 * bare.ordersPerSecond
      },
      {
        label: "(c) ≥ 1.0× (b) orders/s",
        actual: ratio(service.ordersPerSecond / reference.ordersPerSecond),
        pass: service.ordersPerSecond >= reference.ordersPerSecond
      },
      { label: "(c) peak RSS < 200 MB", actual: mb(service.peakRss), pass: service.peakRss < 200 * 1024 * 1024 }
    ]
    return {
      title: `http: POST /api/v1/orders, ${options.connections} connections, ${options.rounds} × ${roundS} s ` +
        `per variant (${options.warmupS} s warm-up each), one PostgreSQL 15`,
      options,
      pgbench,
      bare,
      reference,
      service,
      targets,
      notes: [
        ...[...contractProblems].map((problem) => `CONTRACT: ${problem}`),
        "Each request: a valid HS256 JWT, a fresh Idempotency-Key, 2 lines (one product from each half of " +
        "1000, stocked with 1e9 through PUT /api/v1/products/{id}/stock), so the full 7-statement transaction " +
        "runs every time. orders/s counts 201s only; non-2xx counts every other answer, errors and timeouts; " +
        "p50/p99 are over every answer.",
        "(a) is the same transaction from a bare pg pool (bench/sql-baseline.ts), its statements prepared as " +
        "the service's are (PgPreparedClient); (b) sends them unnamed, pg's default; pgbench runs " +
        "bench/pgbench/create-order.sql. Servers: the service as `npm start` runs it (built, `node <flags> dist/server/main.js`), the reference under tsx, a fresh process each round, " +
        "LOG_LEVEL=warn, DB_POOL_SIZE=20, NODE_ENV=production; peak RSS is the highest VmHWM of the server " +
        "process after a round (warm-up included).",
        "Tables emptied before every run; rounds alternate the order (a b c, c b a). Checked every round: " +
        "201 + Location, a replay with Idempotent-Replayed: true, 422 on a reused key, and as many orders " +
        "stored as 201s answered.",
        "autocannon (in this process), the servers and PostgreSQL share the machine's cores, as do the " +
        "ratios: compare ratios, not absolute figures, across machines."
      ]
    }
  } finally {
    await database.stop()
  }
}

/** (c) ≥ 0.6× (a) in orders/s is (c) ≤ 1/0.6 of (a) in time per order. */
const maxTimeRatioOfBare = 1.67

/**
 * The same figures as a `Report` for `bench/run.ts`: time per created order
 * (1 / orders per second), so "× baseline" and the targets read as in every
 * other bench (lower is better); orders/s, latency and memory in the notes.
 */
export const toReport = (report: HttpReport): Report => {
  const label = labels(report.options)
  const rows: Array<Row> = [
    throughputRow("pgbench", label.pgbench, report.pgbench.tps, report.pgbench.perSecond),
    throughputRow("bare", label.bare, report.bare.ordersPerSecond, report.bare.perSecond),
    throughputRow("reference", label.reference, report.reference.ordersPerSecond, report.reference.perSecond)
  ]
  const figures = (result: Figures, peakRss?: number) =>
    `${result.ordersPerSecond.toFixed(0)} orders/s, p50 ${ms(result.p50Ms)}, p99 ${ms(result.p99Ms)}, ` +
    `${result.failed} non-2xx${peakRss === undefined ? "" : `, peak RSS ${mb(peakRss)}`}`
  const notes = [
    `pgbench: ${report.pgbench.tps.toFixed(0)} tps`,
    `(a) bare: ${figures(report.bare)}`,
    `(b) reference: ${figures(report.reference, report.reference.peakRss)}`
  ]
  if ("skipped" in report.service) {
    notes.push(`(c) service: skipped, ${report.service.skipped}; set BENCH_SERVICE_ENTRY to bench another entry`)
  } else {
    const service = report.service
    rows.push(
      throughputRow("service", label.service, service.ordersPerSecond, service.perSecond, {
        of: "bare",
        maxRatio: maxTimeRatioOfBare
      }),
      throughputRow(
        "service-vs-reference",
        `${label.service}, against (b)`,
        service.ordersPerSecond,
        service.perSecond,
        {
          of: "reference",
          maxRatio: 1
        }
      )
    )
    notes.push(
      `(c) service: ${figures(service, service.peakRss)}`,
      `Targets in orders/s: ${
        report.targets.map((target) => `${target.label}: ${target.pass ? "PASS" : "FAIL"} ${target.actual}`).join("; ")
      } (≥ 0.6× and ≥ 1.0× in orders/s are ≤ ${maxTimeRatioOfBare}× and ≤ 1× in time per order).`
    )
  }
  return {
    title: `${report.title}: time per created order (1 / orders per second)`,
    baseline: "bare",
    rows,
    notes: [
      ...notes,
      ...report.notes,
      "median: the whole measured time; min – max: the fastest and slowest 1-second window."
    ]
  }
}

/** Prints the table in orders/s and returns the same figures as a `Report`. */
export const run = async (options: Options = defaultOptions): Promise<Report> => {
  const report = await measure(options)
  console.log(`${formatDetail(report)}\n`)
  return toReport(report)
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { format } = await import("./lib/report.js")
  console.log(format(await run()))
}
