/**
 * A throwaway PostgreSQL for benches: a fresh cluster in a temporary folder
 * on 127.0.0.1 and a free port (`test/support/Postgres.ts`, shared with the
 * fault tests), migrated with the project's own migrations, stopped by its
 * postmaster's pid when the bench is done, fails, or is interrupted.
 * `BENCH_DATABASE_URL` names an existing database to use instead (migrated,
 * never stopped, and emptied by the benches: give them one of their own);
 * `BENCH_PG_SETTINGS` adds server settings to the throwaway one
 * (`"synchronous_commit=off shared_buffers=256MB"`).
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Migrations from "../../src/orders/Migrations.js"
import * as Postgres from "../../test/support/Postgres.js"

export interface Database {
  /** A connection string for `pg`, `psql` and `pgbench`. */
  readonly url: string
  /** Stops the server (if this bench started it) and removes its files. */
  readonly stop: () => Promise<void>
}

export interface StartOptions {
  /** `max_connections`; the benches open up to 64 + two pools of 20. */
  readonly maxConnections?: number
  /** More server settings, as `-c name=value`. */
  readonly settings?: Readonly<Record<string, string>>
}

/** The folder of `initdb`, `pg_ctl` and `pgbench` (Debian keeps them off PATH). */
export const binDir = Postgres.binDir

/** A port nothing listens on now, as the kernel hands one out. */
export const freePort = Postgres.freePort

const migrate = (url: string): Promise<void> =>
  Effect.runPromise(
    Migrations.run.pipe(
      Effect.asVoid,
      Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
    )
  )

// `BENCH_PG_SETTINGS` ("name=value name=value") as settings.
const envSettings = (): Record<string, string> =>
  Object.fromEntries(
    (process.env["BENCH_PG_SETTINGS"] ?? "").split(/\s+/).filter((setting) => setting !== "").map((setting) => {
      const split = setting.indexOf("=")
      return split === -1 ? [setting, ""] : [setting.slice(0, split), setting.slice(split + 1)]
    })
  )

/**
 * Runs a PostgreSQL 15 of its own (or connects to `BENCH_DATABASE_URL`) and
 * creates the service's schema by running `src/orders/Migrations.ts`.
 */
export const start = async (options: StartOptions = {}): Promise<Database> => {
  const external = process.env["BENCH_DATABASE_URL"]
  if (external !== undefined && external !== "") {
    await migrate(external)
    return { url: external, stop: async () => {} }
  }
  const cluster = await Postgres.create({
    maxConnections: options.maxConnections ?? 300,
    settings: { ...options.settings, ...envSettings() }
  })
  try {
    await migrate(cluster.url)
  } catch (error) {
    await cluster.destroy()
    throw error
  }
  return { url: cluster.url, stop: cluster.destroy }
}
