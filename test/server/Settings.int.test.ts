/**
 * Settings that reach the HTTP service from its environment: the
 * idempotency retention (`IDEMPOTENCY_TTL`) and the body limit
 * (`BODY_LIMIT`), each set low enough to see it act.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { kind } from "../support/Database.js"
import {
  address,
  customerId,
  expectJson,
  expectProblem,
  layer,
  layerOptions,
  orderBody,
  request,
  setStock,
  stockOf,
  users
} from "./Http.js"

describe(`settings over HTTP (${kind})`, () => {
  it.layer(layer({ IDEMPOTENCY_TTL: "2 seconds", BODY_LIMIT: "2kb" }), layerOptions)((it) => {
    it.effect("a key is replayed within IDEMPOTENCY_TTL and runs anew after it", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock("ttl-1", 10, admin)
        const send = request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: "ttl-1", quantity: 1 }]),
          headers: { "idempotency-key": "ttl-key" }
        })
        const first = yield* send
        expectJson(first, 201)
        const replay = yield* send
        expect(replay.headers.get("idempotent-replayed")).toBe("true")
        expect(replay.body.order_id).toBe(first.body.order_id)
        // Past the retention (the live clock: the service's own).
        yield* Effect.sleep("3 seconds")
        const after = yield* send
        expectJson(after, 201)
        expect(after.headers.get("idempotent-replayed")).toBeNull()
        expect(after.body.order_id).not.toBe(first.body.order_id)
        expect(yield* stockOf("ttl-1", alice)).toBe(8)
      }), 30_000)

    it.effect(
      "a body over BODY_LIMIT is 413 and changes nothing; one under it is served",
      () =>
        Effect.gen(function*() {
          const { admin, alice } = yield* users
          yield* setStock("limit-1", 10, admin)
          const body = (line1: string) =>
            JSON.stringify({
              customer_id: customerId,
              items: [{ product_id: "limit-1", quantity: 1 }],
              shipping_address: { ...address, line1 }
            })
          expectJson(yield* request("POST", "/api/v1/orders", { token: alice, body: body("x".repeat(100)) }), 201)
          const big = body("x".repeat(200)) + " ".repeat(3000)
          expect(Buffer.byteLength(big)).toBeGreaterThan(2048)
          expectProblem(yield* request("POST", "/api/v1/orders", { token: alice, body: big }), 413, "PayloadTooLarge")
          expect(yield* stockOf("limit-1", alice)).toBe(9)
        }),
      30_000
    )
  })
})
