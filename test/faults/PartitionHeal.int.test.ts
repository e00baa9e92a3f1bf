// A partition that heals. A statement written to a connection that the
// answer timeout then closed must not reach the database afterwards: the
// claim of a keyed request answered 503 landed when the network healed, and
// its retry got 409 IdempotencyKeyInFlight for the whole lease. The
// connection is now closed with a reset, which drops what was not delivered.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Postgres from "../support/Postgres.js"
import {
  codeOf,
  createRequest,
  frozenProxy,
  sendCreate,
  serviceEnv,
  setStock,
  skipReason,
  sleep,
  spawn,
  title
} from "./Harness.js"

describe.skipIf(skipReason !== undefined)(title("faults: database partition heals"), () => {
  it.scoped(
    "a keyed request answered 503 during the partition runs again on its retry once it heals",
    () =>
      Effect.gen(function*() {
        const cluster = yield* Postgres.scoped()
        const proxy = yield* frozenProxy(cluster.url)
        const service = yield* spawn(serviceEnv(proxy.url, {
          COMMAND_TIMEOUT: "2 seconds",
          DB_STATEMENT_TIMEOUT: "1 second"
        }))
        const result = yield* Effect.promise(async () => {
          await setStock(service.baseUrl, "heal", 100)
          const warm = await sendCreate(
            service.baseUrl,
            createRequest("warm", "heal-alice", [{ product_id: "heal", quantity: 1 }])
          )
          proxy.freeze()
          const request = createRequest("during", "heal-alice", [{ product_id: "heal", quantity: 1 }])
          const during = await sendCreate(service.baseUrl, request, 20_000)
          proxy.unfreeze()
          await sleep(2_000) // Retry-After is 1
          const retry = await sendCreate(service.baseUrl, request, 20_000)
          return { warm, during, retry }
        })
        expect(result.warm._tag === "Reply" && result.warm.status).toBe(201)
        expect(result.during._tag === "Reply" && result.during.status).toBe(503)
        // "A command that fails this way leaves no idempotency record; its retry runs again" (README).
        // Before: 409 IdempotencyKeyInFlight, for IDEMPOTENCY_LEASE (1 minute).
        expect([result.retry._tag === "Reply" && result.retry.status, codeOf(result.retry)]).toEqual([201, undefined])
      }),
    { timeout: 60_000 }
  )
})
