/**
 * The library's PostgreSQL client on a server: a `pg` pool set up the way
 * the reference service runs it, as one layer.
 *
 * `PgClient.layer` from `@effect/sql-pg` works with every store of this
 * package, but it leaves out what makes the write path fast and bounded:
 *
 * - the pool's `Client` is `PgPreparedClient.make(...)`, so statements with
 *   parameters are named prepared statements (parsed and planned once per
 *   connection), `BEGIN` goes out with a transaction's first statement and
 *   the writes nobody reads go out with `COMMIT`;
 * - `SqlUnitOfWork.PgPool` is provided, so `SqlUnitOfWork` takes each
 *   transaction's connection from the pool itself (about a seventh less CPU
 *   per dispatch than `sql.withTransaction`), and a command's deadline cuts
 *   its wait for a free connection, which `withTransaction` cannot;
 * - `statement_timeout` is set on every connection, and a statement whose
 *   answer does not come within it and `answerMargin` closes its connection
 *   (a partition, a frozen server), so neither a runaway statement nor a
 *   server that stopped answering holds a connection;
 * - an interrupted statement is cancelled with PostgreSQL's CancelRequest,
 *   which needs no free connection of the pool, over TLS when the
 *   connection is, and only that statement: a cancel of one
 *   that has ended is not sent, and a connection goes back to the pool only
 *   once its cancel has arrived, so it never ends the next statement there;
 * - `search_path` is the schema given, or `public`.
 *
 * No connection is opened when the layer is built: the first statement
 * (usually `SqlMigrations.run`) opens the first one, and fails with a
 * `SqlError` if the server cannot be reached. A configuration `pg` cannot
 * use (an unparseable URL, an option out of range) fails the layer at once.
 *
 * Not for a pooler in transaction mode (see `PgPreparedClient`).
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Tls from "node:tls"
import Pg from "pg"
import { maxTimerMillis } from "../internal/limit.js"
import { routeCancels } from "../internal/pgCancel.js"
import { tlsParamsIn } from "../internal/pgUrl.js"
import * as PgPreparedClient from "./PgPreparedClient.js"
import * as SqlUnitOfWork from "./SqlUnitOfWork.js"

/**
 * How the pool connects and what bounds its statements. Every option but
 * `url` has a default.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * A `postgres://` connection string; `Redacted` keeps its password out of
   * logs. Its `options` are sent with the pool's `search_path` (`schema`
   * wins over a `search_path` among them); `statement_timeout` in it is
   * refused (`statementTimeout` sets it); `applicationName`, when given,
   * wins over its `application_name`.
   */
  readonly url: Redacted.Redacted | string
  /**
   * TLS for every connection: the pool's, the relay's `LISTEN` and the
   * cancel requests. For what the URL cannot say: a CA, a client certificate
   * or its key given as text (from a secret) rather than a file. Options as
   * `tls.connect` takes them (`{ ca }`: verified against that CA, the host
   * name checked, as `sslmode=verify-full`); `true`: verified against Node's
   * CAs; `false`: no TLS. Refused together with TLS settings in the URL
   * (`ssl`, `sslmode`, `sslrootcert`, `sslcert`, `sslkey`), which `pg` would
   * take instead of these without a word. Default: what the URL says.
   */
  readonly ssl?: boolean | Tls.ConnectionOptions | undefined
  /**
   * The schema the tables live in (`search_path`), which must exist
   * (`SqlMigrations.run` creates tables, not schemas). Any name: it is
   * quoted, so `Orders` is not `orders`. Default `public`, not PostgreSQL's
   * `"$user", public`, which would put the tables in a schema named after the
   * login role when one exists.
   */
  readonly schema?: string | undefined
  /**
   * Connections at most. Default 10, as `pg`'s. An outbox relay
   * (`SqlStores.layer`, `OutboxRelay`) listens on one more, of its own,
   * which neither this bound nor `usage` counts.
   */
  readonly poolSize?: number | undefined
  /** How long opening a connection may take. Default 5 seconds; `Duration.infinity`: no bound. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /**
   * PostgreSQL's `statement_timeout` on every connection, at most 2^31 - 1
   * ms. Default 10 seconds; `Duration.infinity`: none (0, whatever the URL's
   * options or the role's or database's default say), and no answer timeout
   * either (for migrations that may run long: give them a pool of their own).
   */
  readonly statementTimeout?: Duration.DurationInput | undefined
  /**
   * How much longer than `statementTimeout` a statement may go without an
   * answer before its connection is taken for dead (`PgPreparedClient`'s
   * `answerTimeout`): the server's own timeout, with its clearer error,
   * comes first. Default 2 seconds.
   */
  readonly answerMargin?: Duration.DurationInput | undefined
  /** How long an idle connection stays open. Default 30 seconds; `Duration.infinity`: until the pool ends. */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** Statement texts sent as named prepared statements (`PgPreparedClient`'s `capacity`). Default 256; 0: none. */
  readonly preparedStatements?: number | undefined
  /** `application_name`, as `pg_stat_activity` shows it. Default `effect-command-bus`. */
  readonly applicationName?: string | undefined
  /** Attributes added to every statement's span. */
  readonly spanAttributes?: Record<string, unknown> | undefined
}

