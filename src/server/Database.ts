/**
 * The database the service runs on: the PostgreSQL server `DATABASE_URL`
 * names, or else the embedded PostgreSQL (PGlite) in `DATA_DIR`, created on
 * first start and kept across restarts. Migrations run at start.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Net from "node:net"
import * as Path from "node:path"
import Pg from "pg"
import * as Migrations from "../orders/Migrations.js"
import * as PgliteClient from "../sql/PgliteClient.js"
import * as PgPreparedClient from "../sql/PgPreparedClient.js"
import * as SqlUnitOfWork from "../sql/SqlUnitOfWork.js"
import * as Config from "./Config.js"
import * as DataDir from "./DataDir.js"

/**
 * Where a connection string points, without its password, for logs.
 *
 * @since 0.1.0
 * @category utils
 */
export const describeUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    return `${parsed.hostname}:${parsed.port || "5432"}${parsed.pathname}`
  } catch {
    return "(unparseable DATABASE_URL)"
  }
}

/**
 * How busy the connection pool is, as the metrics report it.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolUsage {
  /** The pool's size (`DB_POOL_SIZE`). */
  readonly max: number
  /** Connections open, idle or lent out. */
  readonly open: number
  readonly idle: number
  /** Callers waiting for a connection. */
  readonly waiting: number
}

/**
 * The database's connection pool, read at each metrics scrape.
 *
 * @since 0.1.0
 * @category tags
 */
export class DatabasePool extends Context.Tag("server/DatabasePool")<DatabasePool, {
  /** Its usage now; none on the embedded database, which has no pool. */
  readonly usage: () => Option.Option<PoolUsage>
}>() {}

/**
 * How much longer than `statement_timeout` a statement may go without an
 * answer before its connection is taken for dead (`PgPreparedClient`'s
 * `answerTimeout`): the server's own timeout, with its error, comes first.
 *
 * @since 0.1.0
 * @category constants
 */
export const answerMargin = 2_000

/**
 * A `pg` pool sized and timed from configuration. `statement_timeout` is set
 * on every connection, so a runaway statement cannot hold a connection, and
 * a statement whose answer does not come within it and `answerMargin` closes
 * its connection, so a server that stops answering cannot either.
 *
 * @since 0.1.0
 * @category constructors
 */
export const serverLayer = (options: {
  readonly url: Redacted.Redacted
  readonly schema: Option.Option<string>
  readonly poolSize: number
  readonly connectTimeout: Duration.Duration
  /** `Duration.infinity`: none, and no answer timeout either (migrations). */
  readonly statementTimeout: Duration.Duration
  /** Statement texts sent as named prepared statements (default 256; 0: none). */
  readonly preparedStatements?: number | undefined
}): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient | SqlUnitOfWork.PgPool | DatabasePool, SqlError> =>
  Layer.unwrapScoped(
    Effect.map(
      Effect.acquireRelease(
        Effect.try({
          try: () => {
            const pool = new Pg.Pool({
              // statement_timeout ends a slow statement on the server; this
              // ends one whose answer never comes back (a partition, a frozen
              // server), which would otherwise hold its connection and its
              // request for as long as the kernel keeps the socket.
              Client: PgPreparedClient.make({
                capacity: options.preparedStatements,
                answerTimeout: Duration.isFinite(options.statementTimeout)
                  ? Duration.toMillis(options.statementTimeout) + answerMargin
                  : undefined
              }),
              connectionString: Redacted.value(options.url),
              max: options.poolSize,
              connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
              idleTimeoutMillis: 30_000,
              ...(Duration.isFinite(options.statementTimeout)
                ? { statement_timeout: Duration.toMillis(options.statementTimeout) }
                : {}),
              application_name: "effect-command-bus",
              // Without a schema, public: PostgreSQL's default ("$user", public)
              // would put the tables in a schema named after the login role
              // when one exists, with another instance's data.
              options: Option.match(options.schema, {
                onNone: () => "-c search_path=public",
                // Quoted: a lowercase name that is also a keyword ("order") is still a name.
                onSome: (schema) => `-c search_path="${schema}"`
              })
            })
            // Errors of idle clients (the server went away) surface on the next
            // query; without a listener they would crash the process.
            pool.on("error", () => {})
            routeCancels(pool)
            return pool
          },
          catch: (cause) => new SqlError({ cause, message: "Invalid database configuration" })
        }),
        // A release runs uninterruptibly: the wait must be interruptible for its deadline to hold.
        (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption("5 seconds"))
      ),
      // The client is built in the same scope, after the pool: it closes
      // first, then the pool ends.
      (pool) =>
        Layer.merge(
          // Transactions take their connections from the pool directly.
          SqlUnitOfWork.layerPgPool(pool).pipe(Layer.provideMerge(
            PgClient.layerFromPool({ applicationName: "effect-command-bus", acquire: Effect.succeed(pool) })
          )),
          Layer.succeed(DatabasePool, {
            usage: () =>
              Option.some({
                max: options.poolSize,
                open: pool.totalCount,
                idle: pool.idleCount,
                waiting: pool.waitingCount
              })
          })
        )
    )
  )

