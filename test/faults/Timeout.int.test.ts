// Slow handler and timeouts: a create blocks on an inventory row that a
// transaction of the test holds `FOR UPDATE`. Past `COMMAND_TIMEOUT` the
// dispatch is interrupted and its transaction rolled back: the client gets a
// typed 503 `CommandTimeout` while the lock is still held, and once the lock
// goes nothing of the command is visible; its idempotency key is free again.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Postgres from "../support/Postgres.js"
import {
  badUnavailable,
  codeOf,
  connect,
  count,
  type CreateRequest,
  createRequest,
  type Outcome,
  report,
  rows,
  sendCreate,
  serviceEnv,
  setStock,
  skipReason,
  sleep,
  spawn,
  title
} from "./Harness.js"

const commandTimeoutMs = 1_000
const locked = { product: "slow-locked", stock: 10 }
const free = { product: "slow-free", stock: 10 }

describe.skipIf(skipReason !== undefined)(title("faults: slow handler and timeouts"), () => {
  it.scoped(
    "a create blocked past COMMAND_TIMEOUT gets 503 CommandTimeout; its transaction is rolled back and its key released",
    () =>
      Effect.gen(function*() {
        const started = Date.now()
        const cluster = yield* Postgres.scoped()
        // The statement timeout well above the command timeout: the command's
        // deadline, not the database's, ends the wait.
        const service = yield* spawn(serviceEnv(cluster.url, {
          COMMAND_TIMEOUT: `${commandTimeoutMs} millis`,
          DB_STATEMENT_TIMEOUT: "30 seconds",
          IDEMPOTENCY_LEASE: "10 seconds"
        }))
        yield* Effect.promise(() =>
          Promise.all([
            setStock(service.baseUrl, locked.product, locked.stock),
            setStock(service.baseUrl, free.product, free.stock)
          ])
        )
        const db = yield* connect(cluster.url)
        const holder = yield* connect(cluster.url)
        // Warm: the first create of a fresh process is slow, and the one
        // sent while the lock is held must not time out for that reason.
        const warmUp = yield* Effect.promise(() =>
          sendCreate(
            service.baseUrl,
            createRequest("warm-up", "slow-user", [{ product_id: free.product, quantity: 1 }])
          )
        )
        expect(warmUp._tag === "Reply" && warmUp.status, "warm-up create").toBe(201)

        const withKey = createRequest("slow-1", "slow-user", [{ product_id: locked.product, quantity: 2 }])
        const withoutKey = createRequest(undefined, "slow-user", [{ product_id: locked.product, quantity: 3 }])
        const elsewhere = createRequest("fast-1", "slow-user", [{ product_id: free.product, quantity: 1 }])

        const timed = async (request: CreateRequest) => {
          const sentAt = Date.now()
          const outcome = await sendCreate(service.baseUrl, request, 20_000)
          return { outcome, ms: Date.now() - sentAt }
        }

        // Hold the row, send the creates, and look at the database while the lock is still held.
        yield* Effect.promise(() => holder.query("BEGIN"))
        yield* Effect.promise(() =>
          holder.query("SELECT * FROM inventory WHERE product_id = $1 FOR UPDATE", [locked.product])
        )
        const lockedAt = Date.now()
        const whileLocked = yield* Effect.promise(async () => {
          const [first, second, other] = await Promise.all([timed(withKey), timed(withoutKey), timed(elsewhere)])
          // Within a bound, no session of the service is left waiting for the lock or inside a transaction.
          let lingering: Array<unknown> = []
          const checkStarted = Date.now()
          do {
            lingering = await rows(
              db,
              `SELECT pid, state, wait_event_type, left(query, 80) AS query FROM pg_stat_activity
               WHERE application_name = 'effect-command-bus'
                 AND (wait_event_type = 'Lock' OR state LIKE 'idle in transaction%')`
            )
            if (lingering.length === 0) break
            await sleep(100)
          } while (Date.now() - checkStarted < 3_000)
          return { first, second, other, lingering, heldMs: Date.now() - lockedAt }
        })
        yield* Effect.promise(() => holder.query("ROLLBACK"))

        const expectTimeout = (outcome: Outcome, ms: number, what: string) => {
          expect(outcome._tag === "Reply" && outcome.status, `${what}: ${JSON.stringify(outcome).slice(0, 300)}`)
            .toBe(503)
          expect(codeOf(outcome), what).toBe("CommandTimeout")
          expect(badUnavailable(outcome), what).toBeUndefined()
          expect(outcome._tag === "Reply" && outcome.body, what).toMatchObject({
            commandType: "CreateOrder",
            timeoutMillis: commandTimeoutMs
          })
          expect(ms, `${what}: answered after (ms)`).toBeGreaterThanOrEqual(commandTimeoutMs - 50)
          expect(ms, `${what}: answered after (ms), while the lock was still held`).toBeLessThan(
            commandTimeoutMs + 2_500
          )
        }
        expectTimeout(whileLocked.first.outcome, whileLocked.first.ms, "create with a key")
        expectTimeout(whileLocked.second.outcome, whileLocked.second.ms, "create without a key")
        expect(
          whileLocked.other.outcome._tag === "Reply" && whileLocked.other.outcome.status,
          "a create of another product"
        )
          .toBe(201)
        expect(whileLocked.lingering, "service sessions still waiting on the lock or in a transaction").toEqual([])

        // Nothing of the timed-out creates is visible once the lock is gone.
        yield* Effect.promise(() => sleep(500))
        const customers = [withKey.customerId, withoutKey.customerId]
        const ordersLeft = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM orders WHERE customer_id = ANY($1::uuid[])", [customers])
        )
        const eventsLeft = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM outbox WHERE payload->>'customerId' = ANY($1::text[])", [customers])
        )
        const stockLeft = yield* Effect.promise(() =>
          count(db, "SELECT available AS n FROM inventory WHERE product_id = $1", [locked.product])
        )
        const keyRecords = yield* Effect.promise(() =>
          count(db, "SELECT count(*) AS n FROM idempotency_keys WHERE key = $1", [withKey.key])
        )
        expect(ordersLeft, "orders of the timed-out creates").toBe(0)
        expect(eventsLeft, "events of the timed-out creates").toBe(0)
        expect(stockLeft, "stock of the locked product").toBe(locked.stock)
        expect(keyRecords, "idempotency record of the timed-out create (its claim must be released)").toBe(0)

        // The same key runs afresh (not a replay, not in flight) and commits.
        const retry = yield* Effect.promise(() => sendCreate(service.baseUrl, withKey))
        expect(retry._tag === "Reply" && retry.status, JSON.stringify(retry).slice(0, 300)).toBe(201)
        expect(retry._tag === "Reply" && retry.headers.get("idempotent-replayed"), "the retry is a replay").toBeNull()
        const after = yield* Effect.promise(async () => ({
          orders: await count(db, "SELECT count(*) AS n FROM orders WHERE customer_id = $1", [withKey.customerId]),
          events: await count(db, "SELECT count(*) AS n FROM outbox WHERE payload->>'customerId' = $1", [
            withKey.customerId
          ]),
          stock: await count(db, "SELECT available AS n FROM inventory WHERE product_id = $1", [locked.product])
        }))
        expect(after, "after the retry").toEqual({ orders: 1, events: 1, stock: locked.stock - 2 })

        report("timeout", {
          sent: 5,
          "503Timeouts": 2,
          timeoutAnsweredAfterMs: `${whileLocked.first.ms}/${whileLocked.second.ms}`,
          lockHeldMs: whileLocked.heldMs,
          "201sWhileLocked": 1,
          ordersLeft,
          eventsLeft,
          stockLeft,
          keyRecordsLeft: keyRecords,
          retry201: 1,
          durationMs: Date.now() - started
        })
      }),
    { timeout: 90_000 }
  )
})
