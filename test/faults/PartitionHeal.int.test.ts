// A partition that heals. A statement written to a connection that the
// answer timeout then closed must not reach the database afterwards: the
// claim of a keyed request answered 503 landed when the network healed, and
// its retry got 409 IdempotencyKeyInFlight for the whole lease. The
// connection is now closed with a reset, which drops what was not delivered.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import * as Postgres from "../support/Postgres.js"
import { codeOf, createRequest, sendCreate, serviceEnv, setStock, skipReason, sleep, spawn, title } from "./Harness.js"

/** Partition.int.test.ts's frozenProxy, plus unfreeze(): forwarding resumes on every connection. */
const frozenProxy = (target: URL) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      let frozen = false
      const pairs = new Set<{ client: Net.Socket; upstream: Net.Socket; piped: boolean }>()
      const server = Net.createServer((client) => {
        const upstream = Net.connect(Number(target.port || 5432), target.hostname)
        const pair = { client, upstream, piped: !frozen }
        pairs.add(pair)
        if (frozen) client.pause()
        else {
          client.pipe(upstream)
          upstream.pipe(client)
        }
        const end = () => {
          client.destroy()
          upstream.destroy()
          pairs.delete(pair)
        }
        client.on("error", end).on("close", end)
        upstream.on("error", end).on("close", end)
      })
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      return {
        port: (server.address() as Net.AddressInfo).port,
        freeze: () => {
          frozen = true
          for (const pair of pairs) {
            pair.client.unpipe(pair.upstream)
            pair.upstream.unpipe(pair.client)
            pair.client.pause()
            pair.upstream.pause()
            pair.piped = false
          }
        },
        unfreeze: () => {
          frozen = false
          for (const pair of pairs) {
            if (!pair.piped) {
              pair.client.pipe(pair.upstream)
              pair.upstream.pipe(pair.client)
              pair.piped = true
            }
            pair.client.resume()
            pair.upstream.resume()
          }
        },
        close: () => {
          server.close()
          for (const { client, upstream } of pairs) {
            client.destroy()
            upstream.destroy()
          }
        }
      }
    }),
    (proxy) => Effect.sync(proxy.close)
  )

describe.skipIf(skipReason !== undefined)(title("faults: database partition heals"), () => {
  it.scoped(
    "a keyed request answered 503 during the partition runs again on its retry once it heals",
    () =>
      Effect.gen(function*() {
        const cluster = yield* Postgres.scoped()
        const proxy = yield* frozenProxy(new URL(cluster.url))
        const viaProxy = new URL(cluster.url)
        viaProxy.host = `127.0.0.1:${proxy.port}`
        const service = yield* spawn(serviceEnv(viaProxy.toString(), {
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
