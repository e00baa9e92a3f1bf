/**
 * What the fault tests share: when they run, the service's environment and
 * tokens, requests that report "no response" instead of throwing, a
 * bounded retry loop, direct reads of PostgreSQL, and the invariants every
 * scenario checks against the database.
 *
 * The scenarios need the PostgreSQL binaries (each starts a cluster of its
 * own, so it may stop and start it) and run in the server run of `.ci/run`
 * only (`DATABASE_URL` set), so they do not run twice.
 */
import { expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import * as Net from "node:net"
import Pg from "pg"
import * as Auth from "../../src/server/Auth.js"
import * as Postgres from "../support/Postgres.js"
import * as Process from "../support/Process.js"

// -----------------------------------------------------------------------------
// when the scenarios run
// -----------------------------------------------------------------------------

/** Why the fault scenarios are skipped here, or `undefined` when they run. */
export const skipReason: string | undefined = (process.env.DATABASE_URL ?? "").trim() === ""
  ? "the fault suite runs in the server run only: DATABASE_URL is unset"
  : Postgres.unavailableReason()

/**
 * A scenario's describe title, carrying the reason of a skip; a skip is also
 * said on stdout, which reporters show even for a file that ran nothing.
 */
export const title = (name: string): string => {
  if (skipReason === undefined) return name
  console.log(`[faults] ${name.replace(/^faults: /, "")}: skipped (${skipReason})`)
  return `${name} (skipped: ${skipReason})`
}

/** One summary line per scenario, easy to grep in CI output. */
export const report = (scenario: string, figures: Readonly<Record<string, string | number>>) =>
  console.log(
    `[faults] ${scenario}: ${Object.entries(figures).map(([name, value]) => `${name}=${value}`).join(" ")}`
  )

// -----------------------------------------------------------------------------
// the service
// -----------------------------------------------------------------------------

export const jwtSecret = "fault-tests-secret-fault-tests-secret-0123456789"
const secret = new TextEncoder().encode(jwtSecret)

/** The service's environment, on `databaseUrl`'s public schema. */
export const serviceEnv = (
  databaseUrl: string,
  extra: Record<string, string> = {}
): Record<string, string | undefined> => ({
  DATABASE_URL: databaseUrl,
  DATABASE_SCHEMA: undefined,
  IDEMPOTENCY_STORE: "postgres",
  HOST: "127.0.0.1",
  LOG_LEVEL: "warn",
  JWT_SECRET: jwtSecret,
  ...extra
})

// Services still running, killed if the test process exits without closing
// their scope (a worker torn down on a timeout, Ctrl-C).
const services = new Set<Process.ServiceProcess>()
let hooked = false
const killAllOnExit = () => {
  if (hooked) return
  hooked = true
  process.on("exit", () =>
    services.forEach((service) => {
      try {
        // The service runs in a process group of its own.
        process.kill(-service.child.pid!, "SIGKILL")
      } catch {
        service.child.kill("SIGKILL")
      }
    }))
}

/** Spawns the service; killed (SIGKILL) when the scope closes, whatever happened to it meanwhile. */
export const spawn = (env: Record<string, string | undefined>) =>
  Effect.acquireRelease(
    Effect.tap(Process.spawnService(env, { timeoutMs: 60_000 }), (service) =>
      Effect.sync(() => {
        killAllOnExit()
        services.add(service)
      })),
    (service) =>
      Effect.ensuring(
        Process.stop(service, "SIGKILL", 5_000),
        Effect.sync(() => services.delete(service))
      )
  )

/** The resident memory of a process in MiB (`VmRSS`), if it runs. */
export const rssMiB = (pid: number | undefined): number | undefined => {
  if (pid === undefined) return undefined
  try {
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]
    return kb === undefined ? undefined : Number(kb) / 1024
  } catch {
    return undefined
  }
}

const tokens = new Map<string, Promise<string>>()

/** A token for `sub` (admin: roles ["admin"]), signed with the service's secret; cached. */
export const token = (sub: string, options: { readonly admin?: boolean } = {}): Promise<string> => {
  const id = `${sub}\u0000${options.admin === true}`
  let signed = tokens.get(id)
  if (signed === undefined) {
    signed = Auth.sign({ secret, sub, roles: options.admin === true ? [Auth.adminRole] : [], expiresIn: "2h" })
    tokens.set(id, signed)
  }
  return signed
}

