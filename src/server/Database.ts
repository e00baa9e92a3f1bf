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
import { mkdirSync } from "node:fs"
import * as Path from "node:path"
import Pg from "pg"
import * as Migrations from "../orders/Migrations.js"
import * as PgliteClient from "../sql/PgliteClient.js"
import * as PgPreparedClient from "../sql/PgPreparedClient.js"
import * as SqlUnitOfWork from "../sql/SqlUnitOfWork.js"
import * as Config from "./Config.js"

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
 * A `pg` pool sized and timed from configuration. `statement_timeout` is set
 * on every connection, so a runaway statement cannot hold a connection.
 *
 * @since 0.1.0
 * @category constructors
 */
export const serverLayer = (options: {
  readonly url: Redacted.Redacted
  readonly schema: Option.Option<string>
  readonly poolSize: number
  readonly connectTimeout: Duration.Duration
  readonly statementTimeout: Duration.Duration
  /** Statement texts sent as named prepared statements (default 256; 0: none). */
  readonly preparedStatements?: number | undefined
}): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient | SqlUnitOfWork.PgPool | DatabasePool, SqlError> =>
  Layer.unwrapScoped(
    Effect.map(
      Effect.acquireRelease(
        Effect.try({
          try: () => {
            const cancels = cancelPool(options)
            const pool = new Pg.Pool({
              Client: PgPreparedClient.make({ capacity: options.preparedStatements }),
              connectionString: Redacted.value(options.url),
              max: options.poolSize,
              connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
              idleTimeoutMillis: 30_000,
              statement_timeout: Duration.toMillis(options.statementTimeout),
              application_name: "effect-command-bus",
              ...Option.match(options.schema, {
                onNone: () => ({}),
                // Quoted: a lowercase name that is also a keyword ("order") is still a name.
                onSome: (schema) => ({ options: `-c search_path="${schema}"` })
              })
            })
            // Errors of idle clients (the server went away) surface on the next
            // query; without a listener they would crash the process.
            pool.on("error", () => {})
            routeCancels(pool, cancels)
            return pool
          },
          catch: (cause) => new SqlError({ cause, message: "Invalid database configuration" })
        }),
        (pool) =>
          Effect.promise(() => Promise.all([pool.end(), cancelsOf.get(pool)?.end()])).pipe(
            Effect.timeoutOption("5 seconds")
          )
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
// stalled meanwhile. Cancels go to a pool of their own, of one connection
// opened when needed and closed when idle.
const cancelStatement = /^SELECT pg_cancel_backend\(\d+\)$/

const cancelsOf = new WeakMap<Pg.Pool, Pg.Pool>()

const cancelPool = (options: {
  readonly url: Redacted.Redacted
  readonly connectTimeout: Duration.Duration
}): Pg.Pool => {
  const cancels = new Pg.Pool({
    connectionString: Redacted.value(options.url),
    max: 1,
    connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
    idleTimeoutMillis: 10_000,
    application_name: "effect-command-bus-cancel"
  })
  cancels.on("error", () => {})
  return cancels
}

const routeCancels = (pool: Pg.Pool, cancels: Pg.Pool) => {
  cancelsOf.set(pool, cancels)
  const query = pool.query.bind(pool) as (...args: Array<unknown>) => unknown
  const cancel = cancels.query.bind(cancels) as (...args: Array<unknown>) => unknown
  pool.query = ((...args: Array<unknown>) =>
    typeof args[0] === "string" && cancelStatement.test(args[0])
      ? cancel(...args)
      : query(...args)) as typeof pool.query
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
    const dataDir = Path.resolve(config.dataDir)
    yield* Effect.try({
      try: () => mkdirSync(dataDir, { recursive: true }),
      catch: (cause) => new SqlError({ cause, message: `Cannot create DATA_DIR ${dataDir}` })
    })
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
 * The database with every migration applied.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMigrated: Layer.Layer<
  PgClient.PgClient | SqlClient.SqlClient | DatabasePool,
  unknown
> = Layer.effectDiscard(migrate).pipe(Layer.provideMerge(layer))
