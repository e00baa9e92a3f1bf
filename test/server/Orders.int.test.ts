/**
 * The order endpoints end to end, over HTTP against the running service:
 * every endpoint with its success and its refusals, ETag/If-Match, the
 * events feed and its paging, correlation ids, stock under concurrency,
 * health and documentation.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { kind } from "../support/Database.js"
import {
  absoluteFormPost,
  address,
  customerId,
  expectJson,
  expectNoLeak,
  expectProblem,
  feedEnd,
  type FeedEvent,
  layer,
  layerOptions,
  orderBody,
  parseRawReply,
  placeOrder,
  rawRequest,
  readFeed,
  request,
  setStock,
  stockOf,
  token,
  unknownOrderId,
  users,
  uuidPattern,
  waitForFeed
} from "./Http.js"

describe(`orders over HTTP (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("POST /api/v1/orders: 201, Location, the order in snake_case, its stock reserved", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("create-1", 5, admin)
        yield* setStock("create-2", 4, admin)
        const created = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "create-1", quantity: 2 }, { product_id: "create-2", quantity: 4 }])
        })
        expectJson(created, 201)
        expect(Object.keys(created.body).sort()).toEqual(["order_id", "status"])
        expect(created.body.status).toBe("created")
        expect(created.body.order_id).toMatch(uuidPattern)
        expect(created.headers.get("location")).toBe(`/api/v1/orders/${created.body.order_id}`)
        expect(created.headers.get("idempotent-replayed")).toBeNull()

        const read = yield* request("GET", created.headers.get("location")!, { token: alice })
        expectJson(read, 200)
        expect(read.headers.get("etag")).toBe("\"1\"")
        expect(read.body).toEqual({
          order_id: created.body.order_id,
          customer_id: customerId,
          user_id: "alice",
          status: "created",
          items: [{ product_id: "create-1", quantity: 2 }, { product_id: "create-2", quantity: 4 }],
          shipping_address: address,
          version: 1,
          created_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
          updated_at: read.body.created_at
        })
        expect(yield* stockOf("create-1", alice)).toBe(3)
        expect(yield* stockOf("create-2", alice)).toBe(0)
      }))

    it.effect("POST /api/v1/orders: 409 InsufficientInventory reserves nothing of any line", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("short-1", 5, admin)
        yield* setStock("short-2", 1, admin)
        const refused = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "short-1", quantity: 2 }, { product_id: "short-2", quantity: 2 }])
        })
        expectProblem(refused, 409, "InsufficientInventory")
        expect(refused.body).toMatchObject({ productId: "short-2", requested: 2, available: 1 })
        expect(yield* stockOf("short-1", alice)).toBe(5)
        expect(yield* stockOf("short-2", alice)).toBe(1)
      }))

    it.effect("GET /api/v1/orders/{id}: the owner and an admin read it; another user gets 404, not 403", () =>
      Effect.gen(function*() {
        const { admin, alice, bob } = yield* users
        yield* setStock("read-1", 1, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "read-1", quantity: 1 }])

        const byOwner = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        expectJson(byOwner, 200)
        const byAdmin = yield* request("GET", `/api/v1/orders/${orderId}`, { token: admin })
        expectJson(byAdmin, 200)
        expect(byAdmin.body).toEqual(byOwner.body)
        expect(byAdmin.headers.get("etag")).toBe("\"1\"")

        // The implementation hides someone else's order as missing (404),
        // where the contract's wording would allow 403.
        const byOther = yield* request("GET", `/api/v1/orders/${orderId}`, { token: bob })
        expectProblem(byOther, 404, "OrderNotFound")
        expect(byOther.headers.get("etag")).toBeNull()
        expect(byOther.text).not.toContain("alice")

        const unknown = yield* request("GET", `/api/v1/orders/${unknownOrderId}`, { token: alice })
        expectProblem(unknown, 404, "OrderNotFound")
        expect(unknown.body.detail).toBe(byOther.body.detail.replace(orderId, unknownOrderId))
      }))

    it.effect("POST /api/v1/orders/{id}/cancel: 200 with ETag, stock released; 409 when cancelled; 404; 403", () =>
      Effect.gen(function*() {
        const { admin, alice, bob } = yield* users
        yield* setStock("cancel-1", 3, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "cancel-1", quantity: 3 }])
        expect(yield* stockOf("cancel-1", alice)).toBe(0)

        const byOther = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: bob,
          json: { reason: "not mine" }
        })
        expectProblem(byOther, 403, "Forbidden")
        const untouched = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        expect(untouched.body.status).toBe("created")
        expect(untouched.headers.get("etag")).toBe("\"1\"")

        const cancelled = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "changed my mind" }
        })
        expectJson(cancelled, 200)
        expect(cancelled.body).toEqual({ order_id: orderId, status: "cancelled" })
        expect(cancelled.headers.get("etag")).toBe("\"2\"")
        expect(yield* stockOf("cancel-1", alice)).toBe(3)

        const again = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "changed my mind" }
        })
        expectProblem(again, 409, "OrderAlreadyCancelled")
        expect(yield* stockOf("cancel-1", alice)).toBe(3)

        const unknown = yield* request("POST", `/api/v1/orders/${unknownOrderId}/cancel`, {
          token: alice,
          json: { reason: "gone" }
        })
        expectProblem(unknown, 404, "OrderNotFound")
      }))

    it.effect("an admin may cancel anyone's order", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("cancel-admin", 1, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "cancel-admin", quantity: 1 }])
        const cancelled = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: admin,
          json: { reason: "fraud check" }
        })
        expectJson(cancelled, 200)
        const read = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        expect(read.body).toMatchObject({ status: "cancelled", cancel_reason: "fraud check", version: 2 })
      }))

    it.effect("If-None-Match: the order's ETag (strong, weak, in a list, or *) is 304 without a body", () =>
      Effect.gen(function*() {
        const { admin, alice, bob } = yield* users
        yield* setStock("etag-304", 2, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "etag-304", quantity: 1 }])
        const path = `/api/v1/orders/${orderId}`
        for (const header of ["\"1\"", "W/\"1\"", "\"7\", \"1\"", "*"]) {
          const notModified = yield* request("GET", path, { token: alice, headers: { "if-none-match": header } })
          expect(notModified.status, header).toBe(304)
          expect(notModified.text, header).toBe("")
          expect(notModified.headers.get("etag"), header).toBe("\"1\"")
        }
        // Another version, or no tag: the order itself.
        const changed = yield* request("GET", path, { token: alice, headers: { "if-none-match": "\"2\"" } })
        expectJson(changed, 200)
        expect(changed.body).toMatchObject({ order_id: orderId, version: 1 })
        // Someone else's order stays missing, whatever the tag.
        expectProblem(
          yield* request("GET", path, { token: bob, headers: { "if-none-match": "*" } }),
          404,
          "OrderNotFound"
        )
        // A cancel moves the version on: the old tag no longer matches.
        expectJson(yield* request("POST", `${path}/cancel`, { token: alice, json: { reason: "changed" } }), 200)
        const after = yield* request("GET", path, { token: alice, headers: { "if-none-match": "\"1\"" } })
        expectJson(after, 200)
        expect(after.headers.get("etag")).toBe("\"2\"")
      }))

    it.effect("ETag and If-Match: a stale version is 412, the current one cancels, * matches any", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("etag-1", 2, admin)
        const orderId = yield* placeOrder(alice, [{ product_id: "etag-1", quantity: 1 }])
        const read = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        const etag = read.headers.get("etag")!
        expect(etag).toBe("\"1\"")

        const ahead = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "wrong version" },
          headers: { "if-match": "\"2\"" }
        })
        expectProblem(ahead, 412, "OrderVersionMismatch")
        expect(ahead.body).toMatchObject({ orderId, expectedVersion: 2, actualVersion: 1 })

        const matching = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "right version" },
          headers: { "if-match": etag }
        })
        expectJson(matching, 200)
        expect(matching.headers.get("etag")).toBe("\"2\"")

        const after = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        expect(after.headers.get("etag")).toBe("\"2\"")
        expect(after.body).toMatchObject({ status: "cancelled", version: 2, cancel_reason: "right version" })
        expect(after.body.updated_at >= after.body.created_at).toBe(true)

        const stale = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, {
          token: alice,
          json: { reason: "stale" },
          headers: { "if-match": etag }
        })
        expectProblem(stale, 412, "OrderVersionMismatch")
        expect(stale.body).toMatchObject({ expectedVersion: 1, actualVersion: 2 })

        const other = yield* placeOrder(alice, [{ product_id: "etag-1", quantity: 1 }])
        const any = yield* request("POST", `/api/v1/orders/${other}/cancel`, {
          token: alice,
          json: { reason: "any version" },
          headers: { "if-match": "*" }
        })
        expectJson(any, 200)
        expect(yield* stockOf("etag-1", alice)).toBe(2)
      }))

    it.effect("stock: PUT is for admins (403 otherwise, unchanged), GET for any authenticated user", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        const set = yield* request("PUT", "/api/v1/products/stock-1/stock", { token: admin, json: { available: 7 } })
        expectJson(set, 200)
        expect(set.body).toEqual({ product_id: "stock-1", available: 7 })

        const refused = yield* request("PUT", "/api/v1/products/stock-1/stock", {
          token: alice,
          json: { available: 1000 }
        })
        expectProblem(refused, 403, "Forbidden")

        const read = yield* request("GET", "/api/v1/products/stock-1/stock", { token: alice })
        expectJson(read, 200)
        expect(read.body).toEqual({ product_id: "stock-1", available: 7 })
        const never = yield* request("GET", "/api/v1/products/never-stocked/stock", { token: alice })
        expect(never.body).toEqual({ product_id: "never-stocked", available: 0 })

        const zero = yield* request("PUT", "/api/v1/products/stock-1/stock", { token: admin, json: { available: 0 } })
        expectJson(zero, 200)
        expect(yield* stockOf("stock-1", alice)).toBe(0)
      }))

    it.effect(
      "50 concurrent orders against a stock of 10: 10 created, 40 refused, stock 0, 10 events",
      () =>
        Effect.gen(function*() {
          const { admin } = yield* users
          yield* setStock("contended", 10, admin)
          const start = yield* feedEnd(admin)
          const buyers = yield* Effect.forEach(
            Array.from({ length: 50 }, (_, i) => `buyer-${i}`),
            (sub) => token(sub)
          )
          const replies = yield* Effect.forEach(
            buyers,
            (buyer) =>
              request("POST", "/api/v1/orders", {
                token: buyer,
                json: orderBody([{ product_id: "contended", quantity: 1 }])
              }),
            { concurrency: "unbounded" }
          )
          const created = replies.filter((reply) => reply.status === 201)
          const refused = replies.filter((reply) => reply.status === 409)
          expect(replies.map((reply) => reply.status).sort()).toEqual([
            ...Array<number>(10).fill(201),
            ...Array<number>(40).fill(409)
          ])
          for (const reply of refused) expectProblem(reply, 409, "InsufficientInventory")
          expect(new Set(created.map((reply) => reply.body.order_id)).size).toBe(10)
          expect(yield* stockOf("contended", admin)).toBe(0)

          const createdIds = new Set(created.map((reply) => reply.body.order_id as string))
          const contended = (events: ReadonlyArray<FeedEvent>) =>
            events.filter((event) =>
              event.type === "OrderCreated" && event.payload.items.some((line: any) => line.productId === "contended")
            )
          yield* waitForFeed(admin, (events) => contended(events).length >= 10, { after: start })
          // Give a stray eleventh event the time to show up, then count exactly.
          yield* Effect.sleep("1500 millis")
          const orderCreated = contended(yield* readFeed(admin, start))
          expect(orderCreated.length).toBe(10)
          expect(new Set(orderCreated.map((event) => event.aggregate_id))).toEqual(createdIds)
        }),
      120_000
    )

    it.effect(
      "concurrent cancels of one order: one succeeds, the rest are 409, stock released once",
      () =>
        Effect.gen(function*() {
          const { admin, alice } = yield* users
          yield* setStock("race-cancel", 4, admin)
          const orderId = yield* placeOrder(alice, [{ product_id: "race-cancel", quantity: 4 }])
          const start = yield* feedEnd(admin)
          const replies = yield* Effect.forEach(
            Array.from({ length: 8 }, (_, i) => i),
            (i) =>
              request("POST", `/api/v1/orders/${orderId}/cancel`, { token: alice, json: { reason: `attempt ${i}` } }),
            { concurrency: "unbounded" }
          )
          expect(replies.filter((reply) => reply.status === 200).length).toBe(1)
          for (const reply of replies.filter((reply) => reply.status !== 200)) {
            // A concurrent save is retried on fresh state, which is cancelled;
            // a conflict that outlived its retries would be 409 too.
            expectProblem(reply, 409)
            expect(["OrderAlreadyCancelled", "ConcurrencyConflict"]).toContain(reply.body.code)
          }
          expect(yield* stockOf("race-cancel", alice)).toBe(4)
          yield* waitForFeed(
            admin,
            (events) => events.some((event) => event.type === "OrderCancelled" && event.aggregate_id === orderId),
            { after: start }
          )
          yield* Effect.sleep("1 second")
          const cancelledEvents = (yield* readFeed(admin, start)).filter((event) =>
            event.type === "OrderCancelled" && event.aggregate_id === orderId
          )
          expect(cancelledEvents.length).toBe(1)
          expect(cancelledEvents[0]!.aggregate_version).toBe(2)
        }),
      60_000
    )

    it.effect(
      "GET /api/v1/events: admins only; committed events in order; paging with next",
      () =>
        Effect.gen(function*() {
          const { admin, alice } = yield* users
          const forbidden = yield* request("GET", "/api/v1/events", { token: alice })
          expectProblem(forbidden, 403, "Forbidden")

          yield* setStock("feed-1", 10, admin)
          const start = yield* feedEnd(admin)
          const ids: Array<string> = []
          for (let i = 0; i < 5; i++) ids.push(yield* placeOrder(alice, [{ product_id: "feed-1", quantity: 1 }]))
          const cancelled = yield* request("POST", `/api/v1/orders/${ids[0]}/cancel`, {
            token: alice,
            json: { reason: "feed" }
          })
          expectJson(cancelled, 200)
          const mine = (events: ReadonlyArray<FeedEvent>) => events.filter((event) => ids.includes(event.aggregate_id))
          // Events reach the feed in commit order: once these are there, so is
          // every event committed before them, and the feed up to them is settled.
          const all = yield* waitForFeed(admin, (events) => mine(events).length >= 6, { after: start })
          expect(mine(all).map((event) => [event.type, event.aggregate_id])).toEqual([
            ...ids.map((id) => ["OrderCreated", id]),
            ["OrderCancelled", ids[0]]
          ])
          const positions = all.map((event) => event.position)
          expect(positions).toEqual([...positions].sort((a, b) => a - b))
          expect(new Set(positions).size).toBe(positions.length)
          expect(all[0]!.position).toBeGreaterThan(start)
          const [first] = mine(all)
          expect(first).toMatchObject({
            aggregate_type: "Order",
            aggregate_version: 1,
            event_id: expect.stringMatching(uuidPattern),
            correlation_id: expect.stringMatching(uuidPattern),
            payload: { orderId: ids[0], userId: "alice", items: [{ productId: "feed-1", quantity: 1 }] }
          })
          expect(mine(all)[5]).toMatchObject({ aggregate_version: 2, payload: { orderId: ids[0], reason: "feed" } })

          // Page by two, following `next`, from the same starting point.
          const paged: Array<FeedEvent> = []
          let cursor = start
          let pages = 0
          for (;;) {
            const page = yield* request("GET", `/api/v1/events?after=${cursor}&limit=2`, { token: admin })
            expectJson(page, 200)
            expect(page.body.events.length).toBeLessThanOrEqual(2)
            pages++
            if (page.body.events.length === 0) {
              expect(page.body.next).toBe(cursor)
              break
            }
            expect(page.body.next).toBe(page.body.events[page.body.events.length - 1].position)
            paged.push(...page.body.events)
            cursor = page.body.next
          }
          expect(paged).toEqual(yield* readFeed(admin, start))
          expect(mine(paged)).toEqual(mine(all))
          expect(pages).toBe(Math.ceil(paged.length / 2) + 1)

          const defaults = yield* request("GET", "/api/v1/events", { token: admin })
          expectJson(defaults, 200)
          expect(defaults.body.events.length).toBeLessThanOrEqual(100)
          const largest = yield* request("GET", "/api/v1/events?after=0&limit=1000", { token: admin })
          expectJson(largest, 200)
          const beyond = yield* request("GET", `/api/v1/events?after=${Number.MAX_SAFE_INTEGER}&limit=1`, {
            token: admin
          })
          expect(beyond.body).toEqual({ events: [], next: Number.MAX_SAFE_INTEGER })
        }),
      60_000
    )

    it.effect("X-Correlation-ID: a UUID is echoed and carried by the command's events; else a fresh one", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("corr-1", 10, admin)
        const start = yield* feedEnd(admin)
        const given = "7C4A8D09-CA37-4E2B-9F6A-1B2C3D4E5F60"
        const withId = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "corr-1", quantity: 1 }]),
          headers: { "x-correlation-id": given }
        })
        expectJson(withId, 201)
        expect(withId.headers.get("x-correlation-id")).toBe(given.toLowerCase())

        const without = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "corr-1", quantity: 1 }])
        })
        const generated = without.headers.get("x-correlation-id")!
        expect(generated).toMatch(uuidPattern)

        const invalid = "not-a-uuid; <script>alert(1)</script>"
        const withInvalid = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "corr-1", quantity: 1 }]),
          headers: { "x-correlation-id": invalid }
        })
        const replaced = withInvalid.headers.get("x-correlation-id")!
        expect(replaced).toMatch(uuidPattern)
        expect(replaced).not.toBe(generated)

        const orderIds = [withId.body.order_id, without.body.order_id, withInvalid.body.order_id]
        const events = yield* waitForFeed(
          admin,
          (events) => orderIds.every((orderId) => events.some((event) => event.aggregate_id === orderId)),
          { after: start }
        )
        const correlationOf = (orderId: string) =>
          events.find((event) => event.aggregate_id === orderId)!.correlation_id
        expect(correlationOf(withId.body.order_id)).toBe(given.toLowerCase())
        expect(correlationOf(without.body.order_id)).toBe(generated)
        expect(correlationOf(withInvalid.body.order_id)).toBe(replaced)

        // Refusals carry it too.
        const refused = yield* request("GET", `/api/v1/orders/${unknownOrderId}`, {
          token: alice,
          headers: { "x-correlation-id": given }
        })
        expectProblem(refused, 404, "OrderNotFound")
        expect(refused.headers.get("x-correlation-id")).toBe(given.toLowerCase())
      }))

    it.effect("X-Correlation-ID: header injection attempts are never reflected", () =>
      Effect.gen(function*() {
        const valid = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
        const attempts = [
          `${valid}x`,
          ` ${valid}extra`,
          `${valid}, 7f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10`,
          `${valid}%0d%0aSet-Cookie:%20a=b`,
          `${valid}\u00ff`,
          "x".repeat(8_000),
          "../../etc/passwd"
        ]
        for (const attempt of attempts) {
          const reply = yield* request("GET", "/health/live", { headers: { "x-correlation-id": attempt } })
          expectJson(reply, 200)
          const echoed = reply.headers.get("x-correlation-id")!
          expect(echoed).toMatch(uuidPattern)
          expect(echoed).not.toBe(valid)
          expect(reply.headers.get("set-cookie")).toBeNull()
        }

        const answer = (text: string) => {
          const [head = ""] = text.split("\r\n\r\n")
          return { status: Number(head.split(" ")[1]), head: head.toLowerCase() }
        }
        // CR LF ends the header: what follows is another header, never echoed.
        const separate = answer(
          yield* rawRequest(
            `GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Correlation-ID: ${valid}\r\nX-Injected: yes\r\nConnection: close\r\n\r\n`
          )
        )
        expect(separate.status).toBe(200)
        expect(separate.head).toContain(`x-correlation-id: ${valid}`)
        expect(separate.head).not.toContain("x-injected")
        // A bare CR or LF inside a value: the request is refused outright (by
        // Node's HTTP parser, before the service runs) and nothing is echoed.
        for (const separator of ["\n", "\r"]) {
          const injected = answer(
            yield* rawRequest(
              `GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Correlation-ID: ${valid}${separator}Set-Cookie: a=b\r\nConnection: close\r\n\r\n`
            )
          )
          expect(injected.status).toBe(400)
          expect(injected.head).not.toContain("set-cookie")
          expect(injected.head).not.toContain(valid)
        }
        // Two headers are joined by the server and so are not one UUID.
        const twice = answer(
          yield* rawRequest(
            `GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Correlation-ID: ${valid}\r\nX-Correlation-ID: ${valid}\r\nConnection: close\r\n\r\n`
          )
        )
        expect(twice.status).toBe(200)
        expect(twice.head).toMatch(/x-correlation-id: [0-9a-f-]{36}\r\n/)
        expect(twice.head).not.toContain(valid)
      }))

    it.effect("text that is valid Unicode (RTL override, zero-width, emoji) is stored and returned verbatim", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("unicode-1", 1, admin)
        const line1 = "\u202Etxet\u200B \u{1F600} \u05E9\u05DC\u05D5\u05DD"
        const created = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: { ...orderBody([{ product_id: "unicode-1", quantity: 1 }]), shipping_address: { ...address, line1 } }
        })
        expectJson(created, 201)
        const read = yield* request("GET", `/api/v1/orders/${created.body.order_id}`, { token: alice })
        expect(read.body.shipping_address.line1).toBe(line1)
      }))

    it.effect("application/json; charset=latin1 is accepted as JSON", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("charset-1", 1, admin)
        const created = yield* request("POST", "/api/v1/orders", {
          token: alice,
          body: JSON.stringify(orderBody([{ product_id: "charset-1", quantity: 1 }])),
          contentType: "application/json; charset=latin1"
        })
        expectJson(created, 201)
      }))

    it.effect("an absolute-form request target (http://host/path) is served as its path, UTF-8 text intact", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("absolute-1", 1, admin)
        const body = JSON.stringify({
          ...orderBody([{ product_id: "absolute-1", quantity: 1 }]),
          shipping_address: { ...address, line1: "Café Zoë" }
        })
        const created = parseRawReply(
          yield* rawRequest(absoluteFormPost("/api/v1/orders", alice, body), { halfClose: false })
        )
        expectJson(created, 201)
        const read = yield* request("GET", `/api/v1/orders/${created.body.order_id}`, { token: alice })
        expect(read.body.shipping_address.line1).toBe("Café Zoë")
        expect(yield* stockOf("absolute-1", alice)).toBe(0)
      }))

    it.effect("health: live and ready are 200; /docs is HTML; an unknown route is a 404 problem", () =>
      Effect.gen(function*() {
        const live = yield* request("GET", "/health/live")
        expectJson(live, 200)
        expect(live.body).toEqual({ status: "ok" })
        const ready = yield* request("GET", "/health/ready")
        expectJson(ready, 200)
        expect(ready.body).toEqual({ status: "ok" })

        const docs = yield* request("GET", "/docs")
        expect(docs.status).toBe(200)
        expect(docs.headers.get("content-type")).toMatch(/^text\/html\b/)
        expect(docs.text).toMatch(/^<!doctype html>/i)
        expect(docs.text).toContain("<title>Orders service (effect-command-bus reference)</title>")

        const missing = yield* request("GET", "/api/v1/nothing-here")
        expectProblem(missing, 404, "RouteNotFound")
        const unknownPost = yield* request("POST", "/api/v1/nothing-here", { json: {} })
        expectProblem(unknownPost, 404, "RouteNotFound")
        expectNoLeak(unknownPost.text)
      }))

    // A request without a body or content type goes to the router: a path
    // that exists for other methods is 405 with `Allow`, not 404 or 415.
    it.effect("a DELETE of an order (a path with GET only, no body) is 405 MethodNotAllowed with Allow", () =>
      Effect.gen(function*() {
        const { alice } = yield* users
        const reply = yield* request("DELETE", `/api/v1/orders/${unknownOrderId}`, { token: alice })
        expectProblem(reply, 405, "MethodNotAllowed")
        expect(reply.headers.get("allow")).toBe("GET, HEAD")
        expect(reply.body.allowed).toEqual(["GET", "HEAD"])
        expect(reply.body.detail).toBe(`/api/v1/orders/${unknownOrderId} does not answer DELETE; it answers GET, HEAD`)
      }))

    it.effect("a method a path does not answer is 405 with the methods it does; an unknown path stays 404", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        const put = yield* request("PUT", "/api/v1/orders", { token: alice, json: {} })
        expectProblem(put, 405, "MethodNotAllowed")
        expect(put.headers.get("allow")).toBe("POST")
        const stock = yield* request("POST", "/api/v1/products/sku-1/stock", { token: admin, json: { available: 1 } })
        expectProblem(stock, 405, "MethodNotAllowed")
        expect(stock.headers.get("allow")).toBe("GET, PUT, HEAD")
        const cancel = yield* request("GET", `/api/v1/orders/${unknownOrderId}/cancel`, { token: alice })
        expectProblem(cancel, 405, "MethodNotAllowed")
        expect(cancel.headers.get("allow")).toBe("POST")
        expectProblem(yield* request("DELETE", "/api/v1/nothing-here", { token: alice }), 404, "RouteNotFound")
      }))
  })
})
