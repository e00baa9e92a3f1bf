/**
 * What the service answers before any route, and at the edges of its
 * parameters, against the document it serves: every status declared for the
 * operation, every body valid for its status, every parameter's range the
 * one the service keeps.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { randomUUID } from "node:crypto"
import * as Net from "node:net"
import { kind } from "../support/Database.js"
import { dereference, type Document, operationsOf, responseChecker } from "./fuzz/OpenApiOperations.js"
import {
  expectJson,
  layer,
  layerOptions,
  orderBody,
  parseRawReply,
  rawRequest,
  request,
  TestService,
  token
} from "./Http.js"

const served = Effect.gen(function*() {
  const reply = yield* request("GET", "/openapi.json")
  expectJson(reply, 200)
  const document = reply.body as Document
  const operations = operationsOf(yield* Effect.promise(() => dereference(document)))
  const check = responseChecker(document)
  const conforms = (id: string, reply: ReturnType<typeof parseRawReply>) =>
    check(
      operations.find((operation) => operation.id === id)!,
      reply.status,
      reply.headers.get("content-type"),
      reply.text
    )
  return { document, conforms }
})

const manyHeaders = Array.from({ length: 120 }, (_, i) => `X-H${i}: 1\r\n`).join("")

/** Everything the service writes on one connection: `first`, then `second` once an answer arrives. */
const exchange = (port: number, first: string, second: string) =>
  Effect.promise(() =>
    new Promise<string>((resolve) => {
      const socket = Net.connect(port, "127.0.0.1")
      let out = ""
      let sent = false
      const timer = setTimeout(() => socket.destroy(), 3000)
      socket.on("data", (chunk) => {
        out += chunk.toString("latin1")
        if (!sent) {
          sent = true
          socket.write(second)
        }
      })
      socket.on("error", () => {})
      socket.on("close", () => {
        clearTimeout(timer)
        resolve(out)
      })
      socket.write(first)
    })
  )

