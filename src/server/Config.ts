/**
 * The service's configuration, from the environment only, validated at
 * start: a bad value stops the process with a message naming the variable.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as NodeBuffer from "node:buffer"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import Pg from "pg"
import { tlsParamsIn } from "../internal/pgUrl.js"
import * as RedisIdempotencyStore from "../redis/RedisIdempotencyStore.js"

/**
 * The environment as the service reads it: a variable set to nothing (or
 * only spaces, `export PORT=`) is no variable, so its default applies.
 *
 * @since 0.1.0
 * @category config
 */
export const environment = (env: Readonly<Record<string, string | undefined>> = process.env) =>
  ConfigProvider.fromMap(
    new Map(
      Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1].trim() !== "")
    ),
    { pathDelim: "_", seqDelim: "," }
  )

/**
 * A configuration error in words, one clause per setting at fault:
 * "BODY_LIMIT: must be a size like 1048576, 512kb or 1mb".
 *
 * @since 0.1.0
 * @category config
 */
export const describeError = (error: ConfigError.ConfigError): string =>
  ConfigError.reduceWithContext(error, undefined, {
    andCase: (_, left: string, right: string) => `${left}; ${right}`,
    orCase: (_, left: string, right: string) => `${left}; ${right}`,
    invalidDataCase: (_, path, message) => `${path.join(".")}: ${message}`,
    missingDataCase: (_, path, message) => `${path.join(".")}: ${message}`,
    sourceUnavailableCase: (_, path, message) => `${path.join(".")}: ${message}`,
    unsupportedCase: (_, path, message) => `${path.join(".")}: ${message}`
  })

// An integer in decimal digits (`Config.integer` reads "0x50" as 80) within
// bounds, read in one step over the setting itself, so an error's path names
// it; the messages say what the value must be, not the name again.
const integer = (name: string, min: number, max: number, message: string) =>
  Config.string(name).pipe(
    Config.mapOrFail((raw) => {
      if (!/^\s*-?\d{1,15}\s*$/.test(raw)) {
        return Either.left(ConfigError.InvalidData([], `must be a whole number in decimal digits, not "${raw}"`))
      }
      const value = Number(raw.trim())
      return value >= min && value <= max ? Either.right(value) : Either.left(ConfigError.InvalidData([], message))
    })
  )

const positiveInt = (name: string, fallback: number) =>
  integer(name, 1, Number.MAX_SAFE_INTEGER, "must be a positive integer").pipe(Config.withDefault(fallback))

const nonNegativeInt = (name: string, fallback: number) =>
  integer(name, 0, Number.MAX_SAFE_INTEGER, "must be a non-negative integer").pipe(Config.withDefault(fallback))

const port = (name: string) => integer(name, 0, 65535, "must be 0 to 65535 (0: any free port)")

// A deadline or a retention: zero would refuse every command, or keep
// nothing. A retention or lease is added to the database's clock, whose
// timestamps end in the year 294276: past that, every keyed command failed.
const positiveMessage = "must be longer than zero and at most 36500 days (100 years)"
const isPositive = (delay: Duration.Duration) =>
  Duration.toMillis(delay) > 0 && Duration.toMillis(delay) <= 36_500 * 24 * 3600 * 1000

const positiveDuration = (name: string, fallback: Duration.DurationInput) =>
  Config.duration(name).pipe(
    Config.validate({ message: positiveMessage, validation: isPositive }),
    Config.withDefault(Duration.decode(fallback))
  )

// A timer's delay, in whole milliseconds. Node's timers and PostgreSQL's
// statement_timeout take at most 2^31 - 1 ms; a longer one fires at once
// (Node) or is refused when the first connection opens (PostgreSQL), far
// from the setting that caused it. Below 1 ms, `pg` sends 0, which means no
// timeout at all.
const timer = (name: string, fallback: Duration.DurationInput) =>
  Config.duration(name).pipe(
    Config.validate({
      message: "must be 1 ms to 2147483647 ms (about 24.8 days)",
      validation: (delay) => Duration.toMillis(delay) >= 1 && Duration.toMillis(delay) <= 2 ** 31 - 1
    }),
    Config.map((delay) => Duration.millis(Math.round(Duration.toMillis(delay)))),
    Config.withDefault(Duration.decode(fallback))
  )

