import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Service from "../support/Service.js"

describe("service smoke", () => {
  it.scoped("creates an order over HTTP", () =>
    Effect.gen(function*() {
      const service = yield* Service.start()
      const admin = yield* Effect.promise(() => service.token("admin", { admin: true }))
      const alice = yield* Effect.promise(() => service.token("alice"))
      const put = yield* Effect.promise(() =>
        fetch(`${service.baseUrl}/api/v1/products/sku-1/stock`, {
          method: "PUT",
          headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
          body: JSON.stringify({ available: 3 })
        })
      )
      expect(put.status).toBe(200)
      const post = yield* Effect.promise(() =>
        fetch(`${service.baseUrl}/api/v1/orders`, {
          method: "POST",
          headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
          body: JSON.stringify({
            customer_id: "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10",
            items: [{ product_id: "sku-1", quantity: 2 }],
            shipping_address: { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }
          })
        })
      )
      expect(post.status).toBe(201)
    }), { timeout: 60_000 })
})
