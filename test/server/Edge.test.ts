/**
 * The HTTP edge without a service: an unmapped failure (a 500) is logged
 * with the correlation id the client gets back, so the two can be matched.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import type * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as HashMap from "effect/HashMap"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { createServer } from "node:http"
import * as Net from "node:net"
import * as Http from "../../src/server/Http.js"
import * as Observability from "../../src/server/Observability.js"
import { answerClientErrors } from "../../src/server/Server.js"

describe("the HTTP edge", () => {
  it.effect("logs the cause of a 500 with the request's correlation id", () =>
    Effect.gen(function*() {
      const lines: Array<{ readonly message: unknown; readonly correlationId: unknown }> = []
      const capture = Logger.make(({ annotations, message }) => {
        lines.push({
          message: Array.isArray(message) ? message[0] : message,
          correlationId: Option.getOrUndefined(HashMap.get(annotations, "correlationId"))
        })
      })
      const correlationId = "1b4e28ba-2d11-4d6c-8a4e-6c1f3a9a1e10"
      const edge = Http.edge({
        bodyLimit: 1024,
        routes: Observability.makeRouteTable([{ method: "GET", path: "/api/v1/boom" }])
      })
      const broken = Effect.die(new Error("a bug")) as Effect.Effect<HttpServerResponse.HttpServerResponse>
      const response = yield* edge(broken).pipe(
        Effect.provideService(
          HttpServerRequest.HttpServerRequest,
          HttpServerRequest.fromWeb(
            new Request("http://127.0.0.1/api/v1/boom", { headers: { "x-correlation-id": correlationId } })
          )
        ),
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      expect(response.status).toBe(500)
      expect(lines).toContainEqual({ message: "http.unhandled", correlationId })
    }))
})

describe("answers to what Node's parser refuses", () => {
  // The refused bytes leave an unfinished message in the parser, which Node
  // times out after `requestTimeout`: that said nothing of the answer before
  // it, which may take longer (a commit), and was cut off unsent.
  it("a refusal waiting behind a request that runs past REQUEST_TIMEOUT waits for its answer", async () => {
    const server = createServer(
      { connectionsCheckingInterval: 250, requireHostHeader: false },
      (_request, response) => {
        setTimeout(() => response.end("slow done"), 2_000)
      }
    )
    server.requestTimeout = 500
    server.headersTimeout = 500
    answerClientErrors(server)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    try {
      const port = (server.address() as Net.AddressInfo).port
      const received = await new Promise<string>((resolve) => {
        const socket = Net.connect(port, "127.0.0.1")
        let text = ""
        socket.on("data", (chunk) => text += chunk.toString())
        socket.on("error", () => {})
        socket.on("close", () => resolve(text))
        socket.write("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        setTimeout(() => socket.write("GARBAGE\r\n\r\n"), 100)
      })
      expect(received).toContain("slow done")
      expect(received.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 200", "HTTP/1.1 400"])
    } finally {
      server.closeAllConnections()
      server.close()
    }
  }, 15_000)
})