/**
 * A size such as `1048576`, `512kb` or `1mb`.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseSize = (input: string): Option.Option<number> => {
  const match = /^\s*(\d+)\s*(b|kb|kib|mb|mib)?\s*$/i.exec(input)
  if (match === null) return Option.none()
  const unit = (match[2] ?? "b").toLowerCase()
  const factor = unit === "b" ? 1 : unit.startsWith("k") ? 1024 : 1024 * 1024
  const size = Number(match[1]) * factor
  return size > 0 ? Option.some(size) : Option.none()
}

// A body is decoded to one string: a longer one than Node can make would be
// refused as not UTF-8, whatever the limit said.
const maxBodySize = NodeBuffer.constants.MAX_STRING_LENGTH

const size = (name: string, fallback: number) =>
  Config.string(name).pipe(
    Config.mapOrFail((raw) =>
      Option.match(parseSize(raw), {
        onNone: () => Either.left(ConfigError.InvalidData([], `must be a size like 1048576, 512kb or 1mb`)),
        onSome: (size) =>
          size <= maxBodySize
            ? Either.right(size)
            : Either.left(ConfigError.InvalidData([], `must be at most ${maxBodySize} bytes (about 512mb)`))
      })
    ),
    Config.withDefault(fallback)
  )

const logLevels: Record<string, LogLevel.LogLevel> = {
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warn: LogLevel.Warning,
  warning: LogLevel.Warning,
  error: LogLevel.Error,
  fatal: LogLevel.Fatal,
  none: LogLevel.None
}

/**
 * Where the data lives: a PostgreSQL server, or the embedded one in a folder.
 *
 * @since 0.1.0
 * @category models
 */
export type DatabaseConfig =
  | { readonly _tag: "Server"; readonly url: Redacted.Redacted }
  | { readonly _tag: "Embedded"; readonly dataDir: string }

// An empty setting (`export JWT_SECRET=`) means unset: an empty URL, secret,
// host or directory is never what was meant.
const setString = (name: string) =>
  Config.option(Config.string(name)).pipe(Config.map(Option.filter((value) => value.trim() !== "")))

const setRedacted = (name: string) =>
  Config.option(Config.redacted(name)).pipe(Config.map(Option.filter((value) => Redacted.value(value).trim() !== "")))

const stringOr = (name: string, fallback: string) => setString(name).pipe(Config.map(Option.getOrElse(() => fallback)))

