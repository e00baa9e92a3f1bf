/**
 * The database the service runs on: the PostgreSQL server `DATABASE_URL`
 * names, or else the embedded PostgreSQL (PGlite) in `DATA_DIR`, created on
 * first start and kept across restarts. Migrations run at start.
 *
 * @since 0.1.0
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Path from "node:path"
import * as Migrations from "../orders/Migrations.js"
import * as PgliteClient from "../sql/PgliteClient.js"
import * as PgPool from "../sql/PgPool.js"
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
export type PoolUsage = PgPool.Usage

/**
 * The database's connection pool, read at each metrics scrape.
 *
 * @since 0.1.0
 * @category tags
 */
export class DatabasePool extends Context.Tag("server/DatabasePool")<DatabasePool, {
  /** Its usage now; none on the embedded database, which has no pool. */
  readonly usage: Effect.Effect<Option.Option<PoolUsage>>
}>() {}

/**
 * The library's pool (`PgPool.layer`: prepared statements, the unit of
 * work on the pool's connections, `statement_timeout` and an answer timeout
 * `PgPool.defaults.answerMargin` past it, cancels that get through a full
 * pool), sized and timed from configuration, with its usage for the metrics.
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
  /** The CA of the server's certificate, as PEM (`DATABASE_CA`): TLS verified as `sslmode=verify-full`. */
  readonly ca?: Option.Option<string> | undefined
}): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient | SqlUnitOfWork.PgPool | DatabasePool, SqlError> =>
  Layer.effect(
    DatabasePool,
    Effect.map(SqlUnitOfWork.PgPool, (pool) => ({
      usage: PgPool.usage.pipe(Effect.map(Option.some), Effect.provideService(SqlUnitOfWork.PgPool, pool))
    }))
  ).pipe(Layer.provideMerge(PgPool.layer({
    url: options.url,
    schema: Option.getOrUndefined(options.schema),
    poolSize: options.poolSize,
    connectTimeout: options.connectTimeout,
    statementTimeout: options.statementTimeout,
    preparedStatements: options.preparedStatements,
    ssl: options.ca === undefined || Option.isNone(options.ca) ? undefined : { ca: options.ca.value }
  })))

/**
 * The embedded database has no pool: one session behind a queue (whose
 * length `PgliteClient` keeps to itself).
 */
const noPool = Layer.succeed(DatabasePool, { usage: Effect.succeedNone })

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
          poolSize: config.poolSize,
          ...(Option.isSome(config.ca) ? { tls: "verify-full, the CA of DATABASE_CA" } : {})
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
