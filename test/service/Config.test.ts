/**
 * Settings read from the environment: defaults, a bad value refused with its
 * name, and an empty value (`export JWT_SECRET=`) taken as unset.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as NodeBuffer from "node:buffer"
import * as Tls from "node:tls"
import * as Config from "../../src/server/Config.js"
import * as Server from "../../src/server/Server.js"

const withEnv = (env: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

const read = (env: Record<string, string>) => Config.database.pipe(withEnv(env))

describe("Config.database", () => {
  it.effect("prepares 256 statement texts by default, none with DB_PREPARED_STATEMENTS=0", () =>
    Effect.gen(function*() {
      expect((yield* read({})).preparedStatements).toBe(256)
      expect((yield* read({ DB_PREPARED_STATEMENTS: "0" })).preparedStatements).toBe(0)
      expect((yield* read({ DB_PREPARED_STATEMENTS: "32" })).preparedStatements).toBe(32)
    }))

  it.effect("refuses a negative or non-integer DB_PREPARED_STATEMENTS, naming it", () =>
    Effect.gen(function*() {
      for (const value of ["-1", "2.5", "many"]) {
        const error = yield* Effect.flip(read({ DB_PREPARED_STATEMENTS: value }))
        expect(String(error)).toContain("DB_PREPARED_STATEMENTS")
      }
    }))
})

describe("the start-up check", () => {
  const reasonFor = (env: Record<string, string>) =>
    Effect.gen(function*() {
      const reasons: Array<unknown> = []
      const capture = Logger.make(({ annotations }) => {
        reasons.push(Option.getOrUndefined(HashMap.get(annotations, "reason")))
      })
      yield* Server.checkConfig.pipe(
        withEnv({ DATA_DIR: "/tmp/ecb-no-such-dir", ...env }),
        Effect.tapErrorCause(Server.reportFailure),
        Effect.ignore,
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      return reasons
    })

  it.effect("names every bad setting once, whichever group it is in, with what it must be", () =>
    Effect.gen(function*() {
      expect(yield* reasonFor({ BODY_LIMIT: "lots", DB_POOL_SIZE: "0", REDIS_TIMEOUT: "30 days" })).toEqual([
        "BODY_LIMIT: must be a size like 1048576, 512kb or 1mb; DB_POOL_SIZE: must be a positive integer; " +
        "REDIS_TIMEOUT: must be 1 ms to 2147483647 ms (about 24.8 days)"
      ])
      expect(yield* reasonFor({ PORT: "99999" })).toEqual(["PORT: must be 0 to 65535 (0: any free port)"])
      expect(yield* reasonFor({ METRICS_PORT: "70000" })).toEqual([
        "METRICS_PORT: must be 0 to 65535 (0: any free port)"
      ])
      expect(yield* reasonFor({ PORT: "8080", METRICS_PORT: "8080" })).toEqual(["METRICS_PORT: must differ from PORT"])
      for (const host of ["[::1]", "127.0.0.1:3000", "http://localhost", "bad_host"]) {
        expect(yield* reasonFor({ HOST: host })).toEqual([
          "HOST: must be an IP address (::1, not [::1]) or a host name, without a port"
        ])
      }
      for (const host of ["::1", "0.0.0.0", "localhost", " orders.internal ", "fe80::1%lo"]) {
        expect(yield* reasonFor({ HOST: host })).toEqual([])
      }
    }))
})

describe("the environment", () => {
  const settings = [
    "PORT",
    "HOST",
    "DATA_DIR",
    "DATABASE_URL",
    "DATABASE_SCHEMA",
    "DB_POOL_SIZE",
    "DB_CONNECT_TIMEOUT",
    "DB_STATEMENT_TIMEOUT",
    "DB_PREPARED_STATEMENTS",
    "DATABASE_CA",
    "IDEMPOTENCY_TTL",
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_STORE",
    "REDIS_URL",
    "REDIS_TIMEOUT",
    "COMMAND_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "BODY_LIMIT",
    "LOG_LEVEL",
    "JWT_SECRET",
    "JWT_ALGORITHM",
    "OTEL_SERVICE_NAME",
    "METRICS_PORT"
  ]

  it.effect("takes a setting set to nothing, or to spaces, as unset: its default applies", () =>
    Effect.gen(function*() {
      for (const empty of ["", "  "]) {
        const env = Object.fromEntries(settings.map((name) => [name, empty]))
        const read = Effect.withConfigProvider(Config.environment(env))
        expect(Exit.isSuccess(yield* Effect.exit(read(Server.checkConfig)))).toBe(true)
        const server = yield* read(Config.server)
        expect([server.port, server.host, Duration.toMillis(server.commandTimeout)]).toEqual([
          3000,
          "127.0.0.1",
          10_000
        ])
        expect((yield* read(Config.database)).poolSize).toBe(20)
      }
    }))

  it.effect("refuses integers not in decimal digits, and deadlines and retentions of zero", () =>
    Effect.gen(function*() {
      for (const [name, value] of [["PORT", "0x50"], ["PORT", "1e3"], ["DB_POOL_SIZE", "0b11"]] as const) {
        const error = yield* Effect.flip(Server.checkConfig.pipe(withEnv({ [name]: value })))
        expect(String(error)).toContain(name)
        expect(String(error)).toContain("decimal digits")
      }
      expect((yield* Config.server.pipe(withEnv({ PORT: " 8080 " }))).port).toBe(8080)
      for (const name of ["COMMAND_TIMEOUT", "IDEMPOTENCY_LEASE", "IDEMPOTENCY_TTL"]) {
        const error = yield* Effect.flip(Config.server.pipe(withEnv({ [name]: "0 seconds" })))
        expect(String(error)).toContain(name)
        expect(String(error)).toContain("longer than zero")
      }
    }))
})

describe("BODY_LIMIT", () => {
  // A body is decoded to one string: past Node's longest, a body under the
  // limit was answered 400 "not UTF-8", and 10^400 bytes was no limit at all.
  it.effect("refuses a size larger than a body Node can decode, naming it; the largest that it can is taken", () =>
    Effect.gen(function*() {
      for (const bad of ["1024mb", "536870889", "9".repeat(400)]) {
        const error = yield* Effect.flip(Config.server.pipe(withEnv({ BODY_LIMIT: bad })))
        expect(Config.describeError(error), bad.slice(0, 20)).toContain(
          `BODY_LIMIT: must be at most ${NodeBuffer.constants.MAX_STRING_LENGTH} bytes`
        )
      }
      const largest = yield* Config.server.pipe(withEnv({ BODY_LIMIT: String(NodeBuffer.constants.MAX_STRING_LENGTH) }))
      expect(largest.bodyLimit).toBe(NodeBuffer.constants.MAX_STRING_LENGTH)
      expect((yield* Config.server.pipe(withEnv({ BODY_LIMIT: "512kb" }))).bodyLimit).toBe(512 * 1024)
    }))
})

describe("timer settings", () => {
  it.effect("refuse delays over 2^31 - 1 ms, which Node's timers and PostgreSQL cannot take, naming them", () =>
    Effect.gen(function*() {
      for (const name of ["DB_CONNECT_TIMEOUT", "DB_STATEMENT_TIMEOUT"]) {
        const error = yield* Effect.flip(read({ [name]: "30 days" }))
        expect(String(error)).toContain(name)
        expect(String(error)).toContain("1 ms to 2147483647 ms")
        expect(Duration.toMillis(
          (yield* read({ [name]: "24 days" }))[
            name === "DB_CONNECT_TIMEOUT" ? "connectTimeout" : "statementTimeout"
          ]
        )).toBe(24 * 24 * 3600 * 1000)
      }
      const shutdown = yield* Effect.flip(Config.server.pipe(withEnv({ SHUTDOWN_TIMEOUT: "30 days" })))
      expect(String(shutdown)).toContain("SHUTDOWN_TIMEOUT")
      const redis = yield* Effect.flip(
        Config.idempotencyStore.pipe(
          withEnv({ IDEMPOTENCY_STORE: "redis", REDIS_URL: "redis://127.0.0.1:6379", REDIS_TIMEOUT: "30 days" })
        )
      )
      expect(String(redis)).toContain("REDIS_TIMEOUT")
    }))

  // `pg` sends a delay below 1 ms as 0, which PostgreSQL and `pg` read as no timeout at all.
  it.effect("refuse delays below 1 ms, and round the rest to whole milliseconds", () =>
    Effect.gen(function*() {
      for (const name of ["DB_CONNECT_TIMEOUT", "DB_STATEMENT_TIMEOUT"]) {
        for (const value of ["0 seconds", "0.5 millis"]) {
          const error = yield* Effect.flip(read({ [name]: value }))
          expect(String(error)).toContain(name)
          expect(String(error)).toContain("1 ms to 2147483647 ms")
        }
      }
      expect(Duration.toMillis((yield* read({ DB_STATEMENT_TIMEOUT: "1.6 millis" })).statementTimeout)).toBe(2)
      const shutdown = yield* Effect.flip(Config.server.pipe(withEnv({ SHUTDOWN_TIMEOUT: "0 seconds" })))
      expect(String(shutdown)).toContain("SHUTDOWN_TIMEOUT")
    }))
})

describe("REDIS_URL", () => {
  // A path ioredis reads as a database sent `SELECT NaN` and crashed the
  // service; a query parameter overrode the store's own client options.
  it.effect("is refused at start, naming it, when it is more than a host, a port and a database number", () =>
    Effect.gen(function*() {
      for (
        const url of ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:99999", "redis://h:6379?maxRetriesPerRequest=5"]
      ) {
        const error = yield* Effect.flip(Config.idempotencyStore.pipe(
          withEnv({ IDEMPOTENCY_STORE: "redis", REDIS_URL: url })
        ))
        expect(Config.describeError(error), url).toContain("REDIS_URL")
      }
      const fine = yield* Config.idempotencyStore.pipe(
        withEnv({ IDEMPOTENCY_STORE: "redis", REDIS_URL: " rediss://user:pw@cache.internal:6380/2?family=6 " })
      )
      // Trimmed as checked: the client reads TLS from its first characters.
      expect(fine._tag === "Redis" && Redacted.value(fine.url)).toBe("rediss://user:pw@cache.internal:6380/2?family=6")
    }))
})

describe("retentions and leases", () => {
  // Added to the database's clock: past its last timestamp every keyed command failed with a 500.
  it.effect("refuse more than 100 years, naming the setting", () =>
    Effect.gen(function*() {
      for (const name of ["IDEMPOTENCY_TTL", "IDEMPOTENCY_LEASE", "COMMAND_TIMEOUT"]) {
        const error = yield* Effect.flip(Config.server.pipe(withEnv({ [name]: "200000000 days" })))
        expect(String(error)).toContain(name)
        expect(String(error)).toContain("at most 36500 days")
      }
      expect(Duration.toHours((yield* Config.server.pipe(withEnv({ IDEMPOTENCY_TTL: "36500 days" }))).idempotencyTtl))
        .toBe(36_500 * 24)
    }))
})

describe("NODE_ENV", () => {
  it.effect("is production however it is cased or padded, as a .env file may write it", () =>
    Effect.gen(function*() {
      for (const env of ["production", "production ", " Production", "PRODUCTION"]) {
        expect((yield* Config.server.pipe(withEnv({ NODE_ENV: env }))).production).toBe(true)
      }
      for (const env of ["development", "test", "productive"]) {
        expect((yield* Config.server.pipe(withEnv({ NODE_ENV: env }))).production).toBe(false)
      }
    }))
})

describe("the start-up failure", () => {
  it.effect("is logged whatever the minimum log level, none included", () =>
    Effect.gen(function*() {
      const lines: Array<unknown> = []
      const capture = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(message)))
      yield* Server.reportFailure(Cause.fail(ConfigError.InvalidData(["PORT"], "must be a port"))).pipe(
        Logger.withMinimumLogLevel(LogLevel.None),
        Effect.provide(capture)
      )
      expect(lines).toEqual([["config.invalid"]])
    }))
})

describe("empty settings", () => {
  it.effect("HOST= and DATA_DIR= are their defaults, not every interface and the working directory", () =>
    Effect.gen(function*() {
      for (const empty of ["", "  "]) {
        expect((yield* Config.server.pipe(withEnv({ HOST: empty }))).host).toBe("127.0.0.1")
        expect((yield* read({ DATA_DIR: empty })).dataDir).toBe("./data")
      }
      expect((yield* Config.server.pipe(withEnv({ HOST: "0.0.0.0" }))).host).toBe("0.0.0.0")
    }))

  it.effect("JWT_SECRET=, JWT_ISSUER=, JWT_AUDIENCE= and the key files are unset, not empty values", () =>
    Effect.gen(function*() {
      const jwt = yield* Config.jwt.pipe(withEnv({
        JWT_SECRET: "",
        JWT_ISSUER: "",
        JWT_AUDIENCE: " ",
        JWT_PUBLIC_KEY_FILE: "",
        JWT_JWKS_FILE: ""
      }))
      expect(Option.isNone(jwt.secret)).toBe(true)
      expect(Option.isNone(jwt.issuer)).toBe(true)
      expect(Option.isNone(jwt.audience)).toBe(true)
      expect(Option.isNone(jwt.publicKeyFile)).toBe(true)
      expect(Option.isNone(jwt.jwksFile)).toBe(true)
      const set = yield* Config.jwt.pipe(withEnv({ JWT_SECRET: "s".repeat(32), JWT_ISSUER: "issuer" }))
      expect(Option.map(set.secret, Redacted.value)).toEqual(Option.some("s".repeat(32)))
      expect(set.issuer).toEqual(Option.some("issuer"))
    }))

  it.effect("JWT_MAX_AGE is unset when empty, a duration when set, and refused when not a positive one", () =>
    Effect.gen(function*() {
      expect(Option.isNone((yield* Config.jwt.pipe(withEnv({ JWT_MAX_AGE: " " }))).maxAge)).toBe(true)
      const set = yield* Config.jwt.pipe(withEnv({ JWT_MAX_AGE: "15 minutes" }))
      expect(Option.map(set.maxAge, Duration.toSeconds)).toEqual(Option.some(900))
      for (const bad of ["0 seconds", "soon", "200000000 days"]) {
        const error = yield* Effect.flip(Config.jwt.pipe(withEnv({ JWT_MAX_AGE: bad })))
        expect(Config.describeError(error), bad).toContain("JWT_MAX_AGE")
      }
    }))
})

describe("settings checked before start", () => {
  it.effect("a DATABASE_URL that is not a postgres URL is refused, naming it", () =>
    Effect.gen(function*() {
      for (const url of ["postgres://u:p@127.0.0.1:99999/db", "mysql://127.0.0.1/db", "not a url"]) {
        const error = yield* Effect.flip(read({ DATABASE_URL: url }))
        expect(String(error)).toContain("DATABASE_URL")
        expect(String(error)).not.toContain(":p@")
      }
      for (const url of ["postgres://u:p@127.0.0.1:5432/db", "postgresql://localhost/db?sslmode=require"]) {
        expect(Option.map((yield* read({ DATABASE_URL: url })).url, Redacted.value)).toEqual(Option.some(url))
      }
    }))

  // The message says what is wrong with the value: a postgres:// URL whose
  // port is out of range was told it "must be a postgres:// URL".
  it.effect("a postgres:// DATABASE_URL that does not parse is told so, not told to be a postgres:// URL", () =>
    Effect.gen(function*() {
      for (const url of ["postgres://u:p@127.0.0.1:99999/db", "postgresql://u:p@[::1/db"]) {
        const message = Config.describeError(yield* Effect.flip(read({ DATABASE_URL: url })))
        expect(message).toMatch(/^DATABASE_URL: /)
        expect(message).not.toContain("must be a postgres://")
        expect(message).toContain("does not parse as a URL")
        expect(message).not.toContain(":p@")
      }
      const other = Config.describeError(yield* Effect.flip(read({ DATABASE_URL: "mysql://127.0.0.1/db" })))
      expect(other).toBe("DATABASE_URL: must be a postgres:// or postgresql:// URL")
    }))

  // PgPool refuses it at the first statement's layer, telling the caller to
  // give `statementTimeout`, a name the service's operator cannot set.
  it.effect("a DATABASE_URL with a statement_timeout is refused, naming DB_STATEMENT_TIMEOUT", () =>
    Effect.gen(function*() {
      const url = "postgres://u:secret@127.0.0.1:5432/db?sslmode=disable&statement_timeout=5000"
      const message = Config.describeError(yield* Effect.flip(read({ DATABASE_URL: url })))
      expect(message).toMatch(/^DATABASE_URL: /)
      expect(message).toContain("DB_STATEMENT_TIMEOUT")
      expect(message).not.toContain("secret")
    }))

  it.effect("DATABASE_CA: PEM with newlines or \\n, refused when not PEM or beside TLS settings in DATABASE_URL", () =>
    Effect.gen(function*() {
      const pem = Tls.rootCertificates[0]!
      const url = "postgres://u:p@db.example.com:5432/orders"
      expect((yield* read({ DATABASE_URL: url, DATABASE_CA: pem })).ca).toEqual(Option.some(pem.trim()))
      // One line, as an environment file writes it.
      const oneLine = pem.trim().replaceAll("\n", "\\n")
      expect(oneLine).not.toContain("\n")
      expect((yield* read({ DATABASE_URL: url, DATABASE_CA: oneLine })).ca).toEqual(Option.some(pem.trim()))
      expect((yield* read({ DATABASE_CA: "  " })).ca).toEqual(Option.none())
      // A path rather than the text, and a second certificate cut short.
      const cut = `${pem.trim()}\n${pem.trim().replace(/[A-Za-z0-9+/]{64}\n/, "")}`
      const messages = []
      for (const bad of ["/etc/ssl/db-ca.pem", cut]) {
        messages.push(Config.describeError(yield* Effect.flip(read({ DATABASE_URL: url, DATABASE_CA: bad }))))
      }
      expect(messages).toEqual([
        "DATABASE_CA: must be the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)",
        "DATABASE_CA: must be the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----): certificate 2 does not parse"
      ])
      const both = Config.describeError(
        yield* Effect.flip(read({ DATABASE_URL: `${url}?sslmode=require`, DATABASE_CA: pem }))
      )
      expect(both).toBe(
        "DATABASE_CA: must not be set beside TLS settings in DATABASE_URL (it sets sslmode): give the CA one way"
      )
      expect(both).not.toContain(":p@")
    }))

  it.effect("a bad DATABASE_SCHEMA's message names the setting once, as the others do", () =>
    Effect.gen(function*() {
      const message = Config.describeError(yield* Effect.flip(read({ DATABASE_SCHEMA: "Orders" })))
      expect(message).toBe(
        "DATABASE_SCHEMA: must be a lowercase SQL identifier, not beginning with pg_ (PostgreSQL's own)"
      )
    }))

  it.effect("a DATABASE_URL naming a certificate file that is not there is refused, naming both", () =>
    Effect.gen(function*() {
      const url = "postgres://u:secret@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
      const error = String(yield* Effect.flip(read({ DATABASE_URL: url })))
      expect(error).toContain("DATABASE_URL")
      expect(error).toContain("/nonexistent/ca.pem")
      expect(error).not.toContain("secret")
    }))

  // PostgreSQL keeps the pg_ prefix to itself ("unacceptable schema name"):
  // refused here, the setting named, rather than at the first connection.
  it.effect("a DATABASE_SCHEMA PostgreSQL reserves (pg_...) is refused, naming it; other identifiers are not", () =>
    Effect.gen(function*() {
      for (const schema of ["pg_orders", "pg_catalog", "pg_", "Orders", "1st"]) {
        const error = yield* Effect.flip(read({ DATABASE_SCHEMA: schema }))
        expect(String(error)).toContain("DATABASE_SCHEMA")
      }
      for (const schema of ["orders", "public", "_pg_orders", "orders_pg_1"]) {
        expect((yield* read({ DATABASE_SCHEMA: schema })).schema).toEqual(Option.some(schema))
      }
    }))

  it.effect("METRICS_PORT equal to PORT is refused, naming METRICS_PORT; 0 or another port is not", () =>
    Effect.gen(function*() {
      const check = (env: Record<string, string>) =>
        Server.checkConfig.pipe(withEnv({ JWT_SECRET: "test-secret-test-secret-test-secret-0123456789", ...env }))
      const error = yield* Effect.flip(check({ PORT: "3000", METRICS_PORT: "3000" }))
      expect(String(error)).toContain("METRICS_PORT")
      yield* check({ PORT: "3000", METRICS_PORT: "9464" })
      yield* check({ PORT: "0", METRICS_PORT: "0" })
    }))
})