const hostName = /^(?=.{1,253}\.?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i

// An address or a name to listen on, checked here: a URL's `[::1]` or a
// `host:port` failed only when the server listened, as ENOTFOUND, naming
// no setting.
const listenHost = (name: string, fallback: string) =>
  stringOr(name, fallback).pipe(
    Config.mapOrFail((raw) => {
      const host = raw.trim()
      return Net.isIP(host) !== 0 || hostName.test(host)
        ? Either.right(host)
        : Either.left(
          ConfigError.InvalidData([name], "must be an IP address (::1, not [::1]) or a host name, without a port")
        )
    })
  )

// A positive duration as above, or none when unset or empty.
const setPositiveDuration = (name: string) =>
  setString(name).pipe(
    Config.mapOrFail((text): Either.Either<Option.Option<Duration.Duration>, ConfigError.ConfigError> => {
      if (Option.isNone(text)) return Either.right(Option.none())
      const delay = Duration.decodeUnknown(text.value.trim())
      return Option.isSome(delay) && isPositive(delay.value)
        ? Either.right(delay)
        : Either.left(ConfigError.InvalidData([name], positiveMessage))
    })
  )

const caMessage = "must be the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)"

/**
 * `DATABASE_CA`: the CA that signed the server's certificate, as PEM text
 * (from a secret, where a file is awkward), with its newlines or with `\n`
 * in their place, as one-line environment files write them.
 */
const databaseCa = Config.option(Config.string("DATABASE_CA")).pipe(
  Config.mapOrFail((text): Either.Either<Option.Option<string>, ConfigError.ConfigError> => {
    if (Option.isNone(text) || text.value.trim() === "") return Either.right(Option.none())
    const pem = text.value.trim().replaceAll("\\n", "\n")
    const certificates = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []
    if (certificates.length === 0) return Either.left(ConfigError.InvalidData(["DATABASE_CA"], caMessage))
    // Each one parsed: TLS would skip one it cannot read, and fail at the
    // first connection with "unable to get local issuer certificate".
    for (const [i, certificate] of certificates.entries()) {
      try {
        new Crypto.X509Certificate(certificate)
      } catch {
        return Either.left(
          ConfigError.InvalidData(["DATABASE_CA"], `${caMessage}: certificate ${i + 1} does not parse`)
        )
      }
    }
    return Either.right(Option.some(pem))
  })
)

/**
 * @since 0.1.0
 * @category config
 */
export const database = Config.all({
  url: setRedacted("DATABASE_URL").pipe(
    // `pg` parses it with `new URL` only when it first connects, where a bad
    // one (a port over 65535) is a stack trace that never names the setting.
    Config.mapOrFail((url): Either.Either<Option.Option<Redacted.Redacted>, ConfigError.ConfigError> => {
      if (Option.isNone(url)) return Either.right(url)
      const text = Redacted.value(url.value)
      if (!/^postgres(ql)?:\/\//i.test(text)) {
        return Either.left(ConfigError.InvalidData(["DATABASE_URL"], "must be a postgres:// or postgresql:// URL"))
      }
      // Its scheme is right: say what is wrong with the rest (a port over
      // 65535, an unclosed [), never quoting it (it may hold a password).
      if (!URL.canParse(text)) {
        return Either.left(
          ConfigError.InvalidData(
            ["DATABASE_URL"],
            "does not parse as a URL (check its host, its port, 0 to 65535, and its percent-escapes)"
          )
        )
      }
      // `PgPool` refuses a statement_timeout in the URL, telling the library's
      // caller to give `statementTimeout`: the service's is DB_STATEMENT_TIMEOUT.
      if (new URL(text).searchParams.has("statement_timeout")) {
        return Either.left(
          ConfigError.InvalidData(
            ["DATABASE_URL"],
            "must not set statement_timeout: set DB_STATEMENT_TIMEOUT, which the answer timeout is counted from"
          )
        )
      }
      // What `pg` reads of it when it first connects, files included (an
      // `sslrootcert` that is not there): refused here, naming the setting.
      try {
        new Pg.Client({ connectionString: text })
        return Either.right(url)
      } catch (error) {
        const reason = (error instanceof Error ? error.message : String(error)).replaceAll(text, "(the URL)")
        return Either.left(ConfigError.InvalidData(["DATABASE_URL"], `cannot be used: ${reason}`))
      }
    })
  ),
  schema: Config.option(
    Config.string("DATABASE_SCHEMA").pipe(
      Config.validate({
        message: "must be a lowercase SQL identifier, not beginning with pg_ (PostgreSQL's own)",
        validation: (name) => /^[a-z_][a-z0-9_]{0,62}$/.test(name) && !name.startsWith("pg_")
      })
    )
  ),
  dataDir: stringOr("DATA_DIR", "./data"),
  poolSize: positiveInt("DB_POOL_SIZE", 20),
  connectTimeout: timer("DB_CONNECT_TIMEOUT", "5 seconds"),
  statementTimeout: timer("DB_STATEMENT_TIMEOUT", "10 seconds"),
  preparedStatements: nonNegativeInt("DB_PREPARED_STATEMENTS", 256),
  ca: databaseCa
}).pipe(
  // `pg` would take the URL's TLS settings and drop the CA without a word.
  Config.mapOrFail((database) => {
    if (Option.isNone(database.ca) || Option.isNone(database.url)) return Either.right(database)
    const params = new URL(Redacted.value(database.url.value)).searchParams
    const set = tlsParamsIn(params)
    return set.length === 0 ? Either.right(database) : Either.left(
      ConfigError.InvalidData(
        ["DATABASE_CA"],
        `must not be set beside TLS settings in DATABASE_URL (it sets ${set.join(", ")}): give the CA one way`
      )
    )
  })
)

/**
 * Where idempotency records live: on PostgreSQL (the default), in the
 * command's own transaction; or on Redis, for handlers whose effects live
 * outside PostgreSQL.
 *
 * @since 0.1.0
 * @category models
 */
export type IdempotencyStoreConfig =
  | { readonly _tag: "Postgres" }
  | { readonly _tag: "Redis"; readonly url: Redacted.Redacted; readonly timeout: Duration.Duration }

/**
 * `IDEMPOTENCY_STORE` (`postgres` or `redis`); with `redis`, `REDIS_URL`
 * (required) and `REDIS_TIMEOUT`, the bound of each call to Redis.
 *
 * @since 0.1.0
 * @category config
 */
export const idempotencyStore: Config.Config<IdempotencyStoreConfig> = Config.all({
  store: Config.literal("postgres", "redis")("IDEMPOTENCY_STORE").pipe(Config.withDefault("postgres" as const)),
  url: setRedacted("REDIS_URL"),
  timeout: timer("REDIS_TIMEOUT", "2 seconds")
}).pipe(
  Config.mapOrFail(({ store, timeout, url }): Either.Either<IdempotencyStoreConfig, ConfigError.ConfigError> => {
    if (store === "postgres") return Either.right({ _tag: "Postgres" })
    if (Option.isNone(url)) {
      return Either.left(ConfigError.MissingData(["REDIS_URL"], "REDIS_URL is required with IDEMPOTENCY_STORE=redis"))
    }
    const trimmed = Redacted.value(url.value).trim()
    const problem = RedisIdempotencyStore.urlProblem(trimmed)
    return problem === undefined
      ? Either.right({ _tag: "Redis", url: Redacted.make(trimmed), timeout })
      : Either.left(ConfigError.InvalidData(["REDIS_URL"], problem))
  })
)

/**
 * @since 0.1.0
 * @category config
 */
export const jwt = Config.all({
  secret: setRedacted("JWT_SECRET"),
  publicKeyFile: setString("JWT_PUBLIC_KEY_FILE"),
  jwksFile: setString("JWT_JWKS_FILE"),
  // Trimmed, as a `.env` file may pad it: no issuer writes spaces around its `iss`.
  issuer: setString("JWT_ISSUER").pipe(Config.map(Option.map((issuer) => issuer.trim()))),
  // A comma-separated list, as for an issuer serving several APIs: a token
  // for any one of them is taken. Read as one, no token would name it.
  audience: setString("JWT_AUDIENCE").pipe(
    Config.mapOrFail((text): Either.Either<Option.Option<ReadonlyArray<string>>, ConfigError.ConfigError> => {
      if (Option.isNone(text)) return Either.right(Option.none())
      const audiences = text.value.split(",").map((audience) => audience.trim()).filter((audience) => audience !== "")
      return audiences.length === 0
        ? Either.left(ConfigError.InvalidData(["JWT_AUDIENCE"], "must name an audience, or a comma-separated list"))
        : Either.right(Option.some(audiences))
    })
  ),
  // Unset, a token lives until its `exp`, however far off the issuer put it.
  maxAge: setPositiveDuration("JWT_MAX_AGE")
})

/**
 * The signing algorithm of a public key or JWKS (`JWT_ALGORITHM`), e.g.
 * `RS256` or `ES256`. Unused with `JWT_SECRET`, which is always HS256.
 *
 * @since 0.1.0
 * @category config
 */
export const jwtAlgorithm = Config.option(
  Config.literal("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")(
    "JWT_ALGORITHM"
  )
)

/**
 * An `http://` or `https://` URL, or none when unset or empty.
 */
const optionalHttpUrl = (name: string) =>
  setString(name).pipe(
    Config.mapOrFail((url) =>
      Option.isNone(url) || (/^https?:\/\/[^\s/]+/.test(url.value.trim()) && URL.canParse(url.value.trim()))
        ? Either.right(Option.map(url, (value) => value.trim()))
        : Either.left(ConfigError.InvalidData([name], "must be an http:// or https:// URL"))
    )
  )

/**
 * Tracing and metrics. Traces are exported over OTLP/HTTP when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL, `/v1/traces`
 * appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) is set,
 * and not recorded at all otherwise. `METRICS_PORT` adds a listener on
 * `HOST` that serves `GET /metrics` without authentication.
 *
 * @since 0.1.0
 * @category config
 */
export const observability = Config.all({
  otlpEndpoint: optionalHttpUrl("OTEL_EXPORTER_OTLP_ENDPOINT"),
  otlpTracesEndpoint: optionalHttpUrl("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
  serviceName: Config.string("OTEL_SERVICE_NAME").pipe(
    Config.validate({ message: "must not be empty", validation: (name) => name.trim() !== "" }),
    Config.withDefault("orders-service")
  ),
  metricsPort: Config.option(
    port("METRICS_PORT")
  )
}).pipe(
  Config.map(({ metricsPort, otlpEndpoint, otlpTracesEndpoint, serviceName }) => ({
    serviceName,
    metricsPort,
    /** Where spans go, if anywhere: the traces endpoint, else the base endpoint's `/v1/traces`. */
    tracesUrl: Option.orElse(
      otlpTracesEndpoint,
      () => Option.map(otlpEndpoint, (base) => `${base.replace(/\/+$/, "")}/v1/traces`)
    )
  }))
)

/**
 * @since 0.1.0
 * @category config
 */
export const server = Config.all({
  port: port("PORT").pipe(Config.withDefault(3000)),
  host: listenHost("HOST", "127.0.0.1"),
  bodyLimit: size("BODY_LIMIT", 1024 * 1024),
  idempotencyTtl: positiveDuration("IDEMPOTENCY_TTL", "24 hours"),
  idempotencyLease: positiveDuration("IDEMPOTENCY_LEASE", "1 minute"),
  commandTimeout: positiveDuration("COMMAND_TIMEOUT", "10 seconds"),
  shutdownTimeout: timer("SHUTDOWN_TIMEOUT", "10 seconds"),
  requestTimeout: timer("REQUEST_TIMEOUT", "30 seconds"),
  logLevel: Config.string("LOG_LEVEL").pipe(
    Config.withDefault("info"),
    Config.mapOrFail((raw) => {
      const level = logLevels[raw.trim().toLowerCase()]
      return level === undefined
        ? Either.left(ConfigError.InvalidData(["LOG_LEVEL"], `must be one of ${Object.keys(logLevels).join(", ")}`))
        : Either.right(level)
    })
  ),
  production: Config.string("NODE_ENV").pipe(
    Config.withDefault("development"),
    // As written in a `.env` or unit file: "production " or "Production" is
    // still production, whose key check must not be missed.
    Config.map((env) => env.trim().toLowerCase() === "production")
  )
})
