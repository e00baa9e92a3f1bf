// The HTTP server before the API serves on it (the database still opening)
// and after the API stopped (shutdown): every request is answered, never left
// hanging. Real HTTP on 127.0.0.1; the server layer of the service, with a
// stand-in application attached and detached by hand.
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Scope from "effect/Scope"
import * as Server from "../../src/server/Server.js"
import { type Reply, requestUrl, uuidPattern } from "./Http.js"

const correlationId = "5b0c8a3e-1d2f-4c6b-9e7a-0f1e2d3c4b5a"

const expectUnavailable = (reply: Reply, phase: "starting" | "stopping") => {
  expect(reply.status).toBe(503)
  expect(reply.headers.get("content-type")).toBe("application/problem+json")
  expect(reply.headers.get("retry-after")).toBe("1")
  expect(reply.headers.get("connection")).toBe("close")
  expect(JSON.parse(reply.text)).toEqual({
    type: "urn:effect-command-bus:problem:ServiceUnavailable",
    title: "Service unavailable",
    status: 503,
    detail: `The service is ${phase}; retry shortly`,
    code: "ServiceUnavailable",
    phase
  })
}

describe("HTTP server while the API does not serve", () => {
  it.scoped(
    "answers 503 ServiceUnavailable before the API attaches and after it detaches",
    () =>
      Effect.gen(function*() {
        // The service's log lines: one per answer, as the edge writes one per request.
        const logged: Array<{ readonly message: unknown; readonly status: unknown; readonly correlationId: unknown }> =
          []
        const capture = Logger.replace(
          Logger.defaultLogger,
          Logger.make(({ annotations, message }) =>
            logged.push({
              message: Array.isArray(message) ? message[0] : message,
              status: HashMap.unsafeGet(annotations, "status"),
              correlationId: HashMap.unsafeGet(annotations, "correlationId")
            })
          )
        )
        const context = yield* Layer.build(
          Server.HttpServerLive.pipe(
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({ PORT: "0", HOST: "127.0.0.1" }))),
            Layer.provide(capture)
          )
        )
        const server = yield* Effect.provide(HttpServer.HttpServer, context)
        if (server.address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
        const base = `http://127.0.0.1:${server.address.port}`

        // Listening, nothing attached: the service is starting.
        const early = yield* requestUrl("POST", `${base}/api/v1/orders`, {
          json: { customer_id: "x" },
          headers: { "x-correlation-id": correlationId }
        })
        expectUnavailable(early, "starting")
        expect(early.headers.get("x-correlation-id")).toBe(correlationId)
        const generated = yield* requestUrl("GET", `${base}/health/ready`)
        expectUnavailable(generated, "starting")
        expect(generated.headers.get("x-correlation-id")).toMatch(uuidPattern)
        const live = yield* requestUrl("GET", `${base}/health/live`)
        expect(live.status).toBe(200)
        expect(JSON.parse(live.text)).toEqual({ status: "ok" })
        expect(logged).toEqual([
          { message: "http.request", status: 503, correlationId },
          { message: "http.request", status: 503, correlationId: generated.headers.get("x-correlation-id") },
          { message: "http.request", status: 200, correlationId: live.headers.get("x-correlation-id") }
        ])

        // The application attached: it alone answers.
        const serving = yield* Scope.make()
        yield* server.serve(HttpServerResponse.text("from the application")).pipe(Scope.extend(serving))
        const served = yield* requestUrl("GET", `${base}/health/ready`)
        expect(served.status).toBe(200)
        expect(served.text).toBe("from the application")
        const servedLive = yield* requestUrl("GET", `${base}/health/live`)
        expect(servedLive.text).toBe("from the application")

        // The application detached (shutdown), the port still open: stopping.
        yield* Scope.close(serving, Exit.void)
        expectUnavailable(yield* requestUrl("GET", `${base}/api/v1/orders/1`), "stopping")
        expect((yield* requestUrl("GET", `${base}/health/live`)).status).toBe(200)
      }),
    { timeout: 60_000 }
  )
})