// -----------------------------------------------------------------------------
// a partition
// -----------------------------------------------------------------------------

/**
 * A TCP proxy on loopback to the PostgreSQL server at `target`, and `url`,
 * `target` through it. `freeze()` stops forwarding both ways and keeps every
 * connection open (one made meanwhile is accepted and not answered), as a
 * network partition or a frozen server does; `unfreeze()` forwards again, on
 * every connection. Closed with the scope. With `socketDir`, it listens on
 * a Unix socket there instead, port 5432's, and `url` names that directory.
 */
export const frozenProxy = (target: string, options: { readonly socketDir?: string } = {}) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const upstreamUrl = new URL(target)
      let frozen = false
      const pairs = new Set<{ client: Net.Socket; upstream: Net.Socket; piped: boolean }>()
      const server = Net.createServer((client) => {
        const upstream = Net.connect(Number(upstreamUrl.port || 5432), upstreamUrl.hostname)
        const pair = { client, upstream, piped: !frozen }
        pairs.add(pair)
        if (frozen) client.pause()
        else {
          client.pipe(upstream)
          upstream.pipe(client)
        }
        const end = () => {
          client.destroy()
          upstream.destroy()
          pairs.delete(pair)
        }
        client.on("error", end).on("close", end)
        upstream.on("error", end).on("close", end)
      })
      const url = new URL(target)
      if (options.socketDir === undefined) {
        await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
        url.host = `127.0.0.1:${(server.address() as Net.AddressInfo).port}`
      } else {
        await new Promise<void>((resolve) => server.listen(`${options.socketDir}/.s.PGSQL.5432`, resolve))
        url.port = "5432"
        url.searchParams.set("host", options.socketDir)
      }
      return {
        url: url.toString(),
        freeze: () => {
          frozen = true
          for (const pair of pairs) {
            pair.client.unpipe(pair.upstream)
            pair.upstream.unpipe(pair.client)
            pair.client.pause()
            pair.upstream.pause()
            pair.piped = false
          }
        },
        unfreeze: () => {
          frozen = false
          for (const pair of pairs) {
            if (!pair.piped) {
              pair.client.pipe(pair.upstream)
              pair.upstream.pipe(pair.client)
              pair.piped = true
            }
            pair.client.resume()
            pair.upstream.resume()
          }
        },
        close: () => {
          server.close()
          for (const { client, upstream } of pairs) {
            client.destroy()
            upstream.destroy()
          }
        }
      }
    }),
    (proxy) => Effect.sync(proxy.close)
  )

// -----------------------------------------------------------------------------
// requests
// -----------------------------------------------------------------------------

export type Outcome =
  | {
    readonly _tag: "Reply"
    readonly status: number
    readonly headers: Headers
    readonly text: string
    readonly body: any
  }
  | { readonly _tag: "NoResponse"; readonly reason: string }

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * One request, bounded in time. A connection refused or reset, or a reply
 * cut off, is `NoResponse`: a client cannot tell whether it was processed.
 */
