// Network partition: the database stops answering but keeps its connections
// open (a frozen server, a failover that drops packets). PostgreSQL's
// statement_timeout cannot end a statement whose answer never comes back, so
// before, a request waited as long as the kernel kept the socket (many
// minutes): no answer past COMMAND_TIMEOUT, and SIGTERM never exited. Now a
// statement with no answer past DB_STATEMENT_TIMEOUT (and a margin) closes
// its connection: the request answers 503, readiness says 503, and the
// service shuts down, all while the partition lasts.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Postgres from "../support/Postgres.js"
import {
  codeOf,
  createRequest,
  frozenProxy,
  type Outcome,
  send,
  sendCreate,
  serviceEnv,
  setStock,
  skipReason,
  sleep,
  spawn,
  title,
  token
} from "./Harness.js"

describe.skipIf(skipReason !== undefined)(title("faults: database partitioned"), () => {
  it.scoped(
    "requests answer 503, readiness 503, and SIGTERM exits 0 while the database does not answer",
    () =>
      Effect.gen(function*() {
        const cluster = yield* Postgres.scoped()
        const proxy = yield* frozenProxy(cluster.url)
        const service = yield* spawn(serviceEnv(proxy.url, {
          COMMAND_TIMEOUT: "2 seconds",
          DB_STATEMENT_TIMEOUT: "1 second",
          SHUTDOWN_TIMEOUT: "2 seconds"
        }))
        const result = yield* Effect.promise(async () => {
          await setStock(service.baseUrl, "partitioned", 100)
          const alice = await token("partition-alice")
          const warm = await sendCreate(
            service.baseUrl,
            createRequest("warm", "partition-alice", [{ product_id: "partitioned", quantity: 1 }])
          )
          proxy.freeze()
          // Each bounded well past what the service's own bounds allow; before,
          // none of them was answered within it.
          const [ready, created, stock] = await Promise.all([
            send(service.baseUrl, "GET", "/health/ready", { timeoutMs: 20_000 }),
            sendCreate(
              service.baseUrl,
              createRequest("during", "partition-alice", [{ product_id: "partitioned", quantity: 1 }]),
              20_000
            ),
            send(service.baseUrl, "GET", "/api/v1/products/partitioned/stock", { token: alice, timeoutMs: 20_000 })
          ])
          process.kill(service.child.pid!, "SIGTERM")
          const exit = await Promise.race([service.exited, sleep(25_000).then(() => "still running")])
          return { warm, ready, created, stock, exit }
        })
        expect(result.warm._tag === "Reply" && result.warm.status).toBe(201)
        const answers: ReadonlyArray<readonly [string, Outcome]> = [
          ["ready", result.ready],
          ["create", result.created],
          ["stock", result.stock]
        ]
        for (const [name, outcome] of answers) {
          expect(outcome._tag === "Reply" ? outcome.status : outcome, name).toBe(503)
          expect(outcome._tag === "Reply" && outcome.headers.get("retry-after"), name).toBe("1")
        }
        expect(["CommandTimeout", "StoreUnavailable"]).toContain(codeOf(result.created))
        expect(result.exit).toBe(0)
      }),
    { timeout: 120_000 }
  )
})
