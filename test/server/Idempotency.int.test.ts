/**
 * The Idempotency-Key rules over HTTP: replays after completion (successes
 * and domain failures), keys scoped per user, another body under the same
 * key, keys in flight, refusals that are not stored, and 20 concurrent
 * requests with one key.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import Pg from "pg"
import { kind, serverUrl } from "../support/Database.js"
import {
  expectJson,
  expectProblem,
  feedEnd,
  type FeedEvent,
  layer,
  layerOptions,
  orderBody,
  placeOrder,
  readFeed,
  request,
  setStock,
  stockOf,
  TestService,
  users,
  waitForFeed
} from "./Http.js"

/**
 * Holds a row lock on a product's stock, from a connection of the test's own
 * to the service's schema, until the scope closes: a command that reserves
 * that product waits, so its idempotency key stays in flight.
 */
const lockStock = (productId: string) =>
  Effect.gen(function*() {
    const service = yield* TestService
    const client = new Pg.Client({ connectionString: serverUrl!, connectionTimeoutMillis: 5_000 })
    yield* Effect.acquireRelease(
      Effect.promise(() => client.connect()),
      () => Effect.promise(() => client.end()).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    )
    yield* Effect.acquireRelease(
      Effect.promise(async () => {
        await client.query(`SET search_path TO ${service.env.DATABASE_SCHEMA}`)
        await client.query("BEGIN")
        await client.query("SELECT available FROM inventory WHERE product_id = $1 FOR UPDATE", [productId])
      }),
      () => Effect.promise(() => client.query("ROLLBACK")).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    )
    // Resolves once a session (a request's) waits for the lock held here.
    const blocked = Effect.promise(async () => {
      for (let i = 0; i < 200; i++) {
        const { rows } = await client.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
          [(await client.query("SELECT pg_backend_pid() AS pid")).rows[0].pid]
        )
        if (rows[0].n > 0) return
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
      throw new Error("no session waited for the lock within 5 s")
    })
    return { blocked }
  })

const createdFor = (productId: string) => (events: ReadonlyArray<FeedEvent>) =>
  events.filter((event) =>
    event.type === "OrderCreated" && event.payload.items.some((line: any) => line.productId === productId)
  )