/**
 * What `layer` provides: the `@effect/sql-pg` client under both its tags,
 * and the pool it was made from for `SqlUnitOfWork` (and `usage`).
 *
 * @since 0.1.0
 * @category models
 */
export type Services = PgClient.PgClient | SqlClient.SqlClient | SqlUnitOfWork.PgPool

/**
 * How busy a pool is, at one moment.
 *
 * @since 0.1.0
 * @category models
 */
export interface Usage {
  /** The pool's size (`poolSize`). */
  readonly max: number
  /** Connections open, idle or lent out. */
  readonly open: number
  /** Open connections nobody holds. */
  readonly idle: number
  /** Callers waiting for a connection. */
  readonly waiting: number
}

/**
 * The usage of the pool in context now, for a gauge or a health check. Any
 * `SqlUnitOfWork.PgPool` will do, this module's or one provided by hand.
 *
 * @since 0.1.0
 * @category accessors
 */
export const usage: Effect.Effect<Usage, never, SqlUnitOfWork.PgPool> = Effect.map(
  SqlUnitOfWork.PgPool,
  ({ pool }) => ({ max: pool.options.max, open: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount })
)

/**
 * The defaults of `Options`.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaults = {
  poolSize: 10,
  connectTimeout: Duration.seconds(5),
  statementTimeout: Duration.seconds(10),
  answerMargin: Duration.seconds(2),
  idleTimeout: Duration.seconds(30),
  preparedStatements: 256,
  applicationName: "effect-command-bus"
} as const

interface Settings {
  /** The URL without the settings `pg` would let override the pool's (see `urlSettings`). */
  readonly url: string
  /** The URL's own `options`, sent before or after the pool's `search_path` (see `startupOptions`). */
  readonly urlOptions: string | undefined
  readonly ssl: boolean | Tls.ConnectionOptions | undefined
  readonly schema: string | undefined
  readonly poolSize: number
  /** In milliseconds; `undefined`: none. */
  readonly connectTimeout: number | undefined
  readonly statementTimeout: number | undefined
  readonly answerMargin: number
  readonly idleTimeout: number | undefined
  readonly preparedStatements: number
  readonly applicationName: string
}

// A timer's delay in whole milliseconds, 1 to 2^31 - 1: Node fires a longer
// one at once and PostgreSQL refuses a longer statement_timeout when the
// first connection opens, far from the option that caused it; `pg` reads 0
// as no bound at all. Infinite where `infinite` allows: none (`undefined`).
const timer = (
  name: string,
  input: Duration.DurationInput,
  infinite: boolean
): Either.Either<number | undefined, string> => {
  const duration = Duration.decodeUnknown(input)
  if (Option.isNone(duration)) return Either.left(`${name} must be a duration`)
  if (infinite && !Duration.isFinite(duration.value)) return Either.right(undefined)
  const millis = Math.round(Duration.toMillis(duration.value))
  return millis >= 1 && millis <= maxTimerMillis
    ? Either.right(millis)
    : Either.left(`${name} must be 1 ms to ${maxTimerMillis} ms${infinite ? ", or Duration.infinity for none" : ""}`)
}

const count = (name: string, value: number, min: 0 | 1): Either.Either<number, string> =>
  Number.isSafeInteger(value) && value >= min
    ? Either.right(value)
    : Either.left(`${name} must be a ${min === 1 ? "positive" : "non-negative"} integer, got ${value}`)