describe(`the HTTP contract at its edges (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("a body with more values than any order holds is refused before it is parsed; a largest order is not", () =>
      Effect.gen(function*() {
        const alice = yield* token("alice")
        // 330,000 empty objects in under 1 MB: 19 MB of heap once parsed.
        const wide = `{"customer_id":[${new Array(330_000).fill("{}").join(",")}]}`
        const refused = yield* request("POST", "/api/v1/orders", { token: alice, body: wide })
        expect([refused.status, refused.body.code]).toEqual([400, "MalformedJson"])
        expect(refused.body.reason).toBe("the body holds more than 4096 values")
        // Commas and brackets inside strings are no values.
        const commas = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: ",".repeat(90), quantity: 1 }])
        })
        expect(commas.status).toBe(409)
        // 100 lines, the most an order has: decoded, and refused by the domain (no stock), not as malformed.
        const lines = Array.from({ length: 100 }, (_, i) => ({ product_id: `sku-largest-${i}`, quantity: 1000 }))
        const largest = yield* request("POST", "/api/v1/orders", { token: alice, json: orderBody(lines) })
        expect([largest.status, largest.body.code]).toEqual([409, "InsufficientInventory"])
      }))

    it.effect("a body refused before it is read closes the connection: it is not read to any length", () =>
      Effect.gen(function*() {
        const alice = yield* token("alice")
        const cases = [
          { contentType: "text/plain", headers: {} },
          { contentType: "application/json", headers: { "content-encoding": "gzip" } }
        ]
        for (const { contentType, headers } of cases) {
          const reply = yield* request("POST", "/api/v1/orders", { token: alice, body: "{}", contentType, headers })
          expect([reply.status, reply.headers.get("connection")]).toEqual([415, "close"])
        }
        const repeated = parseRawReply(
          yield* rawRequest(
            `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
              `Content-Type: application/json\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n` +
              `Content-Length: 1000000000\r\n\r\n{`,
            { halfClose: false }
          )
        )
        expect([repeated.status, repeated.body.code, repeated.headers.get("connection")]).toEqual([
          400,
          "RepeatedHeader",
          "close"
        ])
        // A body read whole and then refused leaves the connection open.
        const broken = yield* request("POST", "/api/v1/orders", { token: alice, body: "{" })
        expect([broken.status, broken.body.code]).toEqual([400, "MalformedJson"])
        expect(broken.headers.get("connection")).not.toBe("close")
      }))

    it.effect("431, 417 and a malformed chunk are answers the document declares, with bodies it allows", () =>
      Effect.gen(function*() {
        const { conforms } = yield* served
        const admin = yield* token("root", { admin: true })

        const tooMany = parseRawReply(
          yield* rawRequest(`GET /health/live HTTP/1.1\r\nHost: x\r\n${manyHeaders}Connection: close\r\n\r\n`, {
            halfClose: false
          })
        )
        expect(tooMany.status).toBe(431)
        expect(conforms("health.live", tooMany)).toEqual([])

        const tooLong = parseRawReply(
          yield* rawRequest(`POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(17_000)}\r\n\r\n`)
        )
        expect(tooLong.status).toBe(431)
        expect(conforms("orders.createOrder", tooLong)).toEqual([])

        const expectation = parseRawReply(
          yield* rawRequest(
            `PUT /api/v1/products/p1/stock HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${admin}\r\n` +
              `Expect: foo\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"available":1}`
          )
        )
        expect(expectation.status).toBe(417)
        expect(conforms("products.setStock", expectation)).toEqual([])

        // Chunk extensions past Node's limit: malformed, not a body over BODY_LIMIT.
        const extension = parseRawReply(
          yield* rawRequest(
            `PUT /api/v1/products/p1/stock HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${admin}\r\n` +
              `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
              `5;${"a".repeat(20_000)}\r\n{"ava\r\n0\r\n\r\n`
          )
        )
        expect([extension.status, extension.body.code]).toEqual([400, "MalformedRequest"])
        expect(conforms("products.setStock", extension)).toEqual([])
      }))

    it.effect("a 431 for more than 100 header lines closes the connection: nothing more is served on it", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const answer = yield* exchange(
          Number(new URL(service.baseUrl).port),
          `GET /health/live HTTP/1.1\r\nHost: x\r\n${manyHeaders}\r\n`,
          "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        expect(answer).toMatch(/^HTTP\/1\.1 431/)
        expect(answer.split("HTTP/1.1 ").length - 1).toBe(1)
      }))

    it.effect("the events page's after and limit: the document's range is the one the service keeps", () =>
      Effect.gen(function*() {
        const { document } = yield* served
        const parameters = document.paths["/api/v1/events"].get.parameters as Array<{ name: string; schema: any }>
        const schemaOf = (name: string) => parameters.find((parameter) => parameter.name === name)!.schema
        expect(schemaOf("limit")).toMatchObject({ type: "integer", minimum: 1, maximum: 1000 })
        expect(schemaOf("after")).toMatchObject({ type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER })
        const admin = yield* token("root", { admin: true })
        const statusOf = (query: string) =>
          Effect.map(request("GET", `/api/v1/events?${query}`, { token: admin }), (reply) => reply.status)
        for (const name of ["limit", "after"] as const) {
          const { maximum, minimum } = schemaOf(name)
          expect(yield* statusOf(`${name}=${minimum}`), `${name}=${minimum}`).toBe(200)
          expect(yield* statusOf(`${name}=${maximum}`), `${name}=${maximum}`).toBe(200)
          expect(yield* statusOf(`${name}=${BigInt(maximum) + 1n}`), `${name} past its maximum`).toBe(400)
          if (minimum > 0) expect(yield* statusOf(`${name}=${minimum - 1}`), `${name} below its minimum`).toBe(400)
        }
      }))

    it.effect("text the document's Text refuses (NUL) is refused by the service; the rest of it is taken", () =>
      Effect.gen(function*() {
        const { document } = yield* served
        const pattern = new RegExp(document.components.schemas.Text.pattern)
        expect(pattern.test("a\u0000b")).toBe(false)
        expect(pattern.test("changed my mind ✓")).toBe(true)
        const alice = yield* token("alice")
        const cancel = (reason: string) =>
          request("POST", "/api/v1/orders/0b6a1c6e-2f4e-4d5b-9a3c-7e8f9a0b1c2d/cancel", {
            token: alice,
            json: { reason }
          })
        expect((yield* cancel("a\u0000b")).status).toBe(400)
        // Well-formed: the order is unknown.
        expect((yield* cancel("changed my mind ✓")).status).toBe(404)
      }))

    it.effect("a method no route takes, or a path no route has, is 405 or 404 whatever its body, and closes", () =>
      Effect.gen(function*() {
        const alice = yield* token("alice")
        const wrongMethod = yield* request("DELETE", "/api/v1/orders", { token: alice, body: "" })
        const unknownText = yield* request("POST", "/api/v1/nope", {
          token: alice,
          body: "x",
          contentType: "text/plain"
        })
        const unknownLarge = yield* request("POST", "/api/v1/nope", { token: alice, body: "x".repeat(2_000_000) })
        const brokenJson = yield* request("PATCH", "/api/v1/products/p1/stock", { token: alice, body: "{" })
        expect([wrongMethod.status, unknownText.status, unknownLarge.status, brokenJson.status]).toEqual([
          405,
          404,
          404,
          405
        ])
        expect(brokenJson.headers.get("allow")).toContain("PUT")
        // An empty parameter: no route by the edge's table, though the router would take it. The edge
        // answers, so the body never reaches the API unchecked (broken, or over BODY_LIMIT).
        const admin = yield* token("root", { admin: true })
        for (const body of ["{", "[".repeat(2_000_000)]) {
          const emptyId = yield* request("PUT", "/api/v1/products//stock", { token: admin, body })
          expect([emptyId.status, emptyId.headers.get("connection")]).toEqual([404, "close"])
        }
        // A malformed escape where a parameter goes: no route either, before any check of the body.
        for (const contentType of ["text/plain", "application/json"]) {
          const malformed = yield* request("POST", "/api/v1/orders/%zz/cancel", {
            token: alice,
            body: "{",
            contentType
          })
          expect([malformed.status, malformed.headers.get("connection")]).toEqual([404, "close"])
        }
        // The body no route reads is not read to keep the connection.
        for (const reply of [unknownText, unknownLarge, brokenJson]) {
          expect(reply.headers.get("connection")).toBe("close")
        }
      }))

    it.effect("a body sent with a read (GET, HEAD) is answered and closes: it is not read to any length", () =>
      Effect.gen(function*() {
        const admin = yield* token("root", { admin: true })
        const reads = [
          { target: "GET /api/v1/events", status: 200 },
          { target: "GET /health/live", status: 200 },
          { target: `HEAD /api/v1/orders/${randomUUID()}`, status: 404 }
        ]
        for (const { status, target } of reads) {
          for (const framing of ["Content-Length: 1000000000", "Transfer-Encoding: chunked"]) {
            const reply = parseRawReply(
              yield* rawRequest(
                `${target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${admin}\r\n${framing}\r\n\r\n` +
                  (framing.startsWith("Transfer") ? "10000\r\n{" : "{"),
                { halfClose: false }
              )
            )
            expect([target, framing, reply.status, reply.headers.get("connection")]).toEqual([
              target,
              framing,
              status,
              "close"
            ])
          }
        }
      }))
  })
})

describe(`a request too slow to arrive (${kind})`, () => {
  it.layer(layer({ REQUEST_TIMEOUT: "1 second" }), layerOptions)((it) => {
    it.effect("gets 408 once REQUEST_TIMEOUT has passed, a problem the document declares, and is closed", () =>
      Effect.gen(function*() {
        const { conforms } = yield* served
        const alice = yield* token("alice")
        // Headers and part of the body, then nothing: the reply comes from the server's timeout
        // (rawRequest gives up after its own bound, with no reply, if none comes).
        const correlationId = randomUUID()
        const reply = parseRawReply(
          yield* rawRequest(
            `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
              `X-Correlation-ID: ${correlationId}\r\n` +
              `Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"customer`,
            { halfClose: false }
          )
        )
        expect([reply.status, reply.body.code]).toEqual([408, "MalformedRequest"])
        // The request's own id: the application had the request when the answer went out.
        expect(reply.headers.get("x-correlation-id")).toBe(correlationId)
        expect(conforms("orders.createOrder", reply)).toEqual([])
      }))
  })
})
