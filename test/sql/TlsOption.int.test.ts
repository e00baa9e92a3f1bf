/**
 * `PgPool`'s `ssl` option: TLS settings the URL cannot carry, such as a CA
 * given as text from a secret rather than a file, for every connection (the
 * pool's, the relay's LISTEN, the cancel requests). Given with TLS settings
 * in the URL it is refused: `pg` takes the URL's and dropped the option
 * without a word (a CA given this way was not used).
 */
import { SqlClient } from "@effect/sql"
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { EventPublisher } from "effect-command-bus"
import { PgPool, SqlStores } from "effect-command-bus/sql"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import { randomBytes } from "node:crypto"
import * as Tls from "node:tls"
import * as TlsServer from "../support/Tls.js"

/** The TLS server's URL without any TLS setting of its own. */
const bare = (url: string) =>
  TlsServer.withParams(url, { sslmode: undefined, sslrootcert: undefined, uselibpqcompat: undefined })

const refusal = (options: PgPool.Options) =>
  Effect.flip(Effect.scoped(Layer.build(PgPool.layer(options)))).pipe(Effect.map((error) => error.message))

describe("PgPool ssl, refused before any connection", () => {
  it.effect("refuses ssl with TLS settings in the URL, naming them, without quoting the URL", () =>
    Effect.gen(function*() {
      const url = "postgres://user:s3cret@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/etc/ca.pem"
      const message = yield* refusal({ url: Redacted.make(url), ssl: { ca: "a CA" } })
      expect(message).toBe(
        "Invalid database configuration: give TLS settings in the url or as ssl, not both: the url sets sslmode, sslrootcert, which pg would take instead of ssl"
      )
      expect(yield* refusal({ url: "postgres://u@127.0.0.1:1/db?ssl=true", ssl: false })).toContain("sets ssl,")
      expect(yield* refusal({ url: "postgres://u@127.0.0.1:1/db", ssl: "yes" as unknown as boolean })).toContain(
        "ssl must be"
      )
      // Without TLS settings in the URL, or without ssl: built, nothing connected.
      yield* Effect.scoped(Layer.build(PgPool.layer({ url: "postgres://u@127.0.0.1:1/db", ssl: { ca: "a CA" } })))
      yield* Effect.scoped(Layer.build(PgPool.layer({ url: "postgres://u@127.0.0.1:1/db?sslmode=require" })))
    }))
})

describe.skipIf(TlsServer.url === undefined)(`PgPool ssl on a TLS-only server, with ${TlsServer.skipReason}`, () => {
  it.scopedLive(
    "a CA as text: the pool, the relay's LISTEN and a cancel, all over verified TLS",
    () =>
      Effect.gen(function*() {
        const applicationName = `tls-option-${randomBytes(4).toString("hex")}`
        const context = yield* Layer.build(
          SqlStores.layer({ relay: { pollInterval: "10 minutes" } }).pipe(
            Layer.provideMerge(PgPool.layer({
              url: bare(TlsServer.url!),
              ssl: { ca: TlsServer.caText() },
              poolSize: 1,
              applicationName
            })),
            Layer.provide(Logger.minimumLogLevel(LogLevel.None))
          )
        )
        yield* Effect.provide(EventPublisher.EventPublisher, context)
        const sql = Context.get(context, SqlClient.SqlClient)
        expect(yield* sql`SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).toEqual([{ ssl: true }])
        const connections = yield* TlsServer.eventually(
          TlsServer.connectionsOf(applicationName),
          (rows) => rows.some((row) => row.query.startsWith("LISTEN"))
        )
        expect(connections.every((row) => row.ssl)).toBe(true)

        const sleeping = yield* Effect.fork(sql`SELECT pg_sleep(30)`)
        yield* TlsServer.eventually(
          TlsServer.connectionsOf(applicationName),
          (rows) => rows.some((row) => row.state === "active" && row.query.includes("pg_sleep"))
        )
        yield* Fiber.interrupt(sleeping)
        yield* TlsServer.eventually(
          TlsServer.connectionsOf(applicationName),
          (rows) => !rows.some((row) => row.state === "active" && row.query.includes("pg_sleep"))
        )
        expect(yield* sql`SELECT 1 AS one`.pipe(Effect.timeout("10 seconds"))).toEqual([{ one: 1 }])
      }),
    60_000
  )

  it.scopedLive(
    "a CA that did not sign the server's certificate, or Node's CAs alone (true): a SqlError at once",
    () =>
      Effect.gen(function*() {
        for (const ssl of [{ ca: Tls.rootCertificates[0]! }, true]) {
          const context = yield* Layer.build(PgPool.layer({ url: bare(TlsServer.url!), ssl }))
          const error = yield* Effect.flip(
            Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`).pipe(
              Effect.provide(context),
              Effect.timeout("10 seconds")
            )
          )
          expect(error).toBeInstanceOf(SqlError)
          expect(String((error as SqlError).cause)).toMatch(/certificate/)
        }
      }),
    60_000
  )

  it.scopedLive("layerConfig: the CA read from a Config (a secret's text)", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        PgPool.layerConfig({
          url: Config.redacted("DATABASE_URL"),
          ssl: Config.map(Config.redacted("DATABASE_CA"), (ca) => ({ ca: Redacted.value(ca) })),
          poolSize: Config.succeed(1)
        })
      ).pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromJson({ DATABASE_URL: bare(TlsServer.url!), DATABASE_CA: TlsServer.caText() })
        )
      )
      expect(
        yield* Effect.flatMap(
          SqlClient.SqlClient,
          (sql) => sql`SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`
        )
          .pipe(Effect.provide(context))
      ).toEqual([{ ssl: true }])
    }), 60_000)
})
