/**
 * The library and the service on a PostgreSQL server that takes TLS
 * connections only, as managed PostgreSQL does (see `support/Tls.ts`), with
 * `sslmode=verify-full` and with libpq's `sslmode=require`
 * (`uselibpqcompat=true`: encrypted, not verified): queries, prepared
 * statements, a unit of work, migrations, the relay's LISTEN connection; a
 * statement interrupted is cancelled and the pool goes on; the service
 * takes an order and is ready, and with a CA that did not sign the server's
 * certificate it stops at start saying why, without the password.
 */
import { SqlClient } from "@effect/sql"
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { EventPublisher } from "effect-command-bus"
import { PgPool, SqlMigrations, SqlStores } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import { randomBytes } from "node:crypto"
import * as Auth from "../../src/server/Auth.js"
import * as CounterApp from "../support/CounterApp.js"
import * as TestDatabase from "../support/Database.js"
import * as Process from "../support/Process.js"
import * as TlsServer from "../support/Tls.js"

const { admin, connectionsOf, eventually, password, withParams, withPassword, wrongCa } = TlsServer

/** TLS verified, and TLS as libpq's `require`: encrypted, the certificate not verified. */
const modes = (url: string) => ({
  "verify-full": url,
  "libpq require": withParams(url, { sslmode: "require", uselibpqcompat: "true", sslrootcert: undefined })
})

const bus = CounterApp.bus("5 seconds")
const { Increment, migrations } = CounterApp

const quiet = Logger.minimumLogLevel(LogLevel.None)

