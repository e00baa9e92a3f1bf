/**
 * A request in flight when SIGTERM arrives (its headers read, its body still
 * coming) is finished, with its database still open: the service stops
 * accepting, finishes in-flight requests (up to SHUTDOWN_TIMEOUT), then
 * stops the relay, closes the pool and exits 0. One still running at
 * SHUTDOWN_TIMEOUT is interrupted: it rolls back, releases its idempotency
 * key and answers 503, and the service exits without waiting for it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import Pg from "pg"
import * as Auth from "../../src/server/Auth.js"
import * as TestDatabase from "../support/Database.js"
import * as Process from "../support/Process.js"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * On the server: the service with `SHUTDOWN_TIMEOUT` 1 s (and command and
 * statement timeouts far above it), `product` stocked with 10, a token of
 * alice's, and a session of the test in the service's schema.
 */
const serviceWithStock = (prefix: string, product: string) =>
  Effect.gen(function*() {
    const dataDir = yield* TestDatabase.tempDir(prefix)
    const env = TestDatabase.serviceEnv(dataDir, {
      SHUTDOWN_TIMEOUT: "1 second",
      COMMAND_TIMEOUT: "60 seconds",
      DB_STATEMENT_TIMEOUT: "60 seconds"
    })
    yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
    const sign = (sub: string, roles: Array<string>) =>
      Auth.sign({ secret: new TextEncoder().encode(env.JWT_SECRET!), sub, roles })
    const service = yield* Process.spawnScoped(env)
    const db = new Pg.Client(TestDatabase.serverUrl)
    yield* Effect.acquireRelease(Effect.promise(() => db.connect()), () => Effect.promise(() => db.end()))
    const alice = yield* Effect.promise(async () => {
      const stocked = await fetch(`${service.baseUrl}/api/v1/products/${product}/stock`, {
        method: "PUT",
        headers: { authorization: `Bearer ${await sign("admin", ["admin"])}`, "content-type": "application/json" },
        body: JSON.stringify({ available: 10 })
      })
      expect(stocked.status).toBe(200)
      await db.query(`SET search_path = "${env.DATABASE_SCHEMA}"`)
      return sign("alice", [])
    })
    return { alice, db, service }
  })

/** An order of one `product`, with `key` as its Idempotency-Key when given: its status and body. */
const postOrder = (baseUrl: string, token: string, product: string, key?: string) =>
  fetch(`${baseUrl}/api/v1/orders`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
      ...(key === undefined ? {} : { "idempotency-key": key })
    },
    body: JSON.stringify({
      customer_id: "3f1c9c3e-8a5b-4c1e-9d2f-6b7a8c9d0e1f",
      items: [{ product_id: product, quantity: 1 }],
      shipping_address: { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }
    })
  }).then(async (response) => ({
    status: response.status,
    body: await response.json() as { readonly order_id?: string }
  }))

/** Whether `count` (a query of one row with `n`) came above 0 within 5 seconds. */
const seen = async (db: Pg.Client, count: string): Promise<boolean> => {
  for (let i = 0; i < 100; i++) {
    if ((await db.query(count)).rows[0].n > 0) return true
    await sleep(50)
  }
  return false
}

/** SIGTERM, then the exit code, or "still running" after 20 seconds. */
const stopped = (service: Process.ServiceProcess) => {
  process.kill(service.child.pid!, "SIGTERM")
  return Promise.race([service.exited, sleep(20_000).then(() => "still running")])
}

