// Crash under load: creates with distinct idempotency keys at 32 concurrent
// clients, `kill -9` of the service mid-run, a restart on the same port and
// database, and every request that got no answer sent again with its key.
// Nothing a client was told is lost, nothing runs twice, every committed
// order's event is in the log and published after the restart, and stock
// adds up.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Postgres from "../support/Postgres.js"
import {
  awaitPublished,
  connect,
  count,
  type CreateRequest,
  createRequest,
  expectConsistent,
  isRetryable,
  pool,
  random,
  report,
  sendCreate,
  sendUntilFinal,
  serviceEnv,
  setStock,
  skipReason,
  spawn,
  Tally,
  title
} from "./Harness.js"

const requestCount = 480
const concurrency = 32
// Killed once this share of the requests got their answer.
const killAfter = Math.floor(requestCount * 0.4)
// Many products, so that creates seldom wait on each other's inventory
// rows and commits overlap.
const products = Array.from({ length: 40 }, (_, i) => `crash-${i}`)
const initialStock = Object.fromEntries(products.map((product) => [product, 100_000]))

const plan = (): ReadonlyArray<CreateRequest> => {
  const next = random(20_250_601)
  return Array.from({ length: requestCount }, (_, i) => {
    const first = next(products.length)
    const lines = [{ product_id: products[first]!, quantity: 1 + next(3) }]
    if (next(2) === 1) {
      lines.push({ product_id: products[(first + 1 + next(8)) % products.length]!, quantity: 1 + next(3) })
    }
    return createRequest(`crash-${i}`, `user-${i % 8}`, lines)
  })
}

describe.skipIf(skipReason !== undefined)(title("faults: crash under load"), () => {
  it.scoped(
    "kill -9 mid-run, restart, retry the unanswered with their keys: every 201 kept, none twice, events published",
    () =>
      Effect.gen(function*() {
        const started = Date.now()
        const cluster = yield* Postgres.scoped()
        const port = yield* Effect.promise(() => Postgres.freePort())
        // A lease short enough that claims orphaned by the kill free their
        // keys quickly, and above the command timeout.
        const env = serviceEnv(cluster.url, {
          PORT: String(port),
          IDEMPOTENCY_LEASE: "2 seconds",
          COMMAND_TIMEOUT: "1500 millis"
        })
        const first = yield* spawn(env)
        yield* Effect.promise(() => pool(products, 8, (product) => setStock(first.baseUrl, product, 100_000)))
        const db = yield* connect(cluster.url)

        // Run until killed: no new request is sent once the service is gone.
        const requests = plan()
        const tally = new Tally()
        const unanswered: Array<CreateRequest> = []
        const unsent: Array<CreateRequest> = []
        let answered = 0
        let pending = 0
        let inFlightAtKill = 0
        let killAt: ReturnType<typeof setTimeout> | undefined
        let killedAt: number | undefined
        let createdAtKill = 0
        yield* Effect.promise(() =>
          pool(requests, concurrency, async (request) => {
            if (killedAt !== undefined) {
              unsent.push(request)
              return
            }
            pending++
            const outcome = await sendCreate(first.baseUrl, request)
            pending--
            tally.record(request, outcome)
            if (isRetryable(outcome)) unanswered.push(request)
            else answered++
            if (killAt === undefined && answered >= killAfter) {
              // A moment later, not in step with an answer: requests are then
              // at every stage, some committed and not yet answered.
              killAt = setTimeout(() => {
                killedAt = Date.now()
                inFlightAtKill = pending
                createdAtKill = tally.created
                first.child.kill("SIGKILL")
              }, 2)
            }
          })
        )
        expect(killedAt, "the run ended before the kill").toBeDefined()
        expect(yield* Effect.promise(() => first.exited)).toBe("SIGKILL")
        const committedAtKill = yield* Effect.promise(() => count(db, "SELECT count(*) AS n FROM orders"))
        const orphanedClaims = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM idempotency_keys WHERE state = 'in_flight'")
        )
        const unpublishedAtKill = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM outbox WHERE position IS NULL")
        )
        const [{ now: restartedAt }] = yield* Effect.promise(() => db.query("SELECT now() AS now")).pipe(
          Effect.map((result) => result.rows as [{ now: Date }])
        )

        // Restart on the same port; retry the unanswered with their keys, and send the rest.
        const restartStarted = Date.now()
        const second = yield* spawn(env)
        const restartMs = Date.now() - restartStarted
        const retried = unanswered.length
        const unresolved: Array<string> = []
        const deadline = Date.now() + 30_000
        yield* Effect.promise(() =>
          pool(
            [...unanswered.map((request) => [request, true] as const), ...unsent.map((r) => [r, false] as const)],
            concurrency,
            async ([request, retry]) => {
              const final = await sendUntilFinal(() => second.baseUrl, request, tally, {
                deadline,
                firstAttempt: !retry
              })
              if (isRetryable(final)) {
                unresolved.push(String(request.key))
              }
            }
          )
        )
        expect(unresolved, "requests without a final answer after the restart").toEqual([])
        expect(tally.unexpected, "unexpected answers").toEqual([])
        expect(tally.acknowledged.size, "requests that got a 201 in the end").toBe(requestCount)

        const publishMs = yield* Effect.promise(() => awaitPublished(db, 20_000))
        const figures = yield* Effect.promise(() => expectConsistent(db, { initialStock, tally }))
        expect(figures.orders, "orders in the database").toBe(requestCount)
        expect(figures.events, "events in the log").toBe(requestCount)
        expect(figures.completedKeys, "completed idempotency records").toBe(requestCount)
        expect(figures.inFlightKeys, "idempotency claims left in flight").toBe(0)
        const publishedAfterRestart = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM outbox WHERE published_at >= $1", [restartedAt])
        )
        expect(publishedAfterRestart, "events left unpublished by the kill, published after the restart")
          .toBeGreaterThanOrEqual(unpublishedAtKill)

        report("crash", {
          requests: requestCount,
          sent: tally.sent,
          "201s": tally.created,
          replayed: tally.replayed,
          inFlightAtKill,
          noResponse: tally.noResponse,
          unsentAtKill: unsent.length,
          retriedRequests: retried,
          retries: tally.retries,
          "409InFlight": tally.inFlight,
          "503s": tally.unavailable + tally.timedOut,
          ordersCommittedAtKill: committedAtKill,
          committedUnanswered: committedAtKill - createdAtKill,
          orphanedClaimsAtKill: orphanedClaims,
          unpublishedAtKill,
          publishedAfterRestart,
          ordersFound: figures.orders,
          eventsFound: figures.events,
          restartMs,
          publishWaitMs: publishMs,
          durationMs: Date.now() - started
        })
      }),
    { timeout: 90_000 }
  )
})
