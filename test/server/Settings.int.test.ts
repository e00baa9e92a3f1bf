/**
 * Settings that reach the HTTP service from its environment: the
 * idempotency retention (`IDEMPOTENCY_TTL`) and the body limit
 * (`BODY_LIMIT`), each set low enough to see it act.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import { kind } from "../support/Database.js"
import {
  address,
  customerId,
  expectJson,
  expectProblem,
  layer,
  layerOptions,
  orderBody,
  parseRawReply,
  request,
  setStock,
  stockOf,
  TestService,
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

    it.effect(
      "a body far past BODY_LIMIT is not read to its end: chunked, it is cut off; declared, answered unread",
      () =>
        Effect.gen(function*() {
          const service = yield* TestService
          const { alice } = yield* users
          const head = (framing: string) =>
            `POST /api/v1/orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${alice}\r\n` +
            `Content-Type: application/json\r\n${framing}\r\n\r\n`
          // Chunked: 4 MB offered, 2048 times the limit; the server must end
          // the upload long before (it drops the connection past 16 times it).
          const chunked = yield* Effect.promise(() =>
            new Promise<{ readonly sent: number; readonly cut: boolean }>((resolve) => {
              const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1")
              let closed = false
              socket.on("error", () => closed = true)
              socket.on("close", () => closed = true)
              socket.on("connect", async () => {
                socket.write(head("Transfer-Encoding: chunked"))
                const chunk = `400\r\n${"x".repeat(1024)}\r\n`
                let sent = 0
                for (let i = 0; i < 4096 && !closed; i++) {
                  sent += 1024
                  if (!socket.write(chunk)) {
                    await new Promise((drained) => {
                      socket.once("drain", drained)
                      socket.once("close", drained)
                    })
                  }
                }
                const cut = closed
                socket.destroy()
                resolve({ sent, cut })
              })
            })
          )
          expect(chunked.cut, `sent ${chunked.sent} bytes and the server still read`).toBe(true)
          // Declared over the limit: the answer comes with no byte of the body sent.
          const declared = yield* Effect.promise(() =>
            new Promise<string>((resolve) => {
              const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1", () => {
                socket.write(head(`Content-Length: ${1024 * 1024}`))
              })
              let answer = ""
              const timer = setTimeout(() => socket.destroy(), 15_000)
              socket.on("data", (data: Buffer) => answer += data.toString("latin1"))
              socket.on("error", () => {})
              socket.on("close", () => {
                clearTimeout(timer)
                resolve(answer)
              })
            })
          )
          expectProblem(parseRawReply(declared), 413, "PayloadTooLarge")
        }),
      60_000
    )
  })
})