describe(`graceful shutdown (${TestDatabase.kind})`, () => {
  // Node's closeIdleConnections leaves a connection that never sent a
  // request: the server's close waited for SHUTDOWN_TIMEOUT's timer on it.
  it.scoped("does not wait on a connection that has sent no request (a preconnect)", () =>
    Effect.gen(function*() {
      const dataDir = yield* TestDatabase.tempDir("ecb-preconnect")
      // Far longer than the stop below waits: only an exit that does not wait for it passes.
      const env = TestDatabase.serviceEnv(dataDir, { SHUTDOWN_TIMEOUT: "10 minutes" })
      yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
      const service = yield* Process.spawnScoped(env)
      const { closed } = yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1")
          socket.on("error", () => {})
          const closed = new Promise((resolve) => socket.once("close", resolve))
          await new Promise((resolve) => socket.once("connect", resolve))
          return { socket, closed }
        }),
        ({ socket }) => Effect.sync(() => socket.destroy())
      )
      expect(yield* Process.stop(service, "SIGTERM", 60_000)).toBe(0)
      yield* Effect.promise(() => closed)
    }), { timeout: 120_000 })

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
      // Not keep-alive: a client would send its next request on a connection
      // that shutdown then closes unanswered.
      expect(response.slice(0, 400)).toMatch(/^connection: close\r$/im)
      expect(exitCode).toBe(0)
    }), { timeout: 120_000 })

  // Before, the drain's deadline ran in a finalizer, where nothing is
  // interruptible: shutdown waited for the request as long as it ran.
  it.scoped(
    "interrupts a request still running at SHUTDOWN_TIMEOUT: 503 problem, exit 0 without it",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-stuck")
        const env = TestDatabase.serviceEnv(dataDir, { SHUTDOWN_TIMEOUT: "1 second" })
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
        const admin = yield* Effect.promise(() =>
          Auth.sign({ secret: new TextEncoder().encode(env.JWT_SECRET!), sub: "admin", roles: ["admin"] })
        )
        const service = yield* Process.spawnScoped(env)
        const port = Number(new URL(service.baseUrl).port)
        const { exitCode, response } = yield* Effect.promise(async () => {
          // Its body never completes: the request runs until something ends it.
          const socket = Net.connect(port, "127.0.0.1")
          await new Promise((resolve) => socket.once("connect", resolve))
          let response = ""
          socket.on("data", (chunk: Buffer) => response += chunk.toString())
          socket.write(
            `PUT /api/v1/products/sku-1/stock HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${admin}\r\n` +
              `content-type: application/json\r\ncontent-length: 20\r\n\r\n{"avail`
          )
          await sleep(300)
          // Node's own request timeout (30 s) would end it too, later.
          const exitCode = await stopped(service)
          socket.destroy()
          return { response, exitCode }
        })
        expect(exitCode).toBe(0)
        expect(response.split("\r\n")[0]).toBe("HTTP/1.1 503 Service Unavailable")
        expect(response).toMatch(/^retry-after: 1\r$/im)
        expect(response.slice(0, 400)).toMatch(/^connection: close\r$/im)
        expect(JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4))).toMatchObject({
          status: 503,
          code: "ServiceUnavailable",
          phase: "stopping"
        })
      }),
    { timeout: 60_000 }
  )

  it.scoped.skipIf(TestDatabase.serverUrl === undefined)(
    "a command waiting on a lock at SHUTDOWN_TIMEOUT ends as at its deadline: rolled back, key freed; the service exits while the lock is held",
    () =>
      Effect.gen(function*() {
        const { alice, db, service } = yield* serviceWithStock("ecb-locked", "locked")
        const result = yield* Effect.promise(async () => {
          // Another session holds the row the order must reserve, past the service's exit.
          await db.query("BEGIN")
          await db.query("SELECT * FROM inventory WHERE product_id = 'locked' FOR UPDATE")
          const order = postOrder(service.baseUrl, alice, "locked", "k1")
          // The order waits on the lock.
          await seen(
            db,
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%inventory%'"
          )
          const exitCode = await stopped(service)
          await db.query("ROLLBACK")
          const keys = await db.query("SELECT state FROM idempotency_keys")
          const orders = await db.query("SELECT count(*)::int AS n FROM orders")
          const stock = await db.query("SELECT available FROM inventory WHERE product_id = 'locked'")
          return {
            exitCode,
            order: await order,
            keys: keys.rows.map((row) => row.state),
            orders: orders.rows[0].n,
            stock: stock.rows[0].available
          }
        })
        expect(result.exitCode).toBe(0)
        // Cut short as at its deadline.
        expect(result.order.status).toBe(503)
        expect(result.order.body).toMatchObject({ code: "CommandTimeout" })
        // The PUT's key-less record only: the order's key was released, nothing kept.
        expect(result.keys.filter((state) => state !== "completed")).toEqual([])
        expect(result.orders).toBe(0)
        expect(result.stock).toBe(10)
      }),
    { timeout: 60_000 }
  )

  // Before, the drain interrupted it too: the commit went through, and the
  // client was told 503 and to retry (a duplicate order without a key).
  it.scoped.skipIf(TestDatabase.serverUrl === undefined)(
    "a command whose commit is under way at SHUTDOWN_TIMEOUT answers with its outcome: 201, kept",
    () =>
      Effect.gen(function*() {
        const { alice, db, service } = yield* serviceWithStock("ecb-committing", "slow")
        const result = yield* Effect.promise(async () => {
          // A commit that takes 3 s: a deferred trigger that sleeps.
          await db.query(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$"
          )
          await db.query(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED " +
              "FOR EACH ROW EXECUTE FUNCTION slow_commit()"
          )
          const order = postOrder(service.baseUrl, alice, "slow")
          const committing = await seen(
            db,
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'COMMIT' AND state = 'active'"
          )
          const exitCode = await stopped(service)
          const orders = await db.query("SELECT id FROM orders")
          return { committing, exitCode, order: await order, orders: orders.rows.map((row) => row.id) }
        })
        expect(result.committing).toBe(true)
        expect(result.exitCode).toBe(0)
        expect(result.order.status).toBe(201)
        expect(result.orders).toEqual([result.order.body.order_id])
      }),
    { timeout: 60_000 }
  )
})
