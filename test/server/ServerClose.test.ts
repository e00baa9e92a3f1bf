/**
 * The HTTP server's own close, without the service: at shutdown a
 * connection that never sent a request is closed at once (Node's
 * `closeIdleConnections` leaves it, and the server's close would wait on it),
 * but one whose request is already on its way is read and answered, not
 * reset.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Net from "node:net"
import * as Server from "../../src/server/Server.js"

interface Outcome {
  readonly answer: string
  readonly error: string | undefined
}

/**
 * Starts `HttpServerLive` alone, connects, lets the server accept, then
 * (`send`) writes a request and closes the server's scope 30 ms later while
 * the process is busy, so the request's bytes wait in the kernel, unread; or
 * closes it with nothing sent.
 */
const closeWith = (send: boolean) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      Server.HttpServerLive.pipe(
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({ HOST: "127.0.0.1", PORT: "0" })))
      ),
      scope
    )
    const server = Effect.runSync(Effect.provide(HttpServer.HttpServer, context))
    const port = (server.address as { readonly port: number }).port
    return yield* Effect.async<Outcome>((resume) => {
      const socket = Net.connect(port, "127.0.0.1")
      let answer = ""
      let error: string | undefined
      socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")))
      socket.on("error", (cause: NodeJS.ErrnoException) => (error = cause.code))
      socket.on("close", () => resume(Effect.succeed({ answer, error })))
      socket.once("connect", () =>
        setTimeout(() => {
          if (send) socket.write("GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
          // Busy: the bytes reach the server's kernel buffer, and Node has not read them.
          const until = Date.now() + 30
          while (Date.now() < until) {
            // waiting
          }
          Effect.runFork(Scope.close(scope, Exit.void))
        }, 50))
      const timer = setTimeout(() => socket.destroy(), 20_000)
      return Effect.sync(() => {
        clearTimeout(timer)
        socket.destroy()
      })
    }).pipe(Effect.ensuring(Scope.close(scope, Exit.void)))
  })

describe("the HTTP server's close", () => {
  it.live(
    "answers a request sent just before it, and closes a connection that sent none",
    () =>
      Effect.gen(function*() {
        const sent = yield* closeWith(true)
        // Answered (no application is attached here: the fallback's 200 or 503), not reset.
        expect(sent.error).toBeUndefined()
        expect(sent.answer).toMatch(/^HTTP\/1\.1 (200|503) /)
        const idle = yield* closeWith(false)
        expect(idle.answer).toBe("")
      }),
    { timeout: 60_000 }
  )
})
