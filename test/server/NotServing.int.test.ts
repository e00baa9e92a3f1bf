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
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Server from "../../src/server/Server.js"

const fetchBounded = (url: string, init: RequestInit = {}) =>
  Effect.promise(async () => {
    const response = await fetch(url, { ...init, signal: AbortSignal.timeout(5_000) })
    return { response, text: await response.text() }
  })

const correlationId = "5b0c8a3e-1d2f-4c6b-9e7a-0f1e2d3c4b5a"

const expectUnavailable = (
  { response, text }: { readonly response: Response; readonly text: string },
  phase: "starting" | "stopping"
) => {
  expect(response.status).toBe(503)
  expect(response.headers.get("content-type")).toBe("application/problem+json")
  expect(response.headers.get("retry-after")).toBe("1")
  expect(response.headers.get("connection")).toBe("close")
  expect(JSON.parse(text)).toEqual({
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
        const context = yield* Layer.build(
          Server.HttpServerLive.pipe(
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({ PORT: "0", HOST: "127.0.0.1" })))
          )
        )
        const server = yield* Effect.provide(HttpServer.HttpServer, context)
        if (server.address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
        const base = `http://127.0.0.1:${server.address.port}`

        // Listening, nothing attached: the service is starting.
        const early = yield* fetchBounded(`${base}/api/v1/orders`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-correlation-id": correlationId },
          body: JSON.stringify({ customer_id: "x" })
        })
        expectUnavailable(early, "starting")
        expect(early.response.headers.get("x-correlation-id")).toBe(correlationId)
        const generated = yield* fetchBounded(`${base}/health/ready`)
        expectUnavailable(generated, "starting")
        expect(generated.response.headers.get("x-correlation-id")).toMatch(/^[0-9a-f-]{36}$/)
        const live = yield* fetchBounded(`${base}/health/live`)
        expect(live.response.status).toBe(200)
        expect(JSON.parse(live.text)).toEqual({ status: "ok" })

        // The application attached: it alone answers.
        const serving = yield* Scope.make()
        yield* server.serve(HttpServerResponse.text("from the application")).pipe(Scope.extend(serving))
        const served = yield* fetchBounded(`${base}/health/ready`)
        expect(served.response.status).toBe(200)
        expect(served.text).toBe("from the application")
        const servedLive = yield* fetchBounded(`${base}/health/live`)
        expect(servedLive.text).toBe("from the application")

        // The application detached (shutdown), the port still open: stopping.
        yield* Scope.close(serving, Exit.void)
        expectUnavailable(yield* fetchBounded(`${base}/api/v1/orders/1`), "stopping")
        expect((yield* fetchBounded(`${base}/health/live`)).response.status).toBe(200)
      }),
    { timeout: 30_000 }
  )
})
