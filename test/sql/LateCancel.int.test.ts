/**
 * A cancel request that does not arrive in time (5 seconds: a slow network,
 * a loaded server's fork of the process that takes it) may still arrive
 * after: the connection it was for must not serve another statement then.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Net from "node:net"
import Pg from "pg"
import { routeCancels } from "../../src/internal/pgCancel.js"
import * as PgPreparedClient from "../../src/sql/PgPreparedClient.js"
import * as TestDatabase from "../support/Database.js"

const cancelRequestCode = 80877102

/** A relay to the server that holds each cancel request `delay` ms; the server's URL through it. */
const slowCancels = (delay: number) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.async<Net.Server>((resume) => {
        const target = new URL(TestDatabase.serverUrl!)
        const server = Net.createServer({ allowHalfOpen: true }, (inbound) => {
          const outbound = Net.connect(Number(target.port || 5432), target.hostname)
          inbound.on("error", () => {})
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

const onePoolTo = (url: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const pool = new Pg.Pool({ Client: PgPreparedClient.make(), connectionString: url, max: 1 })
      pool.on("error", () => {})
      routeCancels(pool)
      return pool
    }),
    (pool) => Effect.promise(() => pool.end())
  )

const withClient = <A, E, R>(pool: Pg.Pool, f: (sql: SqlClient.SqlClient) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    PgClient.fromPool({ acquire: Effect.succeed(pool) }).pipe(Effect.provide(Reactivity.layer)),
    (sql) => Effect.provideService(f(sql), SqlClient.SqlClient, sql)
  )

describe.skipIf(TestDatabase.serverUrl === undefined)("a cancel that arrives late (postgres)", () => {
  it.scopedLive(
    "does not end the statement that took the connection after the cancel's 5 seconds",
    () =>
      Effect.gen(function*() {
        const pool = yield* onePoolTo(yield* slowCancels(6_500))
        yield* withClient(pool, (sql) =>
          Effect.gen(function*() {
            const first = yield* Effect.fork(sql`SELECT pg_sleep(0.3)`)
            yield* Effect.sleep("100 millis")
            // The cancel goes out now and reaches the server 6.5 s later; the
            // answer comes at 300 ms; the connection waits for the cancel,
            // which is given up after 5 s.
            const interrupted = yield* Effect.fork(Fiber.interrupt(first))
            yield* Effect.sleep("50 millis")
            // Waits for the pool's one connection; runs from about 5 s to 8 s.
            expect(yield* sql`SELECT 'next' AS who FROM pg_sleep(3)`).toEqual([{ who: "next" }])
            yield* Fiber.join(interrupted)
          }))
      }),
    30_000
  )
})