describe(`Idempotency-Key over HTTP (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("the same key and body after completion replays status, body and Location; nothing runs twice", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-1", 10, admin)
        const start = yield* feedEnd(admin)
        const send = request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-1", quantity: 3 }]),
          headers: { "idempotency-key": "order-once" }
        })
        const first = yield* send
        expectJson(first, 201)
        expect(first.headers.get("idempotent-replayed")).toBeNull()

        const second = yield* send
        expectJson(second, 201)
        expect(second.headers.get("idempotent-replayed")).toBe("true")
        expect(second.text).toBe(first.text)
        expect(second.headers.get("location")).toBe(first.headers.get("location"))
        const third = yield* send
        expect(third.headers.get("idempotent-replayed")).toBe("true")
        expect(third.body).toEqual(first.body)

        expect(yield* stockOf("idem-1", alice)).toBe(7)
        const read = yield* request("GET", `/api/v1/orders/${first.body.order_id}`, { token: alice })
        expectJson(read, 200)
        yield* waitForFeed(admin, (events) => createdFor("idem-1")(events).length >= 1, { after: start })
        yield* Effect.sleep("1 second")
        expect(createdFor("idem-1")(yield* readFeed(admin, start)).map((event) => event.aggregate_id)).toEqual([
          first.body.order_id
        ])
      }))

    it.effect("keys are scoped per user: another user's same key and body is a new order", () =>
      Effect.gen(function*() {
        const { admin, alice, bob } = yield* users
        yield* setStock("idem-scope", 10, admin)
        const send = (user: string) =>
          request("POST", "/api/v1/orders", {
            token: user,
            json: orderBody([{ product_id: "idem-scope", quantity: 1 }]),
            headers: { "idempotency-key": "shared-key" }
          })
        const byAlice = yield* send(alice)
        const byBob = yield* send(bob)
        expectJson(byAlice, 201)
        expectJson(byBob, 201)
        expect(byBob.headers.get("idempotent-replayed")).toBeNull()
        expect(byBob.body.order_id).not.toBe(byAlice.body.order_id)
        expect(yield* stockOf("idem-scope", alice)).toBe(8)
        const bobsOrder = yield* request("GET", `/api/v1/orders/${byBob.body.order_id}`, { token: bob })
        expect(bobsOrder.body.user_id).toBe("bob")
      }))

    it.effect("the same key with another body is 422 IdempotencyKeyMismatch and changes nothing", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-mismatch", 10, admin)
        const first = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-mismatch", quantity: 1 }]),
          headers: { "idempotency-key": "mismatch-key" }
        })
        expectJson(first, 201)
        const other = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-mismatch", quantity: 2 }]),
          headers: { "idempotency-key": "mismatch-key" }
        })
        expectProblem(other, 422, "IdempotencyKeyMismatch")
        expect(other.body.idempotencyKey).toBe("mismatch-key")
        expect(yield* stockOf("idem-mismatch", alice)).toBe(9)
        // The original is still what the key replays.
        const replay = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-mismatch", quantity: 1 }]),
          headers: { "idempotency-key": "mismatch-key" }
        })
        expect(replay.headers.get("idempotent-replayed")).toBe("true")
        expect(replay.body).toEqual(first.body)
      }))

    it.effect("a domain failure (409 InsufficientInventory) is replayed too, even after a restock", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-short", 1, admin)
        const send = request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-short", quantity: 2 }]),
          headers: { "idempotency-key": "short-key" }
        })
        const first = yield* send
        expectProblem(first, 409, "InsufficientInventory")
        expect(first.headers.get("idempotent-replayed")).toBeNull()

        yield* setStock("idem-short", 5, admin)
        const second = yield* send
        expectProblem(second, 409, "InsufficientInventory")
        expect(second.headers.get("idempotent-replayed")).toBe("true")
        expect(second.body).toEqual(first.body)
        expect(yield* stockOf("idem-short", alice)).toBe(5)

        // A new key runs the command anew.
        const fresh = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-short", quantity: 2 }]),
          headers: { "idempotency-key": "short-key-2" }
        })
        expectJson(fresh, 201)
        expect(yield* stockOf("idem-short", alice)).toBe(3)
      }))

    it.effect("400 refusals are not stored: the same key then runs a valid request", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-400", 10, admin)
        const headers = { "idempotency-key": "after-400" }
        const undecodable = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: { ...orderBody([{ product_id: "idem-400", quantity: 1 }]), customer_id: 42 },
          headers
        })
        expectProblem(undecodable, 400, "HttpApiDecodeError")
        const malformed = yield* request("POST", "/api/v1/orders", { token: alice, body: "{\"customer_id\":", headers })
        expectProblem(malformed, 400, "MalformedJson")
        const invalid = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-400", quantity: 1 }, { product_id: "idem-400", quantity: 2 }]),
          headers
        })
        expectProblem(invalid, 400, "CommandValidationError")
        const retry = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "idem-400", quantity: 1 }]),
          headers
        })
        expectJson(retry, 201)
        expect(retry.headers.get("idempotent-replayed")).toBeNull()
        expect(yield* stockOf("idem-400", alice)).toBe(9)
      }))

    it.effect("401 and 413 refusals are not stored: the same key then runs", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-413", 10, admin)
        const headers = { "idempotency-key": "after-413" }
        const body = orderBody([{ product_id: "idem-413", quantity: 1 }])
        const tooLarge = yield* request("POST", "/api/v1/orders", {
          token: alice,
          body: JSON.stringify({ ...body, padding: "x".repeat(2 * 1024 * 1024) }),
          headers
        })
        expectProblem(tooLarge, 413, "PayloadTooLarge")
        const unauthorized = yield* request("POST", "/api/v1/orders", {
          json: body,
          headers: { ...headers, authorization: `Bearer ${alice.slice(0, -4)}AAAA` }
        })
        expectProblem(unauthorized, 401, "Unauthorized")
        const retry = yield* request("POST", "/api/v1/orders", { token: alice, json: body, headers })
        expectJson(retry, 201)
        expect(retry.headers.get("idempotent-replayed")).toBeNull()
        expect(yield* stockOf("idem-413", alice)).toBe(9)
      }))

    it.effect("PUT stock with a key replays its result without setting the stock again", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        const send = request("PUT", "/api/v1/products/idem-put/stock", {
          token: admin,
          json: { available: 7 },
          headers: { "idempotency-key": "restock-1" }
        })
        const first = yield* send
        expectJson(first, 200)
        expect(first.headers.get("idempotent-replayed")).toBeNull()
        yield* placeOrder(alice, [{ product_id: "idem-put", quantity: 2 }])
        const second = yield* send
        expectJson(second, 200)
        expect(second.headers.get("idempotent-replayed")).toBe("true")
        expect(second.body).toEqual({ product_id: "idem-put", available: 7 })
        expect(yield* stockOf("idem-put", alice)).toBe(5)
        const other = yield* request("PUT", "/api/v1/products/idem-put/stock", {
          token: admin,
          json: { available: 8 },
          headers: { "idempotency-key": "restock-1" }
        })
        expectProblem(other, 422, "IdempotencyKeyMismatch")
        expect(yield* stockOf("idem-put", alice)).toBe(5)
      }))

    it.effect("cancel with a key replays 200 and its ETag; another reason under the key is 422", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-cancel", 1, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "idem-cancel", quantity: 1 }])
        const send = (reason: string) =>
          request("POST", `/api/v1/orders/${orderId}/cancel`, {
            token: alice,
            json: { reason },
            headers: { "idempotency-key": "cancel-once" }
          })
        const first = yield* send("first")
        expectJson(first, 200)
        const second = yield* send("first")
        expectJson(second, 200)
        expect(second.headers.get("idempotent-replayed")).toBe("true")
        expect(second.body).toEqual(first.body)
        expect(second.headers.get("etag")).toBe("\"2\"")
        expectProblem(yield* send("second"), 422, "IdempotencyKeyMismatch")
        // Without the key, a second cancel runs and is refused.
        const unkeyed = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "first" }
        })
        expectProblem(unkeyed, 409, "OrderAlreadyCancelled")
        expect(yield* stockOf("idem-cancel", alice)).toBe(1)
      }))

    it.effect("an id written in capitals is the same id: the same cancel under the key replays, not 422", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-case", 1, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "idem-case", quantity: 1 }])
        const send = (id: string) =>
          request("POST", `/api/v1/orders/${id}/cancel`, {
            token: alice,
            json: { reason: "changed my mind" },
            headers: { "idempotency-key": "cancel-case" }
          })
        const first = yield* send(orderId.toUpperCase())
        expectJson(first, 200)
        expect(first.body.order_id).toBe(orderId)
        const again = yield* send(orderId)
        expectJson(again, 200)
        expect(again.headers.get("idempotent-replayed")).toBe("true")
        expect(again.body).toEqual(first.body)
      }))

    it.effect("a key of 255 characters is accepted; keys are compared exactly", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("idem-long", 10, admin)
        const long = "k".repeat(255)
        const send = (key: string) =>
          request("POST", "/api/v1/orders", {
            token: alice,
            json: orderBody([{ product_id: "idem-long", quantity: 1 }]),
            headers: { "idempotency-key": key }
          })
        const first = yield* send(long)
        expectJson(first, 201)
        expect((yield* send(long)).headers.get("idempotent-replayed")).toBe("true")
        const upper = yield* send(long.toUpperCase())
        expectJson(upper, 201)
        expect(upper.headers.get("idempotent-replayed")).toBeNull()
        expect(yield* stockOf("idem-long", alice)).toBe(8)
      }))

    // Only a database server lets the test hold a lock on the service's data;
    // the embedded database lives inside the service.
    it.effect.skipIf(kind === "embedded")(
      "the same key while the first request is in flight is 409, then replays",
      () =>
        Effect.gen(function*() {
          const { admin, alice } = yield* users
          yield* setStock("idem-flight", 10, admin)
          const send = request("POST", "/api/v1/orders", {
            token: alice,
            json: orderBody([{ product_id: "idem-flight", quantity: 1 }]),
            headers: { "idempotency-key": "flight-key" }
          })
          const first = yield* Effect.scoped(Effect.gen(function*() {
            const { blocked } = yield* lockStock("idem-flight")
            const first = yield* Effect.fork(send)
            // The first request claims the key, then waits for the lock.
            yield* blocked
            const duplicate = yield* send
            expectProblem(duplicate, 409, "IdempotencyKeyInFlight")
            expect(duplicate.body.idempotencyKey).toBe("flight-key")
            expect(duplicate.headers.get("idempotent-replayed")).toBeNull()
            return first
          })).pipe(Effect.flatMap(Fiber.join))
          expectJson(first, 201)
          expect(first.headers.get("idempotent-replayed")).toBeNull()
          const replay = yield* send
          expect(replay.headers.get("idempotent-replayed")).toBe("true")
          expect(replay.body).toEqual(first.body)
          expect(yield* stockOf("idem-flight", alice)).toBe(9)
        }),
      30_000
    )

    it.effect(
      "20 concurrent requests with one key: one order; the rest replay it or are 409 in flight",
      () =>
        Effect.gen(function*() {
          const { admin, alice } = yield* users
          yield* setStock("idem-race", 100, admin)
          const start = yield* feedEnd(admin)
          const replies = yield* Effect.forEach(
            Array.from({ length: 20 }, (_, i) => i),
            () =>
              request("POST", "/api/v1/orders", {
                token: alice,
                json: orderBody([{ product_id: "idem-race", quantity: 3 }]),
                headers: { "idempotency-key": "race-key" }
              }),
            { concurrency: "unbounded" }
          )
          const ran = replies.filter((reply) =>
            reply.status === 201 && reply.headers.get("idempotent-replayed") === null
          )
          expect(ran.length).toBe(1)
          const original = ran[0]!
          for (const reply of replies) {
            if (reply === original) continue
            if (reply.status === 201) {
              expect(reply.headers.get("idempotent-replayed")).toBe("true")
              expect(reply.text).toBe(original.text)
              expect(reply.headers.get("location")).toBe(original.headers.get("location"))
            } else {
              expectProblem(reply, 409, "IdempotencyKeyInFlight")
              expect(reply.headers.get("idempotent-replayed")).toBeNull()
            }
          }
          const orderId = original.body.order_id as string
          const read = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
          expectJson(read, 200)
          expect(read.body.items).toEqual([{ product_id: "idem-race", quantity: 3 }])
          expect(yield* stockOf("idem-race", alice)).toBe(97)

          yield* waitForFeed(admin, (events) => createdFor("idem-race")(events).length >= 1, { after: start })
          yield* Effect.sleep("1500 millis")
          const created = createdFor("idem-race")(yield* readFeed(admin, start))
          expect(created.map((event) => event.aggregate_id)).toEqual([orderId])

          // Once it completed, every retry replays it.
          const later = yield* request("POST", "/api/v1/orders", {
            token: alice,
            json: orderBody([{ product_id: "idem-race", quantity: 3 }]),
            headers: { "idempotency-key": "race-key" }
          })
          expect(later.headers.get("idempotent-replayed")).toBe("true")
          expect(later.text).toBe(original.text)
        }),
      60_000
    )
  })
})