// `@effect/sql-pg` cancels the statement of an interrupted fiber (a command
// past its timeout) with `SELECT pg_cancel_backend(pid)` on the pool the
// statement runs on. With every connection of that pool busy, the cancelled
// statements' own among them, the cancel waited for one: a command's timeout
// stretched to its statement's end, or the statement timeout, and the service
// stalled meanwhile. Here that query is sent as PostgreSQL's own
// CancelRequest instead, as libpq's PQcancel does: a connection of its own
// that names the backend and its secret key and closes. It needs no free
// connection of the pool, no login, and no connection slot of the server, so
// it gets through a full pool and a server at max_connections alike.
const cancelStatement = /^SELECT pg_cancel_backend\((\d+)\)$/

/** What a `pg` client of the pool knows of its backend. */
interface Backend {
  readonly processID?: number
  readonly secretKey?: number
  readonly host?: string
  readonly port?: number
}

type Callback = (error: Error | null, result?: unknown) => void

const routeCancels = (pool: Pg.Pool) => {
  const query = pool.query.bind(pool) as (...args: Array<unknown>) => unknown
  pool.query = ((...args: Array<unknown>) => {
    const match = typeof args[0] === "string" ? cancelStatement.exec(args[0]) : null
    const done = args.find((arg) => typeof arg === "function") as Callback | undefined
    if (match === null || done === undefined) return query(...args)
    // `pg-pool` keeps its clients here; a version that does not is asked the query.
    const clients = (pool as unknown as { readonly _clients?: ReadonlyArray<Backend> })._clients ?? []
    const backend = clients.find((client) => client.processID === Number(match[1]))
    if (backend?.secretKey === undefined || backend.port === undefined) return query(...args)
    sendCancelRequest(backend as Required<Backend>, done)
    return undefined
  }) as typeof pool.query
}

const sendCancelRequest = (backend: Required<Backend>, done: Callback) => {
  const socket = backend.host.startsWith("/")
    ? Net.connect(`${backend.host}/.s.PGSQL.${backend.port}`)
    : Net.connect(backend.port, backend.host)
  const message = Buffer.alloc(16)
  message.writeInt32BE(16, 0)
  message.writeInt32BE(80877102, 4) // the CancelRequest code
  message.writeInt32BE(backend.processID, 8)
  message.writeInt32BE(backend.secretKey, 12)
  let finished = false
  const finish = (error: Error | null) => {
    if (finished) return
    finished = true
    socket.destroy()
    done(error, { rows: [] })
  }
  socket.setTimeout(5_000, () => finish(new Error("PostgreSQL did not take the cancel request in time")))
  socket.once("connect", () => socket.end(message))
  socket.once("error", finish)
  // The server closes the connection once it has the request.
  socket.once("close", () => finish(null))
}

/**
 * The embedded database has no pool: one session behind a queue (whose
 * length `PgliteClient` keeps to itself).
 */
const noPool = Layer.succeed(DatabasePool, { usage: () => Option.none() })

/**
 * The database from configuration, announced in the log.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<
  PgClient.PgClient | SqlClient.SqlClient | DatabasePool,
  SqlError | ConfigError.ConfigError
> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const config = yield* Config.database
    if (Option.isSome(config.url)) {
      yield* Effect.logInfo("database.server").pipe(
        Effect.annotateLogs({
          database: describeUrl(Redacted.value(config.url.value)),
          schema: Option.getOrElse(config.schema, () => "public"),
          poolSize: config.poolSize
        })
      )
      return serverLayer({ ...config, url: config.url.value })
    }
    const dataDir = yield* DataDir.ensure(config.dataDir)
    yield* Effect.logInfo("database.embedded").pipe(
      Effect.annotateLogs({ dataDir, note: "embedded PostgreSQL (PGlite); set DATABASE_URL for a server" })
    )
    return Layer.merge(
      PgliteClient.layer({ dataDir: Path.join(dataDir, "pg"), preparedStatements: config.preparedStatements }),
      noPool
    )
  })
)

/**
 * Creates the configured schema if needed, then applies every migration.
 *
 * @since 0.1.0
 * @category migrations
 */
export const migrate = Effect.gen(function*() {
  const config = yield* Config.database
  if (Option.isSome(config.url) && Option.isSome(config.schema)) {
    const sql = yield* SqlClient.SqlClient
    // Instances starting together on a new schema: CREATE SCHEMA IF NOT
    // EXISTS alone can fail in all but one with a unique violation, so they
    // take turns, as the migrations do.
    yield* sql.withTransaction(Effect.zipRight(
      sql`SELECT pg_advisory_xact_lock(hashtext('effect-command-bus:create-schema'))`,
      sql.unsafe(`CREATE SCHEMA IF NOT EXISTS "${config.schema.value}"`)
    ))
  }
  return yield* Migrations.run
})

/**
 * The database with every migration applied. On a server they run on a
 * connection of their own, closed after them, with no statement timeout:
 * `DB_STATEMENT_TIMEOUT` bounds requests, not migrations. Under it, an
 * instance starting while another migrated for longer (a large table) gave
 * up waiting for the migrations' lock and exited, and a migration that took
 * longer was cut off.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMigrated: Layer.Layer<
  PgClient.PgClient | SqlClient.SqlClient | DatabasePool,
  unknown
> = Layer.effectDiscard(
  Effect.flatMap(Config.database, (config) =>
    Option.match(config.url, {
      onNone: () => migrate,
      onSome: (url) =>
        Effect.provide(
          migrate,
          serverLayer({ ...config, url, poolSize: 1, statementTimeout: Duration.infinity, preparedStatements: 0 })
        )
    }))
).pipe(Layer.provideMerge(layer))
