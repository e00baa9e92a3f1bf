// The service as a process: start, restart on the same data, graceful stop,
// and refusals of bad configuration.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { type AddressInfo, createServer, type Server } from "node:net"
import * as Auth from "../../src/server/Auth.js"
import * as TestDatabase from "../support/Database.js"
import * as Process from "../support/Process.js"

const json = (response: Response) => Effect.promise(() => response.json() as Promise<any>)
const call = (url: string, init?: RequestInit) => Effect.promise(() => fetch(url, init))

describe(`service lifecycle (${TestDatabase.kind})`, () => {
  it.scoped(
    "keeps committed orders across a restart and stops with exit code 0 on SIGTERM and SIGINT",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-lifecycle")
        const env = TestDatabase.serviceEnv(dataDir)
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
        const secret = new TextEncoder().encode(env.JWT_SECRET!)
        const admin = yield* Effect.promise(() => Auth.sign({ secret, sub: "admin", roles: ["admin"] }))
        const alice = yield* Effect.promise(() => Auth.sign({ secret, sub: "alice" }))

        const first = yield* Process.spawnScoped(env)
        const put = yield* call(`${first.baseUrl}/api/v1/products/sku-1/stock`, {
          method: "PUT",
          headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
          body: JSON.stringify({ available: 5 })
        })
        expect(put.status).toBe(200)
        const created = yield* call(`${first.baseUrl}/api/v1/orders`, {
          method: "POST",
          headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
          body: JSON.stringify({
            customer_id: "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10",
            items: [{ product_id: "sku-1", quantity: 2 }],
            shipping_address: { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }
          })
        })
        expect(created.status).toBe(201)
        const { order_id } = yield* json(created)
        expect(yield* Process.stop(first, "SIGTERM")).toBe(0)

        const second = yield* Process.spawnScoped(env)
        const read = yield* call(`${second.baseUrl}/api/v1/orders/${order_id}`, {
          headers: { authorization: `Bearer ${alice}` }
        })
        expect(read.status).toBe(200)
        expect((yield* json(read)).items).toEqual([{ product_id: "sku-1", quantity: 2 }])
        const stock = yield* call(`${second.baseUrl}/api/v1/products/sku-1/stock`, {
          headers: { authorization: `Bearer ${alice}` }
        })
        expect(yield* json(stock)).toEqual({ product_id: "sku-1", available: 3 })
        expect(yield* Process.stop(second, "SIGINT")).toBe(0)
      }),
    { timeout: 180_000 }
  )

  it.scoped("refuses to start in production without a JWT key", () =>
    Effect.gen(function*() {
      const dataDir = yield* TestDatabase.tempDir("ecb-production")
      const env = { ...TestDatabase.serviceEnv(dataDir), NODE_ENV: "production", JWT_SECRET: undefined }
      yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
      const failure = yield* Effect.flip(Process.spawnService(env, { timeoutMs: 60_000 }).pipe(Effect.sandbox))
      expect(String(failure)).toContain("NODE_ENV=production requires JWT_SECRET")
    }), { timeout: 120_000 })

  it.scoped(
    "stops with exit code 1 and one line naming an unreachable database, no stack trace",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-unreachable")
        // A port nothing listens on: taken, then released.
        const port = yield* Effect.promise(() => Process.freePort())
        const env = {
          ...TestDatabase.serviceEnv(dataDir),
          DATABASE_URL: `postgres://postgres:secret-password@127.0.0.1:${port}/postgres`,
          DATABASE_SCHEMA: undefined,
          DB_CONNECT_TIMEOUT: "2 seconds"
        }
        const failure = String(
          yield* Effect.flip(Process.spawnService(env, { timeoutMs: 60_000 }).pipe(Effect.sandbox))
        )
        expect(failure).toContain("exited (1)")
        const line = failure.split("\n").find((text) => text.includes("database.unavailable"))
        expect(line).toBeDefined()
        const logged = JSON.parse(line!)
        expect(logged.logLevel).toBe("ERROR")
        expect(logged.annotations.database).toBe(`127.0.0.1:${port}/postgres`)
        expect(logged.annotations.reason).toContain("ECONNREFUSED")
        expect(failure).not.toContain("secret-password")
        // The service's own lines (JSON): no stack trace in any of them.
        const logs = failure.split("\n").filter((text) => text.startsWith("{")).join("\n")
        expect(logs).toContain("database.unavailable")
        expect(logs).not.toMatch(/\\n\s+at /)
      }),
    { timeout: 120_000 }
  )

  it.scoped("refuses a bad configuration value, naming it", () =>
    Effect.gen(function*() {
      const dataDir = yield* TestDatabase.tempDir("ecb-badconfig")
      const env = { ...TestDatabase.serviceEnv(dataDir), BODY_LIMIT: "lots", LOG_LEVEL: "loud" }
      const failure = String(
        yield* Effect.flip(Process.spawnService(env, { timeoutMs: 60_000 }).pipe(Effect.sandbox))
      )
      expect(failure).toContain("exited (1)")
      // One line naming every bad setting once, and no stack trace.
      const line = failure.split("\n").find((text) => text.includes("config.invalid"))
      expect(line).toBeDefined()
      const reason: string = JSON.parse(line!).annotations.reason
      expect(reason).toContain("BODY_LIMIT: must be a size like 1048576, 512kb or 1mb")
      expect(reason).toContain("LOG_LEVEL: must be one of")
      expect(reason).not.toContain("BODY_LIMIT.BODY_LIMIT")
      // The service's own lines (JSON): no stack trace in any of them.
      const logs = failure.split("\n").filter((text) => text.startsWith("{")).join("\n")
      expect(logs).not.toMatch(/\\n\s+at /)
    }), { timeout: 120_000 })

  it.scoped(
    "stops with exit code 1 and one line naming the port taken (PORT or METRICS_PORT), no stack trace",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-port-taken")
        const taken = yield* Effect.acquireRelease(
          Effect.async<Server>((resume) => {
            // Answers nothing: the readiness probe must not mistake it for the service.
            const server = createServer((socket) => socket.destroy())
            server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
          }),
          (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
        )
        const port = (taken.address() as AddressInfo).port
        // The API's port, then the metrics listener's: the line names which.
        for (const [setting, named] of [["PORT", undefined], ["METRICS_PORT", "METRICS_PORT: "]] as const) {
          const env = { ...TestDatabase.serviceEnv(dataDir), HOST: "127.0.0.1", [setting]: String(port) }
          yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
          const failure = String(
            yield* Effect.flip(Process.spawnService(env, { timeoutMs: 90_000 }).pipe(Effect.sandbox))
          )
          expect(failure).toContain("exited (1)")
          const line = failure.split("\n").find((text) => text.includes("server.listen_failed"))
          expect(line).toBeDefined()
          const reason: string = JSON.parse(line!).annotations.reason
          expect(reason).toContain(`EADDRINUSE`)
          expect(reason).toContain(`127.0.0.1:${port}`)
          if (named === undefined) expect(reason).not.toContain("METRICS_PORT")
          else expect(reason.startsWith(named)).toBe(true)
          // The service's own lines (JSON): no stack trace in any of them.
          const logs = failure.split("\n").filter((text) => text.startsWith("{")).join("\n")
          expect(logs).not.toMatch(/\\n\s+at /)
        }
      }),
    { timeout: 240_000 }
  )
})
