/**
 * What a Redis deployment does to the store beyond an outage: a failover
 * behind a stable address (a managed Redis, a proxy), a database number the
 * server lacks, a timeout longer than a timer holds. Each on `redis-server`s
 * of its own, started on loopback; skipped without `redis-server` on PATH.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { Redis } from "ioredis"
import { randomUUID } from "node:crypto"
import * as Net from "node:net"
import { CommandError, type Idempotency } from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import * as RedisServer from "./RedisServer.js"

const claim = (store: Idempotency.Store) =>
  Effect.exit(store.claim({
    scope: "u",
    key: randomUUID(),
    fingerprint: "f",
    commandType: "C",
    lease: Duration.seconds(30),
    retention: Duration.minutes(1)
  }))

const unavailableOf = <A, E>(exit: Exit.Exit<A, E>) => {
  assert(Exit.isFailure(exit), "expected a failure")
  const failure = Option.getOrUndefined(Cause.failureOption(exit.cause))
  assert.instanceOf(failure, CommandError.StoreUnavailable)
  return failure
}

/** A TCP proxy on loopback to `target.port`, which a test may point elsewhere; closed with the scope. */
const proxyTo = (target: { port: number }) =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: Net.Server; readonly sockets: Set<Net.Socket> }>((resume) => {
      const sockets = new Set<Net.Socket>()
      const server = Net.createServer((client) => {
        const upstream = Net.createConnection({ host: "127.0.0.1", port: target.port })
        for (const socket of [client, upstream]) {
          sockets.add(socket)
          socket.on("close", () => sockets.delete(socket))
        }
        client.pipe(upstream).pipe(client)
        client.on("error", () => upstream.destroy())
        upstream.on("error", () => client.destroy())
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
    }),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  )

const redisServer = Effect.acquireRelease(
  Effect.promise(() => RedisServer.start()),
  (server) => Effect.promise(() => server.stop())
)

describe.skipIf(!RedisServer.available())("the Redis store's deployment edges", () => {
  // Its old connection stayed on the demoted node, which refuses writes
  // (READONLY): 503 for as long as the connection lived.
  it.scopedLive(
    "after a failover behind its address, it connects to the new primary and serves again",
    () =>
      Effect.gen(function*() {
        const a = yield* redisServer
        const b = yield* redisServer
        const target = { port: a.port }
        const proxy = yield* proxyTo(target)
        const port = (proxy.server.address() as Net.AddressInfo).port
        const store = yield* RedisIdempotencyStore.make({ url: `redis://127.0.0.1:${port}`, timeout: "1 second" })
        assert.isTrue(Exit.isSuccess(yield* claim(store)))
        // b is the primary now, behind the same address; a is its replica.
        target.port = b.port
        const demote = new Redis(a.url, { maxRetriesPerRequest: 1 })
        yield* Effect.promise(() => demote.replicaof("127.0.0.1", String(b.port)).finally(() => demote.quit()))
        const exits: Array<Exit.Exit<unknown, unknown>> = []
        for (let i = 0; i < 20 && !exits.some(Exit.isSuccess); i++) {
          exits.push(yield* claim(store))
          if (!Exit.isSuccess(exits[exits.length - 1]!)) yield* Effect.sleep("250 millis")
        }
        assert.isTrue(exits.some(Exit.isSuccess), `every claim failed: ${String(exits[0])}`)
      }).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.None))),
    60_000
  )

  // The client went on in database 0 after its SELECT failed, among other
  // tenants' keys.
  it.scopedLive(
    "a database number the server does not have fails every call, and says so",
    () =>
      Effect.gen(function*() {
        const server = yield* redisServer
        const store = yield* RedisIdempotencyStore.make({ url: `${server.url}/99`, timeout: "1 second" })
        expect(unavailableOf(yield* claim(store)).reason).toMatch(/cannot select the database of REDIS_URL/)
        const raw = new Redis(server.url, { maxRetriesPerRequest: 1 })
        const keys = yield* Effect.promise(() => raw.keys("*").finally(() => raw.quit()))
        expect(keys).toEqual([])
      }).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.None))),
    30_000
  )

  // Node fires a timer of more than 2^31 - 1 ms at once: calls failed at
  // random ("no reply within 2592000000 ms"), or never connected.
  it.scopedLive("a timeout longer than a timer holds is a long one, not none", () =>
    Effect.gen(function*() {
      const server = yield* redisServer
      for (const timeout of ["30 days", Duration.infinity] as const) {
        const store = yield* RedisIdempotencyStore.make({ url: server.url, timeout })
        for (let i = 0; i < 5; i++) assert.isTrue(Exit.isSuccess(yield* claim(store)), String(timeout))
      }
    }), 30_000)

  it("a URL with anything but a host, a port, a database number and family is refused", () => {
    for (
      const url of [
        "redis://127.0.0.1:6379/abc",
        "redis://127.0.0.1:99999",
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:6379?maxRetriesPerRequest=5",
        "redis://127.0.0.1:6379?family=5",
        "http://127.0.0.1:6379",
        "redis://:6379",
        // TLS or not is read from the URL as written: these would go without.
        "REDISS://127.0.0.1:6379",
        " rediss://127.0.0.1:6379"
      ]
    ) expect(RedisIdempotencyStore.urlProblem(url), url).toBeDefined()
    for (
      const url of [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://user:secret@cache.internal:6380/2",
        "rediss://cache.internal?family=6",
        "redis://[::1]:6379/0"
      ]
    ) expect(RedisIdempotencyStore.urlProblem(url), url).toBeUndefined()
  })
})
