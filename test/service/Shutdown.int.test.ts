/**
 * A request in flight when SIGTERM arrives (its headers read, its body still
 * coming) is finished, with its database still open: the service stops
 * accepting, finishes in-flight requests (up to SHUTDOWN_TIMEOUT), then
 * stops the relay, closes the pool and exits 0.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import * as Auth from "../../src/server/Auth.js"
import * as TestDatabase from "../support/Database.js"
import * as Process from "../support/Process.js"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe(`graceful shutdown (${TestDatabase.kind})`, () => {
  it.scoped("finishes a request whose body arrives after SIGTERM", () =>
    Effect.gen(function*() {
      const dataDir = yield* TestDatabase.tempDir("ecb-inflight")
      const env = TestDatabase.serviceEnv(dataDir, { SHUTDOWN_TIMEOUT: "10 seconds" })
      yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
      const admin = yield* Effect.promise(() =>
        Auth.sign({ secret: new TextEncoder().encode(env.JWT_SECRET!), sub: "admin", roles: ["admin"] })
      )
      const service = yield* Process.spawnScoped(env)
      const port = Number(new URL(service.baseUrl).port)
      const { exitCode, response } = yield* Effect.promise(async () => {
        const body = JSON.stringify({ available: 7 })
        const socket = Net.connect(port, "127.0.0.1")
        await new Promise((resolve) => socket.once("connect", resolve))
        let response = ""
        socket.on("data", (chunk: Buffer) => response += chunk.toString())
        const closed = new Promise((resolve) => socket.once("close", resolve))
        socket.write(
          `PUT /api/v1/products/sku-1/stock HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${admin}\r\n` +
            `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`
        )
        await sleep(300)
        process.kill(service.child.pid!, "SIGTERM")
        await sleep(1_000)
        socket.write(body)
        await Promise.race([closed, sleep(15_000)])
        socket.destroy()
        return { response, exitCode: await Promise.race([service.exited, sleep(20_000).then(() => "timeout")]) }
      })
      expect(response.split("\r\n")[0]).toBe("HTTP/1.1 200 OK")
      expect(exitCode).toBe(0)
    }), { timeout: 120_000 })
})