// `pg` takes a URL's query parameters over the pool's own settings. A URL's
// `options` (another `-c` setting, a cloud provider's `endpoint=`) replaced
// the pool's `-c search_path=...`: the tables went to `"$user", public`
// rather than `schema`. Its `statement_timeout` replaced `statementTimeout`
// on the server, while the answer timeout was still counted from the option.
// Its `application_name` replaced `applicationName`. So the URL's `options`
// are taken out of it and sent with the pool's; a `statement_timeout` in it
// is refused; `applicationName`, when given, wins over the URL's.
const urlSettings = (
  url: string,
  applicationName: string | undefined,
  ssl: Options["ssl"]
): Either.Either<{ readonly url: string; readonly urlOptions: string | undefined }, string> => {
  // As `new URL` reads it: the first `#` starts the fragment, wherever it
  // is, and a `?` after it is part of the fragment, not a query.
  const fragment = url.indexOf("#")
  const end = fragment === -1 ? url.length : fragment
  const query = url.indexOf("?")
  if (url.startsWith("/") || query === -1 || query > end) return Either.right({ url, urlOptions: undefined })
  const params = new URLSearchParams(url.slice(query + 1, end))
  const tlsParams = tlsParamsIn(params)
  if (ssl !== undefined && tlsParams.length > 0) {
    return Either.left(
      `give TLS settings in the url or as ssl, not both: the url sets ${
        tlsParams.join(", ")
      }, which pg would take instead of ssl`
    )
  }
  if (params.has("statement_timeout")) {
    return Either.left(
      "url must not set statement_timeout: give it as statementTimeout, which the answer timeout is counted from"
    )
  }
  // A parameter given twice: `pg` (and libpq) take the last.
  const urlOptions = params.getAll("options").at(-1)
  const dropped = ["options", ...(applicationName === undefined ? [] : ["application_name"])]
  if (!dropped.some((name) => params.has(name))) return Either.right({ url, urlOptions })
  for (const name of dropped) params.delete(name)
  const rest = params.toString()
  return Either.right({
    url: `${url.slice(0, rest === "" ? query : query + 1)}${rest}${url.slice(end)}`,
    urlOptions
  })
}

const settingsOf = (options: Options): Either.Either<Settings, string> => {
  const given = Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url
  // `pg` reads any scheme's URL as PostgreSQL's: `mysql://...` would be
  // tried on a PostgreSQL server. A socket path (`/var/run/postgresql`,
  // `socket:`) is PostgreSQL's own.
  const scheme = typeof given === "string" ? /^([a-z][a-z0-9+.-]*):/i.exec(given.trim())?.[1]?.toLowerCase() : undefined
  const url = typeof given === "string" && given.trim() !== "" &&
      (scheme === undefined || scheme === "postgres" || scheme === "postgresql" || scheme === "socket")
    ? urlSettings(given, options.applicationName, options.ssl)
    : Either.left("url must be a postgres:// connection string")
  return Either.all({
    url: Either.map(url, (parsed) => parsed.url),
    urlOptions: Either.right(Either.getOrUndefined(Either.map(url, (parsed) => parsed.urlOptions))),
    ssl: options.ssl === undefined || typeof options.ssl === "boolean" ||
        (typeof options.ssl === "object" && options.ssl !== null)
      ? Either.right(options.ssl)
      : Either.left("ssl must be true, false or tls.connect's options"),
    schema: options.schema === undefined || (options.schema !== "" && !options.schema.includes("\0"))
      ? Either.right(options.schema)
      : Either.left("schema must be a name, not empty and without NUL characters"),
    poolSize: count("poolSize", options.poolSize ?? defaults.poolSize, 1),
    connectTimeout: timer("connectTimeout", options.connectTimeout ?? defaults.connectTimeout, true),
    statementTimeout: timer("statementTimeout", options.statementTimeout ?? defaults.statementTimeout, true),
    answerMargin: Either.map(
      timer("answerMargin", options.answerMargin ?? defaults.answerMargin, false),
      (millis) => millis ?? 0
    ),
    idleTimeout: timer("idleTimeout", options.idleTimeout ?? defaults.idleTimeout, true),
    preparedStatements: count("preparedStatements", options.preparedStatements ?? defaults.preparedStatements, 0),
    applicationName: Either.right(options.applicationName ?? defaults.applicationName)
  })
}