export const send = async (
  baseUrl: string,
  method: string,
  path: string,
  options: {
    readonly token?: string
    readonly json?: unknown
    readonly idempotencyKey?: string | undefined
    readonly timeoutMs?: number
  } = {}
): Promise<Outcome> => {
  const headers: Record<string, string> = {}
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`
  if (options.json !== undefined) headers["content-type"] = "application/json"
  if (options.idempotencyKey !== undefined) headers["idempotency-key"] = options.idempotencyKey
  try {
    const response = await fetch(`${baseUrl}${path}`, {
      method,
      headers,
      signal: AbortSignal.timeout(options.timeoutMs ?? 15_000),
      ...(options.json === undefined ? {} : { body: JSON.stringify(options.json) })
    })
    const text = await response.text()
    return { _tag: "Reply", status: response.status, headers: response.headers, text, body: parse(text) }
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause
    return { _tag: "NoResponse", reason: cause?.code ?? cause?.message ?? String(error) }
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Runs `work` on every item with at most `concurrency` at once. */
export const pool = async <A>(
  items: ReadonlyArray<A>,
  concurrency: number,
  work: (item: A) => Promise<void>
): Promise<void> => {
  let next = 0
  const worker = async () => {
    while (next < items.length) await work(items[next++]!)
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker))
}

/** A small deterministic generator, so a failing run can be told apart from bad luck. */
export const random = (seed: number) => {
  let state = seed >>> 0
  return (below: number) => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    return state % below
  }
}

// -----------------------------------------------------------------------------
// orders
// -----------------------------------------------------------------------------

export interface Line {
  readonly product_id: string
  readonly quantity: number
}

/**
 * One create-order request a client means to get through. Its customer id
 * is its own, so the orders it produced can be counted in the database
 * whatever their ids.
 */
export interface CreateRequest {
  readonly key: string | undefined
  readonly user: string
  readonly customerId: string
  readonly items: ReadonlyArray<Line>
}

export const createRequest = (key: string | undefined, user: string, items: ReadonlyArray<Line>): CreateRequest => ({
  key,
  user,
  customerId: randomUUID(),
  items
})

const address = { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }

export const sendCreate = async (baseUrl: string, request: CreateRequest, timeoutMs?: number): Promise<Outcome> =>
  send(baseUrl, "POST", "/api/v1/orders", {
    token: await token(request.user),
    json: { customer_id: request.customerId, items: request.items, shipping_address: address },
    idempotencyKey: request.key,
    ...(timeoutMs === undefined ? {} : { timeoutMs })
  })

export const setStock = async (baseUrl: string, productId: string, available: number) => {
  const outcome = await send(baseUrl, "PUT", `/api/v1/products/${productId}/stock`, {
    token: await token("admin", { admin: true }),
    json: { available }
  })
  if (outcome._tag !== "Reply" || outcome.status !== 200) {
    throw new Error(`setting the stock of ${productId} failed: ${JSON.stringify(outcome)}`)
  }
}

/** The problem code of a reply, if it is a problem. */
export const codeOf = (outcome: Outcome): string | undefined =>
  outcome._tag === "Reply" && typeof outcome.body?.code === "string" ? outcome.body.code : undefined

/**
 * What is wrong with a 503, if anything: it must be problem+json with
 * `status` 503, a code, and `Retry-After`.
 */
export const badUnavailable = (outcome: Outcome): string | undefined => {
  if (outcome._tag !== "Reply" || outcome.status !== 503) return undefined
  const problems: Array<string> = []
  if (!/^application\/problem\+json\b/.test(outcome.headers.get("content-type") ?? "")) {
    problems.push(`content-type ${outcome.headers.get("content-type")}`)
  }
  if (outcome.body?.status !== 503) problems.push(`body.status ${outcome.body?.status}`)
  if (typeof outcome.body?.code !== "string") problems.push("no code")
  if (!/^\d+$/.test(outcome.headers.get("retry-after") ?? "")) problems.push("no Retry-After")
  return problems.length === 0 ? undefined : `503 ${problems.join(", ")}: ${outcome.text.slice(0, 200)}`
}

/** Whether a client should send the same request again (same key): no answer, an outage, or a claim in flight. */
export const isRetryable = (outcome: Outcome): boolean =>
  outcome._tag === "NoResponse" || outcome.status === 503 ||
  (outcome.status === 409 && codeOf(outcome) === "IdempotencyKeyInFlight")

/** What a client saw for its requests, counted. */
export class Tally {
  sent = 0
  created = 0
  replayed = 0
  noResponse = 0
  unavailable = 0
  timedOut = 0
  inFlight = 0
  insufficient = 0
  retries = 0
  readonly unexpected: Array<string> = []
  /** Every 201 seen: the order id per customer id (one per request). */
  readonly acknowledged = new Map<string, string>()
  /** 201s that named another order than an earlier 201 for the same request. */
  readonly conflicting: Array<string> = []

  /** Takes in another tally's 201s, for invariants over several runs. */
  absorb(other: Tally) {
    for (const [customerId, orderId] of other.acknowledged) {
      const earlier = this.acknowledged.get(customerId)
      if (earlier !== undefined && earlier !== orderId) {
        this.conflicting.push(`${customerId}: ${earlier} then ${orderId}`)
      }
      this.acknowledged.set(customerId, orderId)
    }
    this.conflicting.push(...other.conflicting)
  }

  record(request: CreateRequest, outcome: Outcome) {
    this.sent++
    if (outcome._tag === "NoResponse") {
      this.noResponse++
      return
    }
    const code = codeOf(outcome)
    if (outcome.status === 201) {
      this.created++
      if (outcome.headers.get("idempotent-replayed") === "true") this.replayed++
      const orderId = String(outcome.body?.order_id)
      const earlier = this.acknowledged.get(request.customerId)
      if (earlier !== undefined && earlier !== orderId) {
        this.conflicting.push(`${request.key}: ${earlier} then ${orderId}`)
      }
      this.acknowledged.set(request.customerId, orderId)
    } else if (outcome.status === 503) {
      if (code === "CommandTimeout") this.timedOut++
      else this.unavailable++
      const bad = badUnavailable(outcome)
      if (bad !== undefined) this.unexpected.push(bad)
    } else if (outcome.status === 409 && code === "IdempotencyKeyInFlight") {
      this.inFlight++
    } else if (outcome.status === 409 && code === "InsufficientInventory") {
      this.insufficient++
    } else {
      this.unexpected.push(`${outcome.status} ${outcome.text.slice(0, 200)}`)
    }
  }
}

/**
 * Sends `request` until it gets a final answer (anything `isRetryable` is
 * not), pausing as `Retry-After` says (or `backoffMs`), until `deadline`.
 * Returns the final outcome, or the last one when the deadline passed.
 */
export const sendUntilFinal = async (
  baseUrl: () => string,
  request: CreateRequest,
  tally: Tally,
  options: {
    readonly deadline: number
    readonly backoffMs?: number
    readonly firstAttempt?: boolean
    readonly timeoutMs?: number
    /** Sees every outcome as it arrives, with the time its request was sent. */
    readonly observe?: (outcome: Outcome, sentAt: number) => void
  }
): Promise<Outcome> => {
  let attempt = options.firstAttempt === false ? 1 : 0
  for (;;) {
    if (attempt > 0) tally.retries++
    const sentAt = Date.now()
    const outcome = await sendCreate(baseUrl(), request, options.timeoutMs)
    tally.record(request, outcome)
    options.observe?.(outcome, sentAt)
    attempt++
    if (!isRetryable(outcome) || Date.now() >= options.deadline) return outcome
    const retryAfter = outcome._tag === "Reply" ? Number(outcome.headers.get("retry-after") ?? "NaN") : NaN
    const pause = Number.isFinite(retryAfter)
      ? retryAfter * 1000
      : Math.min(1_000, (options.backoffMs ?? 100) * 2 ** Math.min(attempt, 4))
    await sleep(Math.min(pause, Math.max(0, options.deadline - Date.now())))
  }
}

// -----------------------------------------------------------------------------
// the database, read directly
// -----------------------------------------------------------------------------

/** A `pg` client on `url`, closed when the scope closes. */
export const connect = (url: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const client = new Pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 })
      // A server stopped under an idle client: the next query reports it.
      client.on("error", () => {})
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end().catch(() => {}))
  )

export const rows = async <A = Record<string, unknown>>(
  db: Pg.Client,
  text: string,
  values: ReadonlyArray<unknown> = []
): Promise<Array<A>> => (await db.query(text, [...values])).rows as Array<A>

export const count = async (db: Pg.Client, text: string, values: ReadonlyArray<unknown> = []): Promise<number> =>
  Number((await rows<{ n: string | number }>(db, text, values))[0]?.n ?? 0)

/**
 * Waits (bounded) until the relay gave every outbox row its position, and
 * checks positions run 1..N without gap or repeat. Returns how long it took.
 */
export const awaitPublished = async (db: Pg.Client, timeoutMs: number): Promise<number> => {
  const started = Date.now()
  let unpublished = -1
  while (Date.now() - started < timeoutMs) {
    unpublished = await count(db, "SELECT count(*) AS n FROM outbox WHERE position IS NULL")
    if (unpublished === 0) break
    await sleep(100)
  }
  expect(unpublished, `outbox rows still without a position after ${timeoutMs} ms (relay stuck?)`).toBe(0)
  const [positions] = await rows<{ n: string; distinct_positions: string; max: string | null; min: string | null }>(
    db,
    `SELECT count(*) AS n, count(DISTINCT position) AS distinct_positions, max(position) AS max, min(position) AS min
     FROM outbox`
  )
  const n = Number(positions!.n)
  expect(Number(positions!.distinct_positions), "positions repeat").toBe(n)
  if (n > 0) expect([Number(positions!.min), Number(positions!.max)], "positions have gaps").toEqual([1, n])
  return Date.now() - started
}

export interface StoreFigures {
  readonly orders: number
  readonly events: number
  readonly completedKeys: number
  readonly inFlightKeys: number
  readonly stock: Readonly<Record<string, number>>
}

/**
 * The invariants every scenario ends with:
 * - every 201 a client saw names an order in the database;
 * - no request produced two orders (each request has its own customer id);
 * - every order has exactly one `OrderCreated` event, and no event lacks its order;
 * - every completed idempotency record names an existing order, and no two name the same;
 * - stock is the initial stock minus what the orders reserved, never negative.
 */
export const expectConsistent = async (
  db: Pg.Client,
  input: { readonly initialStock: Readonly<Record<string, number>>; readonly tally: Tally }
): Promise<StoreFigures> => {
  const acknowledged = [...input.tally.acknowledged.values()]
  expect(input.tally.conflicting, "201s naming different orders for the same request").toEqual([])
  const missing = await rows<{ id: string }>(
    db,
    `SELECT a.id FROM unnest($1::uuid[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = a.id)`,
    [acknowledged]
  )
  expect(missing.map((row) => row.id), "orders a client saw a 201 for, missing from the database").toEqual([])

  const duplicated = await rows(
    db,
    `SELECT customer_id, count(*) AS orders FROM orders GROUP BY customer_id HAVING count(*) > 1`
  )
  expect(duplicated, "requests that produced more than one order").toEqual([])

  const withoutOneEvent = await rows(
    db,
    `SELECT o.id, count(e.id) AS events FROM orders o
     LEFT JOIN outbox e ON e.aggregate_id = o.id::text AND e.event_type = 'OrderCreated'
     GROUP BY o.id HAVING count(e.id) <> 1`
  )
  expect(withoutOneEvent, "orders without exactly one OrderCreated event").toEqual([])
  const orphanEvents = await rows(
    db,
    `SELECT e.id, e.event_type, e.aggregate_id FROM outbox e
     WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id::text = e.aggregate_id)`
  )
  expect(orphanEvents, "events whose order does not exist").toEqual([])

  const recordsWithoutOrder = await rows(
    db,
    `SELECT k.key, k.result FROM idempotency_keys k
     WHERE k.state = 'completed' AND k.result->>'_tag' = 'Success' AND k.command_type = 'CreateOrder'
       AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id::text = k.result->'value'->>'orderId')`
  )
  expect(recordsWithoutOrder, "idempotency records naming an order that does not exist").toEqual([])
  const sharedRecords = await rows(
    db,
    `SELECT result->'value'->>'orderId' AS order_id, count(*) AS records FROM idempotency_keys
     WHERE state = 'completed' AND result->>'_tag' = 'Success' AND command_type = 'CreateOrder'
     GROUP BY 1 HAVING count(*) > 1`
  )
  expect(sharedRecords, "orders recorded under more than one idempotency key").toEqual([])

  const reserved = new Map(
    (await rows<{ product_id: string; quantity: string }>(
      db,
      `SELECT line->>'productId' AS product_id, sum((line->>'quantity')::int) AS quantity
       FROM orders, jsonb_array_elements(items) AS line WHERE status = 'created' GROUP BY 1`
    )).map((row) => [row.product_id, Number(row.quantity)])
  )
  const stock = Object.fromEntries(
    (await rows<{ product_id: string; available: number }>(db, "SELECT product_id, available FROM inventory"))
      .map((row) => [row.product_id, row.available])
  )
  const expected = Object.fromEntries(
    Object.entries(input.initialStock).map(([product, initial]) => [product, initial - (reserved.get(product) ?? 0)])
  )
  expect(stock, "stock = initial stock - reserved quantities").toEqual(expected)
  for (const [product, available] of Object.entries(stock)) {
    expect(available, `stock of ${product}`).toBeGreaterThanOrEqual(0)
  }

  const keys = new Map(
    (await rows<{ state: string; n: string }>(db, "SELECT state, count(*) AS n FROM idempotency_keys GROUP BY state"))
      .map((row) => [row.state, Number(row.n)])
  )
  return {
    orders: await count(db, "SELECT count(*) AS n FROM orders"),
    events: await count(db, "SELECT count(*) AS n FROM outbox"),
    completedKeys: keys.get("completed") ?? 0,
    inFlightKeys: keys.get("in_flight") ?? 0,
    stock
  }
}
