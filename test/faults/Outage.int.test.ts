// Database outage: PostgreSQL stops under load. Requests get 503
// problem+json with Retry-After, readiness turns 503, the process stays up
// with bounded memory; PostgreSQL comes back on the same port and the same
// process serves again, with nothing half-written.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type Pg from "pg"
import * as Postgres from "../support/Postgres.js"
import { isAlive } from "../support/Process.js"
import {
  awaitPublished,
  badUnavailable,
  connect,
  count,
  createRequest,
  expectConsistent,
  isRetryable,
  type Outcome,
  report,
  rssMiB,
  send,
  sendUntilFinal,
  serviceEnv,
  setStock,
  skipReason,
  sleep,
  spawn,
  Tally,
  title
} from "./Harness.js"

const clients = 16
const products = ["outage-a", "outage-b"]
const initialStock = Object.fromEntries(products.map((product) => [product, 100_000]))
// Bounds of the scenario.
const loadBeforeMs = 2_000
const outageMs = 4_000
const noticeWithinMs = 10_000
const recoverWithinMs = 20_000
const loadAfterMs = 2_000
const rssLimitMiB = 400

describe.skipIf(skipReason !== undefined)(title("faults: database outage"), () => {
  it.scoped(
    "PostgreSQL stopped under load: 503 problem+json with Retry-After, readiness 503, recovery without a restart",
    () =>
      Effect.gen(function*() {
        const started = Date.now()
        const cluster = yield* Postgres.scoped()
        // Short database timeouts, so an outage is noticed fast; the lease
        // above the command timeout, so claims orphaned by the outage free
        // their keys soon after.
        const service = yield* spawn(serviceEnv(cluster.url, {
          DB_CONNECT_TIMEOUT: "1 second",
          DB_STATEMENT_TIMEOUT: "2 seconds",
          COMMAND_TIMEOUT: "3 seconds",
          IDEMPOTENCY_LEASE: "4 seconds"
        }))
        const pid = service.child.pid
        yield* Effect.promise(() => Promise.all(products.map((product) => setStock(service.baseUrl, product, 100_000))))

        const tally = new Tally()
        const badAnswers: Array<string> = []
        const unresolved: Array<string> = []
        let stoppedAt: number | undefined
        let downAt: number | undefined
        let restartedAt: number | undefined
        let recoveredAt: number | undefined
        let first503At: number | undefined
        let ready503At: number | undefined
        let createdDuringOutage = 0
        let readyDuringOutage = 0
        let createdAfterRecovery = 0
        let stopping = false
        const hardDeadline = Date.now() + 60_000

        const observe = (outcome: Outcome, sentAt: number) => {
          const now = Date.now()
          if (outcome._tag === "NoResponse") {
            badAnswers.push(`no response: ${outcome.reason}`)
            return
          }
          if (outcome.status === 503 && stoppedAt !== undefined && first503At === undefined) first503At = now
          if (outcome.status === 201) {
            // Sent once the server was gone, and before it came back: cannot have committed.
            if (downAt !== undefined && sentAt > downAt && (restartedAt === undefined || sentAt < restartedAt)) {
              createdDuringOutage++
            }
            if (recoveredAt !== undefined) createdAfterRecovery++
          }
        }

        // Each client sends one request at a time, again with the same key
        // while the answer is retryable (honouring Retry-After), until it is
        // told to stop; it finishes the request it holds.
        const client = async (id: number) => {
          for (let n = 0; !stopping; n++) {
            const request = createRequest(`outage-${id}-${n}`, `user-${id % 4}`, [
              { product_id: products[n % products.length]!, quantity: 1 + (n % 3) }
            ])
            const final = await sendUntilFinal(() => service.baseUrl, request, tally, {
              deadline: hardDeadline,
              timeoutMs: 10_000,
              observe
            })
            if (isRetryable(final)) unresolved.push(String(request.key))
          }
        }

        // Readiness, liveness and memory, sampled every 100 ms.
        let maxRss = 0
        let rssBefore = 0
        const liveFailures: Array<string> = []
        let monitoring = true
        const monitor = async () => {
          while (monitoring) {
            const sentAt = Date.now()
            const [ready, live] = await Promise.all([
              send(service.baseUrl, "GET", "/health/ready", { timeoutMs: 5_000 }),
              send(service.baseUrl, "GET", "/health/live", { timeoutMs: 5_000 })
            ])
            const now = Date.now()
            if (ready._tag === "Reply") {
              if (ready.status === 503) {
                if (stoppedAt !== undefined && ready503At === undefined) ready503At = now
                const bad = badUnavailable(ready)
                if (bad !== undefined) badAnswers.push(`readiness: ${bad}`)
              }
              if (ready.status === 200 && restartedAt !== undefined && recoveredAt === undefined) recoveredAt = now
              if (ready.status === 200 && downAt !== undefined && sentAt > downAt && restartedAt === undefined) {
                readyDuringOutage++
              }
            } else {
              badAnswers.push(`readiness: no response (${ready.reason})`)
            }
            if (live._tag !== "Reply" || live.status !== 200) {
              liveFailures.push(live._tag === "Reply" ? String(live.status) : live.reason)
            }
            const rss = rssMiB(pid) ?? 0
            maxRss = Math.max(maxRss, rss)
            if (stoppedAt === undefined) rssBefore = rss
            await sleep(100)
          }
        }

        const outcome = yield* Effect.promise(async () => {
          const monitoring_ = monitor()
          const load = Promise.all(Array.from({ length: clients }, (_, id) => client(id)))
          await sleep(loadBeforeMs)
          const createdBefore = tally.created
          stoppedAt = Date.now()
          await cluster.stop("fast")
          downAt = Date.now()
          // Noticed within a bound: a 503 to a create and a 503 readiness.
          while ((first503At === undefined || ready503At === undefined) && Date.now() - stoppedAt < noticeWithinMs) {
            await sleep(50)
          }
          const noticedAfterMs = Date.now() - stoppedAt
          await sleep(Math.max(0, outageMs - noticedAfterMs))
          const aliveDuringOutage = isAlive(pid) && service.child.exitCode === null
          const rssDuringOutage = rssMiB(pid) ?? 0
          restartedAt = Date.now()
          await cluster.start()
          while (recoveredAt === undefined && Date.now() - restartedAt < recoverWithinMs) await sleep(50)
          await sleep(loadAfterMs)
          stopping = true
          await load
          monitoring = false
          await monitoring_
          return { createdBefore, noticedAfterMs, aliveDuringOutage, rssDuringOutage }
        })

        expect(outcome.createdBefore, "orders created before the outage").toBeGreaterThan(0)
        expect(first503At, `no 503 to a create within ${noticeWithinMs} ms of the stop`).toBeDefined()
        expect(ready503At, `readiness not 503 within ${noticeWithinMs} ms of the stop`).toBeDefined()
        expect(createdDuringOutage, "201s while the database was down").toBe(0)
        expect(readyDuringOutage, "readiness 200 while the database was down").toBe(0)
        expect(outcome.aliveDuringOutage, "the process stayed up during the outage").toBe(true)
        expect(liveFailures, "liveness answers other than 200").toEqual([])
        expect(badAnswers, "503s that are not problem+json with Retry-After, or no response at all").toEqual([])
        expect(tally.unexpected, "unexpected answers").toEqual([])
        expect(recoveredAt, `readiness not back to 200 within ${recoverWithinMs} ms of the restart`).toBeDefined()
        expect(createdAfterRecovery, "201s after the database came back").toBeGreaterThan(0)
        expect(unresolved, "requests without a final answer").toEqual([])
        expect(isAlive(pid) && service.child.exitCode === null, "the same process serves after the outage").toBe(true)
        expect(maxRss, `resident memory (MiB) over ${rssLimitMiB}`).toBeLessThan(rssLimitMiB)

        const db = yield* connect(cluster.url)
        const publishMs = yield* Effect.promise(() => awaitPublished(db, 20_000))
        const figures = yield* Effect.promise(() => expectConsistent(db, { initialStock, tally }))
        expect(figures.orders, "orders in the database = requests answered 201").toBe(tally.acknowledged.size)
        expect(figures.completedKeys, "completed idempotency records").toBe(tally.acknowledged.size)
        expect(figures.inFlightKeys, "idempotency claims left in flight").toBe(0)

        report("outage", {
          sent: tally.sent,
          "201s": tally.created,
          replayed: tally.replayed,
          ordersBeforeOutage: outcome.createdBefore,
          "503s": tally.unavailable,
          "503Timeouts": tally.timedOut,
          "409InFlight": tally.inFlight,
          retries: tally.retries,
          first503AfterMs: first503At! - stoppedAt!,
          ready503AfterMs: ready503At! - stoppedAt!,
          outageMs: restartedAt! - stoppedAt!,
          recoveredAfterMs: recoveredAt! - restartedAt!,
          createdAfterRecovery,
          rssBeforeMiB: Math.round(rssBefore),
          rssDuringOutageMiB: Math.round(outcome.rssDuringOutage),
          rssMaxMiB: Math.round(maxRss),
          ordersFound: figures.orders,
          eventsFound: figures.events,
          publishWaitMs: publishMs,
          durationMs: Date.now() - started
        })
      }),
    { timeout: 90_000 }
  )

  // `@effect/sql-pg`'s `listen` swallows the errors of its connection, so the
  // stream the relay listens on never fails when PostgreSQL goes away; the
  // relay notices a missed notification (a poll that finds events) and
  // listens anew, so events are again published on their commit's notification.
  // Checked by the relay's LISTEN session, one before and one after: no
  // timing (`OutboxRelay.int.test.ts` shows a listening relay wakes on a
  // commit's notification, with a poll of a minute). The publication
  // latencies are reported, not asserted: tens of ms when listening, up to
  // the 1 s poll when not, but a loaded machine blurs the two.
  it.scoped(
    "the relay listens again after the outage: its LISTEN session is back, one as before",
    () =>
      Effect.gen(function*() {
        const started = Date.now()
        const cluster = yield* Postgres.scoped()
        const service = yield* spawn(serviceEnv(cluster.url, { DB_CONNECT_TIMEOUT: "1 second" }))
        yield* Effect.promise(() => setStock(service.baseUrl, products[0]!, 100_000))

        // From a 201 to its event's position, for orders sent one after the
        // other: each is sent just after the previous was published, so a
        // relay that only polls makes each wait about a whole poll interval.
        let n = 0
        const publishLatencies = (db: Pg.Client, samples: number) =>
          Effect.promise(async () => {
            const latencies: Array<number> = []
            for (let i = 0; i < samples; i++) {
              const request = createRequest(`listen-${n++}`, "listener", [{ product_id: products[0]!, quantity: 1 }])
              const created = await sendUntilFinal(() => service.baseUrl, request, new Tally(), {
                deadline: Date.now() + 10_000
              })
              if (created._tag !== "Reply" || created.status !== 201) throw new Error(JSON.stringify(created))
              const createdAt = Date.now()
              for (;;) {
                const [row] = await db.query("SELECT position FROM outbox WHERE aggregate_id = $1", [
                  created.body.order_id
                ]).then((result) => result.rows as Array<{ position: string | null }>)
                if (row?.position !== null && row?.position !== undefined) break
                if (Date.now() - createdAt > 5_000) throw new Error("event not published within 5 s")
                await sleep(5)
              }
              latencies.push(Date.now() - createdAt)
            }
            return latencies.sort((a, b) => a - b)
          })
        // The relay's LISTEN sessions, read until there is one (it may be
        // connecting) or 10 s have passed: the last count.
        const listeners = (db: Pg.Client) =>
          Effect.promise(async () => {
            const deadline = Date.now() + 10_000
            for (;;) {
              const n = await count(
                db,
                `SELECT count(*) AS n FROM pg_stat_activity
                 WHERE application_name = 'effect-command-bus' AND query ILIKE 'LISTEN%'`
              )
              if (n === 1 || Date.now() > deadline) return n
              await sleep(100)
            }
          })

        const before = yield* Effect.scoped(Effect.flatMap(connect(cluster.url), (db) => publishLatencies(db, 5)))
        const listenersBefore = yield* Effect.scoped(Effect.flatMap(connect(cluster.url), listeners))
        expect(listenersBefore, `LISTEN sessions before the outage`).toBe(1)

        yield* Effect.promise(() => cluster.stop("fast"))
        yield* Effect.promise(() => sleep(1_500))
        yield* Effect.promise(() => cluster.start())
        const recovered = yield* Effect.promise(async () => {
          const deadline = Date.now() + 20_000
          while (Date.now() < deadline) {
            const ready = await send(service.baseUrl, "GET", "/health/ready")
            if (ready._tag === "Reply" && ready.status === 200) return true
            await sleep(100)
          }
          return false
        })
        expect(recovered, "readiness back to 200").toBe(true)
        // Time for a relay to listen again (its retry runs every poll interval).
        yield* Effect.promise(() => sleep(3_000))
        const db = yield* connect(cluster.url)
        const after = yield* publishLatencies(db, 5)
        const listenersAfter = yield* listeners(db)

        report("outage/relay-listen", {
          latenciesBeforeMs: before.join("/"),
          latenciesAfterMs: after.join("/"),
          listenersBefore,
          listenersAfter,
          durationMs: Date.now() - started
        })
        expect(listenersAfter, `LISTEN sessions after the outage (latencies ${after} ms)`).toBe(1)
      }),
    90_000
  )
})