describe.skipIf(TlsServer.url === undefined)(`PostgreSQL over TLS, with ${TlsServer.skipReason}`, () => {
  for (const [mode, url] of Object.entries(TlsServer.url === undefined ? {} : modes(TlsServer.url))) {
    it.scopedLive(
      `${mode}: queries, prepared statements, a unit of work, migrations and the relay's LISTEN`,
      () =>
        Effect.gen(function*() {
          const schema = yield* TlsServer.scopedSchema()
          const applicationName = `tls-app-${randomBytes(4).toString("hex")}`
          // A poll interval longer than the test: only the commit's
          // notification, on the relay's LISTEN connection, publishes in time.
          const context = yield* Layer.build(
            SqlStores.layer({ relay: { pollInterval: "10 minutes" } }).pipe(
              Layer.provideMerge(Layer.effectDiscard(migrations)),
              Layer.provideMerge(PgPool.layer({ url: Redacted.make(withPassword(url)), schema, applicationName })),
              Layer.provide(quiet)
            )
          )
          const sql = Context.get(context, SqlClient.SqlClient)
          const published = yield* Effect.provide(
            Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe),
            context
          )
          yield* eventually(
            connectionsOf(applicationName),
            (rows) => rows.some((row) => row.query.startsWith("LISTEN"))
          )

          // A unit of work (BEGIN with its first statement, writes held for COMMIT).
          expect(yield* Effect.provide(bus.dispatch(new Increment({ counter: "c", by: 2 })), context)).toEqual({
            value: 2
          })
          const event = yield* Queue.take(published).pipe(Effect.timeout("10 seconds"))
          expect(event).toMatchObject({ type: "Incremented", aggregateId: "c" })
          expect(yield* sql`SELECT value FROM counters WHERE id = ${"c"}`).toEqual([{ value: 2 }])

          // A statement with parameters is a named prepared statement.
          const prepared = yield* sql.withTransaction(
            Effect.zipRight(
              sql`SELECT ${3}::int AS n`,
              sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM pg_prepared_statements`
            )
          )
          expect(prepared[0]!.n).toBeGreaterThan(0)

          // Every connection, the pool's and the relay's listen, is encrypted.
          const connections = yield* connectionsOf(applicationName)
          expect(connections.length).toBeGreaterThanOrEqual(2)
          expect(connections.every((row) => row.ssl)).toBe(true)
        }),
      60_000
    )

    it.scopedLive(
      `${mode}: an interrupted statement is cancelled on the server, and the pool goes on`,
      () =>
        Effect.gen(function*() {
          const applicationName = `tls-cancel-${randomBytes(4).toString("hex")}`
          const context = yield* Layer.build(PgPool.layer({ url, poolSize: 1, applicationName }))
          const sql = Context.get(context, SqlClient.SqlClient)
          const sleeping = yield* Effect.fork(sql`SELECT pg_sleep(30)`)
          yield* eventually(connectionsOf(applicationName), (rows) => rows.some((row) => row.state === "active"))
          yield* Fiber.interrupt(sleeping)
          // The server ended the statement: a cancel that did not arrive leaves it 30 s.
          const after = yield* eventually(
            connectionsOf(applicationName),
            (rows) => rows.every((row) => row.state !== "active")
          )
          expect(after.length).toBe(1)
          expect(yield* sql`SELECT 1 AS one`.pipe(Effect.timeout("10 seconds"))).toEqual([{ one: 1 }])
        }),
      60_000
    )
  }

  it.scopedLive(
    "a CA that did not sign the server's certificate: a fast SqlError with the reason, no password",
    () =>
      Effect.gen(function*() {
        const dir = yield* TestDatabase.tempDir("ecb-tls")
        const url = withPassword(withParams(TlsServer.url!, { sslrootcert: wrongCa(dir) }))
        const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url) }))
        const sql = Context.get(context, SqlClient.SqlClient)
        const error = yield* Effect.flip(sql`SELECT 1`.pipe(Effect.timeout("10 seconds")))
        expect(error).toBeInstanceOf(SqlError)
        const reason = `${error.message}: ${String((error as SqlError).cause)}`
        expect(reason).toMatch(/certificate/)
        expect(reason).not.toContain(password)
        const migrated = yield* Effect.flip(
          Effect.provide(SqlMigrations.run, context).pipe(Effect.timeout("10 seconds"))
        )
        expect(migrated).toBeInstanceOf(SqlError)
      }),
    60_000
  )

  it.scopedLive(
    "the service: an order over HTTP, ready; with a wrong CA it stops at start, exit 1, saying why",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-tls-service")
        const schema = `t_tls_${randomBytes(6).toString("hex")}`
        yield* Effect.addFinalizer(() => Effect.ignore(admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)))
        const env = TestDatabase.serviceEnv(dataDir, {
          DATABASE_URL: withPassword(TlsServer.url!),
          DATABASE_SCHEMA: schema
        })
        const service = yield* Process.spawnScoped(env)
        const secret = new TextEncoder().encode(env.JWT_SECRET!)
        const bearer = (sub: string, roles: ReadonlyArray<string>) =>
          Effect.promise(() => Auth.sign({ secret, sub, roles })).pipe(Effect.map((token) => `Bearer ${token}`))
        const request = (path: string, init: RequestInit = {}) =>
          Effect.promise(async () => {
            const response = await fetch(`${service.baseUrl}${path}`, init)
            return { status: response.status, body: await response.text() }
          })
        const stock = yield* request("/api/v1/products/sku-1/stock", {
          method: "PUT",
          headers: { Authorization: yield* bearer("admin", [Auth.adminRole]), "Content-Type": "application/json" },
          body: JSON.stringify({ available: 5 })
        })
        expect(stock.status).toBe(200)
        const order = yield* request("/api/v1/orders", {
          method: "POST",
          headers: {
            Authorization: yield* bearer("alice", []),
            "Content-Type": "application/json",
            "Idempotency-Key": "tls-order-1"
          },
          body: JSON.stringify({
            customer_id: "3f1c9c3e-8a5b-4c1e-9d2f-6b7a8c9d0e1f",
            items: [{ product_id: "sku-1", quantity: 2 }],
            shipping_address: { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }
          })
        })
        expect(order.status).toBe(201)
        expect((yield* request("/health/ready")).status).toBe(200)
        // The relay published the order's events, woken on its TLS LISTEN connection.
        yield* eventually(
          admin<{ readonly n: number }>(`SELECT count(*)::int AS n FROM ${schema}.outbox WHERE position IS NULL`),
          (rows) => rows[0]!.n === 0
        )

        // A CA that did not sign the server's certificate: the start fails,
        // in a line saying why, with exit code 1 and no password.
        const wrong = yield* Effect.exit(
          Process.spawnService({
            ...env,
            DATABASE_URL: withPassword(withParams(TlsServer.url!, { sslrootcert: wrongCa(dataDir) }))
          }, { timeoutMs: 30_000 }).pipe(Effect.flatMap((started) => Process.stop(started, "SIGKILL")))
        )
        // spawnService rejects when the process exits before it is ready.
        const message = Exit.isFailure(wrong) ? String(Cause.squash(wrong.cause)) : "started"
        expect(message).toMatch(/service exited \(1\) before ready/)
        expect(message).toMatch(/"database\.(failed|unavailable)"/)
        expect(message).toMatch(/certificate/)
        expect(message).not.toContain(password)
      }),
    90_000
  )

  it.scopedLive(
    "the service with DATABASE_CA (the CA as text) and no TLS settings in the URL: verified TLS, ready, stock set",
    () =>
      Effect.gen(function*() {
        const dataDir = yield* TestDatabase.tempDir("ecb-tls-ca")
        const schema = `t_tls_${randomBytes(6).toString("hex")}`
        yield* Effect.addFinalizer(() => Effect.ignore(admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)))
        const plain = withParams(TlsServer.url!, { sslmode: undefined, sslrootcert: undefined })
        const env = TestDatabase.serviceEnv(dataDir, {
          DATABASE_URL: plain,
          DATABASE_SCHEMA: schema,
          // One line, as an environment file holds it.
          DATABASE_CA: TlsServer.caText().trim().replaceAll("\n", "\\n")
        })
        const service = yield* Process.spawnScoped(env)
        const token = yield* Effect.promise(() =>
          Auth.sign({ secret: new TextEncoder().encode(env.JWT_SECRET!), sub: "admin", roles: [Auth.adminRole] })
        )
        const stock = yield* Effect.promise(async () => {
          const response = await fetch(`${service.baseUrl}/api/v1/products/sku-ca/stock`, {
            method: "PUT",
            headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
            body: JSON.stringify({ available: 3 })
          })
          return response.status
        })
        expect(stock).toBe(200)
        // Over TLS: the server takes nothing else.
        const rows = yield* admin<{ readonly available: number }>(
          `SELECT available FROM ${schema}.inventory WHERE product_id = 'sku-ca'`
        )
        expect(rows).toEqual([{ available: 3 }])
      }),
    60_000
  )
})
