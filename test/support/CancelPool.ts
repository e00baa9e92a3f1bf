/**
 * A pool of one connection as `PgPool` makes it (prepared statements,
 * cancels routed by `routeCancels`), a client on it, and a relay that holds
 * cancel requests back: for the tests of what a cancel reaches.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Net from "node:net"
import Pg from "pg"
import { routeCancels } from "../../src/internal/pgCancel.js"
import * as PgPreparedClient from "../../src/sql/PgPreparedClient.js"
import * as TestDatabase from "./Database.js"

/** A pool of one connection to `url` (default the test server), ended with the scope. */
export const onePool = (url: string | undefined = TestDatabase.serverUrl) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const pool = new Pg.Pool({ Client: PgPreparedClient.make(), connectionString: url, max: 1 })
      pool.on("error", () => {})
      routeCancels(pool)
      return pool
    }),
    (pool) => Effect.promise(() => pool.end())
  )

/** `f` with a client on `pool`, provided as the `SqlClient` too. */
export const withClient = <A, E, R>(pool: Pg.Pool, f: (sql: SqlClient.SqlClient) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    PgClient.fromPool({ acquire: Effect.succeed(pool) }).pipe(Effect.provide(Reactivity.layer)),
    (sql) => Effect.provideService(f(sql), SqlClient.SqlClient, sql)
  )

const cancelRequestCode = 80877102

/**
 * A TCP relay on 127.0.0.1 to the test server that holds each cancel request
 * for `delay` ms before passing it on, as a slow network or a loaded server's
 * fork of the process that takes it does; the server's URL through it. Half
 * open, as the server is: the cancel's connection closes when the server has
 * the request, not when its sender is done writing.
 */
export const slowCancels = (delay: number) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.async<Net.Server>((resume) => {
        const target = new URL(TestDatabase.serverUrl!)
        const server = Net.createServer({ allowHalfOpen: true }, (inbound) => {
          const outbound = Net.connect(Number(target.port || 5432), target.hostname)
          inbound.on("error", () => outbound.destroy())
          outbound.on("error", () => inbound.destroy())
          inbound.once("data", (head: Buffer) => {
            const pass = () => {
              outbound.write(head)
              inbound.pipe(outbound).pipe(inbound)
            }
            if (head.length >= 8 && head.readInt32BE(4) === cancelRequestCode) setTimeout(pass, delay)
            else pass()
          })
        })
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
      }),
      (server) => Effect.sync(() => server.close())
    ),
    (server) => {
      const url = new URL(TestDatabase.serverUrl!)
      url.hostname = "127.0.0.1"
      url.port = String((server.address() as Net.AddressInfo).port)
      return url.toString()
    }
  )

/**
 * On a pool of one connection whose cancels reach the server `cancelDelay`
 * ms late: a `pg_sleep(0.3)` interrupted at 100 ms (its answer comes before
 * its cancel arrives), then, waiting for the connection, a statement that
 * sleeps `nextSeconds`; what that statement returned (`[{ who: "next" }]`),
 * or how it failed.
 */
export const nextAfterSlowCancel = (cancelDelay: number, nextSeconds: number) =>
  Effect.gen(function*() {
    const pool = yield* onePool(yield* slowCancels(cancelDelay))
    return yield* withClient(pool, (sql) =>
      Effect.gen(function*() {
        const first = yield* Effect.fork(sql`SELECT pg_sleep(0.3)`)
        yield* Effect.sleep("100 millis")
        const interrupted = yield* Effect.fork(Fiber.interrupt(first))
        yield* Effect.sleep("50 millis")
        const next = yield* sql`SELECT 'next' AS who FROM pg_sleep(${nextSeconds})`
        yield* Fiber.join(interrupted)
        return next
      }))
  })
