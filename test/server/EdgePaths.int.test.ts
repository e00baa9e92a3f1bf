/**
 * Requests whose target or framing the router reads differently from how it
 * is written: the edge's checks apply to the path the router routes, a path
 * the router would cut short is no route, and what Node answers on its own
 * (an unknown `Expect`, `CONNECT`) is a problem like every other refusal.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import { kind } from "../support/Database.js"
import {
  expectProblem,
  layer,
  layerOptions,
  orderBody,
  parseRawReply,
  rawRequest,
  setStock,
  stockOf,
  TestService,
  unknownOrderId,
  users
} from "./Http.js"

const product = "edge-paths-sku"
const body = JSON.stringify(orderBody([{ product_id: product, quantity: 1 }]))

const post = (target: string, headers: ReadonlyArray<string>, text: string) => {
  const bytes = Buffer.from(text, "utf8")
  return [
    `POST ${target} HTTP/1.1`,
    "Host: localhost",
    ...headers,
    `Content-Length: ${bytes.length}`,
    "Connection: close",
    "",
    bytes.toString("latin1")
  ].join("\r\n")
}

// The whole request is written, then the answer read (no half-close, which
// Node would take as the client leaving).
const send = (text: string) => Effect.map(rawRequest(text, { halfClose: false }), parseRawReply)

// A client of `Expect: 100-continue`: the head, then the body only once the
// server says `100 Continue`; everything the server sent, when it closes.
const sendExpectingContinue = (head: string, body: string) =>
  Effect.flatMap(TestService, (service) =>
    Effect.async<string>((resume) => {
      let answer = ""
      let sent = false
      const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1", () => socket.write(head))
      const timer = setTimeout(() => socket.destroy(), 10_000)
      socket.on("data", (chunk: Buffer) => {
        answer += chunk.toString("latin1")
        if (!sent && answer.startsWith("HTTP/1.1 100 Continue\r\n\r\n")) {
          sent = true
          socket.write(body)
        }
      })
      socket.on("error", () => {})
      socket.on("close", () => {
        clearTimeout(timer)
        resume(Effect.succeed(answer))
      })
      return Effect.sync(() => socket.destroy())
    }))

describe(`the edge and the paths the router routes (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("a request carrying Upgrade (curl --http2 on plain HTTP) is served as without it, body and all", () =>
      Effect.gen(function*() {
        const { admin } = yield* users
        const put = (extra: ReadonlyArray<string>) =>
          send(
            [
              "PUT /api/v1/products/edge-upgrade/stock HTTP/1.1",
              "Host: localhost",
              `Authorization: Bearer ${admin}`,
              "Content-Type: application/json",
              `Content-Length: ${JSON.stringify({ available: 5 }).length}`,
              ...extra,
              "",
              JSON.stringify({ available: 5 })
            ].join("\r\n")
          )
        for (
          const extra of [
            ["Connection: Upgrade, HTTP2-Settings, close", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"],
            ["Connection: Upgrade, close", "Upgrade: websocket"]
          ]
        ) {
          const reply = yield* put(extra)
          expect(reply.status, extra.join(", ")).toBe(200)
          expect(JSON.parse(reply.text)).toEqual({ product_id: "edge-upgrade", available: 5 })
        }
        expect(yield* stockOf("edge-upgrade", admin)).toBe(5)
      }))

    it.effect("a percent-encoded /api/ prefix gets every body check the plain one does, and changes nothing", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock(product, 100, admin)
        const auth = `Authorization: Bearer ${alice}`
        const json = "Content-Type: application/json"
        for (const target of ["/%61pi/v1/orders", "/ap%69/v1/orders", "http://localhost/%61pi/v1/orders"]) {
          expectProblem(yield* send(post(target, [auth, json], "{not json")), 400, "MalformedJson")
          expectProblem(yield* send(post(target, [auth], body)), 415, "UnsupportedMediaType")
          expectProblem(
            yield* send(post(target, [auth, json, "Idempotency-Key: a", "Idempotency-Key: b"], body)),
            400,
            "RepeatedHeader"
          )
          const big = JSON.stringify({ ...JSON.parse(body), pad: "x".repeat(2 * 1024 * 1024) })
          expectProblem(yield* send(post(target, [auth, json], big)), 413, "PayloadTooLarge")
        }
        expect(yield* stockOf(product, alice)).toBe(100)
        // Checked, it is served as the route it is.
        const created = yield* send(post("/%61pi/v1/orders", [auth, json], body))
        expect(created.status).toBe(201)
        expect(yield* stockOf(product, alice)).toBe(99)
      }))

    it.effect("a path the router would cut at ';' is no route: 404, nothing created", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock(product, 10, admin)
        const auth = `Authorization: Bearer ${alice}`
        for (const target of ["/api/v1/orders;anything", "/api/v1/orders;"]) {
          expectProblem(yield* send(post(target, [auth, "Content-Type: application/json"], body)), 404, "RouteNotFound")
        }
        expectProblem(
          yield* send(
            `GET /api/v1/products/${product};x/stock HTTP/1.1\r\nHost: localhost\r\n${auth}\r\n` +
              "Connection: close\r\n\r\n"
          ),
          404,
          "RouteNotFound"
        )
        expect(yield* stockOf(product, alice)).toBe(10)
      }))

    it.effect("an Expect other than 100-continue is a 417 problem; CONNECT a 405 one", () =>
      Effect.gen(function*() {
        const expectation = yield* send(
          "GET /health/live HTTP/1.1\r\nHost: localhost\r\nExpect: foo\r\nConnection: close\r\n\r\n"
        )
        expectProblem(expectation, 417, "MalformedRequest")
        expect(expectation.headers.get("x-correlation-id")).toMatch(/^[0-9a-f-]{36}$/)
        const connect = yield* send("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
        expectProblem(connect, 405, "MethodNotAllowed")
      }))

    it.effect("an HTTP/1.1 request without Host, or with two, is a MalformedRequest problem; HTTP/1.0 needs none", () =>
      Effect.gen(function*() {
        const missing = yield* send("GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
        expectProblem(missing, 400, "MalformedRequest")
        expect(missing.body.reason).toBe("MISSING_HOST")
        expect(missing.headers.get("x-correlation-id")).toMatch(/^[0-9a-f-]{36}$/)
        const twice = yield* send("GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
        expectProblem(twice, 400, "MalformedRequest")
        expect(twice.body.reason).toBe("REPEATED_HOST")
        expect((yield* send("GET /health/live HTTP/1.0\r\n\r\n")).status).toBe(200)
        expect((yield* send("GET /health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).status).toBe(200)
      }))

    // Node answered `100 Continue` on arrival: a client sent a body the
    // service then refused unread (over BODY_LIMIT, the default 1 MiB).
    it.effect("Expect: 100-continue gets 100 only for a body the service reads; one over the limit gets its 413 unsent", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock(product, 10, admin)
        const head = (length: number) =>
          `POST /api/v1/orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${alice}\r\n` +
          `Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${length}\r\n` +
          "Connection: close\r\n\r\n"
        const refused = yield* sendExpectingContinue(head(2 * 1024 * 1024), "")
        expect(refused.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 413"])
        expectProblem(parseRawReply(refused), 413, "PayloadTooLarge")
        const created = yield* sendExpectingContinue(head(Buffer.byteLength(body)), body)
        expect(created.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 100", "HTTP/1.1 201"])
        expect(yield* stockOf(product, alice)).toBe(9)
      }))

    it.effect("bytes no parser takes, pipelined behind an order, are refused after the order's answer, not in its place", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        for (const garbage of ["BOGUS\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n"]) {
          yield* setStock(product, 10, admin)
          const order = post("/api/v1/orders", [
            `Authorization: Bearer ${alice}`,
            "Content-Type: application/json"
          ], body).replace("Connection: close\r\n", "")
          // One write: the parser has the whole order, then the garbage, while the order runs.
          const answer = yield* rawRequest(order + garbage, { halfClose: false })
          const statusLines = answer.match(/HTTP\/1\.1 \d{3}/g) ?? []
          expect(statusLines).toEqual(["HTTP/1.1 201", "HTTP/1.1 400"])
          const refusal = parseRawReply(answer.slice(answer.lastIndexOf("HTTP/1.1 400")))
          expectProblem(refusal, 400, "MalformedRequest")
          expect(refusal.headers.get("connection")).toBe("close")
          expect(yield* stockOf(product, alice)).toBe(9)
        }
      }))

    it.effect("a broken chunk of a request pipelined behind one still running is that request's 400, in its turn", () =>
      Effect.gen(function*() {
        const { alice } = yield* users
        // The first does real work (a token, a read), so its answer is pending
        // when the parser reaches the second's broken chunk, in the same read.
        const first = `GET /api/v1/orders/${unknownOrderId} HTTP/1.1\r\nHost: localhost\r\n` +
          `Authorization: Bearer ${alice}\r\n\r\n`
        const second = "POST /api/v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
          "X-Correlation-ID: 0c5e8b9a-4f0e-4d7b-9a51-2f3c1d6e7a80\r\nTransfer-Encoding: chunked\r\n\r\n" +
          "5\r\n{\"a\":\r\nZZ\r\n\r\n"
        // Without half-closing: the server's close ends the read (bounded by rawRequest's 10 s).
        const answer = yield* rawRequest(first + second, { halfClose: false })
        expect(answer.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 404", "HTTP/1.1 400"])
        const refusal = parseRawReply(answer.slice(answer.lastIndexOf("HTTP/1.1 400")))
        expectProblem(refusal, 400, "MalformedRequest")
        // The second request's own id: the refusal is its answer.
        expect(refusal.headers.get("x-correlation-id")).toBe("0c5e8b9a-4f0e-4d7b-9a51-2f3c1d6e7a80")
      }))
  })
})
