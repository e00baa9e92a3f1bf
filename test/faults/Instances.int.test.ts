// Several instances: three service processes on different loopback ports
// over one database, load spread across them. Stock is never oversold, an
// idempotency key sent to several instances at once runs once, and the
// relays of the three publish every event once, without deadlock.
import { describe, expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type Pg from "pg"
import * as Postgres from "../support/Postgres.js"
import type * as Process from "../support/Process.js"
import {
  awaitPublished,
  connect,
  count,
  createRequest,
  expectConsistent,
  isRetryable,
  type Outcome,
  pool,
  report,
  rows,
  send,
  sendCreate,
  sendUntilFinal,
  serviceEnv,
  setStock,
  skipReason,
  sleep,
  spawn,
  Tally,
  title,
  token
} from "./Harness.js"

const instanceCount = 3
const scarce = { product: "multi-scarce", stock: 30, requests: 100 }
const plenty = { product: "multi-plenty", stock: 1_000, keys: 20 }
const concurrency = 32

interface Running {
  readonly cluster: Postgres.Cluster
  readonly services: ReadonlyArray<Process.ServiceProcess>
  readonly db: Pg.Client
  readonly tally: Tally
  readonly startupMs: number
}

class Instances extends Context.Tag("test/faults/Instances")<Instances, Running>() {}

// For the test that may skip at run time, which cannot run as an effect.
let current: Running | undefined

// The three start together on a fresh database, so their migrations race.
const InstancesLive = Layer.scoped(
  Instances,
  Effect.gen(function*() {
    const started = Date.now()
    const cluster = yield* Postgres.scoped()
    const env = serviceEnv(cluster.url)
    const services = yield* Effect.all(Array.from({ length: instanceCount }, () => spawn(env)), {
      concurrency: "unbounded"
    })
    const db = yield* connect(cluster.url)
    const running: Running = { cluster, services, db, tally: new Tally(), startupMs: Date.now() - started }
    current = running
    yield* Effect.addFinalizer(() => Effect.sync(() => current = undefined))
    return running
  })
)

const instanceOf = (running: Running, index: number) => running.services[index % running.services.length]!

describe.skipIf(skipReason !== undefined)(title("faults: several instances"), () => {
  layer(InstancesLive, { timeout: Duration.seconds(90), excludeTestServices: true })((it) => {
    it.effect(
      `oversell: ${scarce.requests} creates of 1 unit over ${scarce.stock} in stock, round-robin over ${instanceCount} instances`,
      () =>
        Effect.gen(function*() {
          const running = yield* Instances
          const started = Date.now()
          yield* Effect.promise(() => setStock(running.services[0]!.baseUrl, scarce.product, scarce.stock))
          const requests = Array.from(
            { length: scarce.requests },
            (_, i) => createRequest(`scarce-${i}`, `user-${i % 10}`, [{ product_id: scarce.product, quantity: 1 }])
          )
          const tally = new Tally()
          const createdPerInstance = Array.from({ length: instanceCount }, () => 0)
          // Stock as the instances report it and as the database has it, sampled while the load runs.
          const samples: Array<number> = []
          let sampling = true
          const sampler = async () => {
            for (let i = 0; sampling; i++) {
              const reply = await send(
                instanceOf(running, i).baseUrl,
                "GET",
                `/api/v1/products/${scarce.product}/stock`,
                {
                  token: await token("observer")
                }
              )
              if (reply._tag === "Reply" && reply.status === 200) samples.push(reply.body.available)
              const [row] = await rows<{ available: number }>(
                running.db,
                "SELECT available FROM inventory WHERE product_id = $1",
                [scarce.product]
              )
              if (row !== undefined) samples.push(row.available)
              await sleep(20)
            }
          }
          yield* Effect.promise(async () => {
            const sampling_ = sampler()
            await pool(requests.map((request, i) => [request, i] as const), concurrency, async ([request, i]) => {
              const outcome = await sendCreate(instanceOf(running, i).baseUrl, request)
              tally.record(request, outcome)
              if (outcome._tag === "Reply" && outcome.status === 201) createdPerInstance[i % instanceCount]!++
            })
            sampling = false
            await sampling_
          })
          running.tally.absorb(tally)

          expect(tally.unexpected, "unexpected answers").toEqual([])
          expect(tally.noResponse + tally.unavailable + tally.timedOut, "requests without a final answer").toBe(0)
          expect(tally.created, "201s").toBe(scarce.stock)
          expect(tally.insufficient, "409 InsufficientInventory").toBe(scarce.requests - scarce.stock)
          expect(Math.min(...samples), "stock seen during the run").toBeGreaterThanOrEqual(0)
          const available = yield* Effect.promise(() =>
            count(running.db, "SELECT available AS n FROM inventory WHERE product_id = $1", [scarce.product])
          )
          expect(available, "stock left").toBe(0)
          const orders = yield* Effect.promise(() =>
            count(running.db, "SELECT count(*) AS n FROM orders WHERE items @> $1::jsonb", [
              JSON.stringify([{ productId: scarce.product }])
            ])
          )
          expect(orders, "orders of the scarce product").toBe(scarce.stock)

          report("instances/oversell", {
            instances: instanceCount,
            startupMs: running.startupMs,
            sent: tally.sent,
            "201s": tally.created,
            "201sPerInstance": createdPerInstance.join("/"),
            "409Insufficient": tally.insufficient,
            stockSamples: samples.length,
            minStockSeen: Math.min(...samples),
            stockLeft: available,
            ordersFound: orders,
            durationMs: Date.now() - started
          })
        }),
      // Includes starting the cluster and the three instances.
      90_000
    )

    it.effect(
      `idempotency: each of ${plenty.keys} keys sent at once to all ${instanceCount} instances runs once`,
      () =>
        Effect.gen(function*() {
          const running = yield* Instances
          const started = Date.now()
          yield* Effect.promise(() => setStock(running.services[1]!.baseUrl, plenty.product, plenty.stock))
          const requests = Array.from(
            { length: plenty.keys },
            (_, i) => createRequest(`race-${i}`, `racer-${i % 4}`, [{ product_id: plenty.product, quantity: 2 }])
          )
          const tally = new Tally()
          const fresh = new Map<string, number>()
          const unresolved: Array<string> = []
          const deadline = Date.now() + 30_000
          yield* Effect.promise(() =>
            pool(requests, 8, async (request) => {
              const first = await Promise.all(running.services.map((service) => sendCreate(service.baseUrl, request)))
              const finals = await Promise.all(first.map(async (outcome, i): Promise<Outcome> => {
                tally.record(request, outcome)
                if (!isRetryable(outcome)) return outcome
                // Sent again to the same instance until the first one's record answers.
                return sendUntilFinal(() => running.services[i]!.baseUrl, request, tally, {
                  deadline,
                  firstAttempt: false
                })
              }))
              for (const outcome of finals) {
                if (
                  outcome._tag === "Reply" && outcome.status === 201 &&
                  outcome.headers.get("idempotent-replayed") !== "true"
                ) {
                  fresh.set(request.customerId, (fresh.get(request.customerId) ?? 0) + 1)
                }
              }
              if (finals.some(isRetryable)) unresolved.push(String(request.key))
            })
          )
          running.tally.absorb(tally)

          expect(tally.unexpected, "unexpected answers").toEqual([])
          expect(unresolved, "keys without a final answer").toEqual([])
          expect(tally.conflicting, "201s naming different orders for the same key").toEqual([])
          // One dispatch ran per key: one fresh 201, the others replays of its record.
          expect(
            requests.map((request) => fresh.get(request.customerId) ?? 0),
            "fresh (not replayed) 201s per key"
          ).toEqual(requests.map(() => 1))
          expect(tally.acknowledged.size, "keys answered 201").toBe(plenty.keys)
          const perKey = yield* Effect.promise(() =>
            rows<{ customer_id: string; orders: string }>(
              running.db,
              `SELECT c.id AS customer_id, count(o.id) AS orders FROM unnest($1::uuid[]) AS c(id)
               LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id`,
              [requests.map((request) => request.customerId)]
            )
          )
          expect(perKey.filter((row) => Number(row.orders) !== 1), "keys without exactly one order").toEqual([])

          report("instances/idempotency", {
            keys: plenty.keys,
            sent: tally.sent,
            "201s": tally.created,
            replayed: tally.replayed,
            "409InFlight": tally.inFlight,
            retries: tally.retries,
            ordersFound: perKey.reduce((sum, row) => sum + Number(row.orders), 0),
            durationMs: Date.now() - started
          })
        })
    )

    it.effect("relay: every event gets its position within a bound, no deadlock, nothing half-written", () =>
      Effect.gen(function*() {
        const running = yield* Instances
        const publishMs = yield* Effect.promise(() => awaitPublished(running.db, 15_000))
        const figures = yield* Effect.promise(() =>
          expectConsistent(running.db, {
            initialStock: { [scarce.product]: scarce.stock, [plenty.product]: plenty.stock },
            tally: running.tally
          })
        )
        expect(figures.orders, "orders = distinct requests answered 201").toBe(running.tally.acknowledged.size)
        expect(figures.events, "events = orders").toBe(figures.orders)
        expect(figures.inFlightKeys, "idempotency claims left in flight").toBe(0)
        const deadlocks = [
          running.cluster.log(),
          ...running.services.map((service) => service.output())
        ].filter((text) => /deadlock detected/i.test(text))
        expect(deadlocks, "deadlocks reported by PostgreSQL or an instance").toEqual([])
        for (const service of running.services) {
          expect(service.child.exitCode, "an instance exited").toBeNull()
        }
        report("instances/relay", {
          orders: figures.orders,
          events: figures.events,
          completedKeys: figures.completedKeys,
          publishWaitMs: publishMs
        })
      }))

    it(
      "each event published once: command_bus_outbox_published_total summed over the instances = outbox rows",
      async (ctx) => {
        const running = current
        if (running === undefined) return ctx.skip("the instances did not start (run the whole file)")
        const admin = await token("admin", { admin: true })
        const scraped = await Promise.all(
          running.services.map((service) => send(service.baseUrl, "GET", "/metrics", { token: admin }))
        )
        const published = scraped.map((reply) => {
          expect(reply._tag === "Reply" && reply.status, `GET /metrics: ${JSON.stringify(reply).slice(0, 300)}`).toBe(
            200
          )
          return publishedTotal(reply._tag === "Reply" ? reply.text : "")
        })
        await awaitPublished(running.db, 15_000)
        const events = await count(running.db, "SELECT count(*) AS n FROM outbox")
        expect(published.reduce((sum, n) => sum + n, 0), `published per instance: ${published.join("/")}`).toBe(events)
        report("instances/published-once", { events, publishedPerInstance: published.join("/") })
      },
      30_000
    )
  })
})

/** The sum of `command_bus_outbox_published_total` samples in a Prometheus text exposition. */
const publishedTotal = (text: string): number =>
  text.split("\n")
    .map((line) => /^command_bus_outbox_published_total(?:\{[^}]*\})?\s+(\S+)/.exec(line)?.[1])
    .filter((value): value is string => value !== undefined)
    .reduce((sum, value) => sum + Number(value), 0)