// The startup packet's `options` are split at whitespace, a backslash
// escaping the character after it; the name inside is a quoted identifier,
// so a keyword (`order`), capitals or a space stay part of the name.
const searchPath = (schema: string | undefined) => {
  if (schema === undefined) return "-c search_path=public"
  const quoted = `"${schema.replaceAll("\"", "\"\"")}"`
  return `-c search_path=${quoted.replace(/[\\\s]/g, (character) => `\\${character}`)}`
}

// The last `-c` of a setting wins: a schema given wins over a search_path
// in the URL's options; without one, the URL's wins over public.
const startupOptions = (settings: Settings) => {
  const options = settings.urlOptions === undefined || settings.urlOptions.trim() === ""
    ? searchPath(settings.schema)
    : settings.schema === undefined
    ? `${searchPath(undefined)} ${settings.urlOptions}`
    : `${settings.urlOptions} ${searchPath(settings.schema)}`
  // No statement timeout is none: `pg` sends no `statement_timeout` for it,
  // and the session took one from the URL's options or the role's or the
  // database's default (`ALTER ROLE ... SET statement_timeout`), which cut
  // the long migrations a pool without one is for. Last, so it wins.
  return settings.statementTimeout === undefined ? `${options} -c statement_timeout=0` : options
}

const invalid = (message: string, cause?: unknown) =>
  new SqlError({ cause: cause ?? new Error(message), message: `Invalid database configuration: ${message}` })

const makePool = (settings: Settings): Effect.Effect<Pg.Pool, SqlError> =>
  Effect.try({
    try: () => {
      // The pool's options are every connection's, the relay's listen too
      // (`@effect/sql-pg` opens it with them).
      const tls = settings.ssl === undefined ? {} : { ssl: settings.ssl }
      // What `pg` reads of the URL when it first connects (its syntax, the
      // files it names): refused here rather than at the first statement.
      new Pg.Client({ connectionString: settings.url, ...tls })
      const pool = new Pg.Pool({
        // statement_timeout ends a slow statement on the server; this
        // ends one whose answer never comes back (a partition, a frozen
        // server), which would otherwise hold its connection and its
        // request for as long as the kernel keeps the socket.
        Client: PgPreparedClient.make({
          capacity: settings.preparedStatements,
          answerTimeout: settings.statementTimeout === undefined
            ? undefined
            : settings.statementTimeout + settings.answerMargin
        }),
        connectionString: settings.url,
        ...tls,
        max: settings.poolSize,
        connectionTimeoutMillis: settings.connectTimeout ?? 0,
        idleTimeoutMillis: settings.idleTimeout ?? 0,
        ...(settings.statementTimeout === undefined ? {} : { statement_timeout: settings.statementTimeout }),
        application_name: settings.applicationName,
        options: startupOptions(settings)
      })
      // Errors of idle clients (the server went away) surface on the next
      // query; without a listener they would crash the process.
      pool.on("error", () => {})
      routeCancels(pool)
      return pool
    },
    // `pg`'s message may quote the URL, password and all.
    catch: (cause) =>
      invalid(
        (cause instanceof Error ? cause.message : String(cause)).replaceAll(settings.url, "(the URL)"),
        cause
      )
  })

/**
 * The pool and its client for the layer's lifetime. The pool ends when the
 * layer closes, after its client, waiting at most 5 seconds for the
 * connections lent out.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Services, SqlError> =>
  Layer.unwrapScoped(
    Effect.gen(function*() {
      const settings = yield* Effect.mapError(settingsOf(options), (message) => invalid(message))
      const pool = yield* Effect.acquireRelease(
        makePool(settings),
        // A release runs uninterruptibly: the wait must be interruptible for its deadline to hold.
        (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption("5 seconds"))
      )
      // The client is built in the same scope, after the pool: it closes
      // first, then the pool ends. Transactions take their connections from
      // the pool directly.
      return SqlUnitOfWork.layerPgPool(pool).pipe(Layer.provideMerge(
        PgClient.layerFromPool({
          applicationName: settings.applicationName,
          spanAttributes: options.spanAttributes,
          acquire: Effect.succeed(pool)
        })
      ))
    })
  )

/**
 * `layer`, its options read from `Config`s, as `PgClient.layerConfig` takes
 * them: `PgPool.layerConfig({ url: Config.redacted("DATABASE_URL") })`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<Services, ConfigError.ConfigError | SqlError> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(config), layer))
