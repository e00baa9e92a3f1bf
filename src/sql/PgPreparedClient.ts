/**
 * A `pg` client class that sends statements as named prepared statements.
 *
 * `pg` (and `@effect/sql-pg` over it) sends every statement unnamed, so the
 * server parses and plans it each time. With this class as a pool's `Client`
 * (`new Pg.Pool({ Client: PgPreparedClient.make() })`, then
 * `PgClient.layerFromPool`), a statement with parameters gets one name per
 * text: each connection parses and plans it once and binds it afterwards.
 * On this project's create-order transaction that took about a quarter off
 * PostgreSQL's CPU per order.
 *
 * - Only the first `capacity` texts (default 256) are named, so a connection
 *   never holds more; statements beyond them, and those without parameters,
 *   go unnamed as before.
 * - A statement dropped behind the client's back (`DEALLOCATE ALL`,
 *   `DISCARD ALL`), or whose plan no longer fits a changed table ("cached
 *   plan must not change result type"), gets a new name on that connection;
 *   outside a transaction it runs again under it at once, inside one (which
 *   the failure has aborted) it fails once.
 * - Not for a pooler in transaction mode (PgBouncer before 1.21, or without
 *   `max_prepared_statements`), where the next statement may reach another
 *   server connection.
 *
 * @since 0.1.0
 */
import Pg from "pg"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** How many statement texts get a name (default 256; 0 names none). */
  readonly capacity?: number | undefined
}

type Callback = (error: Error | null, result?: unknown) => void

interface QueryConfig {
  readonly text: string
  readonly values?: ReadonlyArray<unknown>
  readonly name?: string
  readonly submit?: unknown
}

// 26000: no prepared statement of that name; 0A000 with this text: the
// tables changed under a cached plan in a way that changes its result.
const isStale = (error: unknown): boolean => {
  const code = (error as { readonly code?: unknown } | null)?.code
  return code === "26000" ||
    (code === "0A000" && String((error as { readonly message?: unknown }).message).includes("cached plan"))
}

/**
 * A `pg.Client` subclass whose statements with parameters are named, one
 * name per text, shared by every client of the class (so by a pool's
 * connections).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): typeof Pg.Client => {
  const capacity = options.capacity ?? 256
  const names = new Map<string, string>()
  const nameOf = (text: string): string | undefined => {
    let name = names.get(text)
    if (name === undefined && names.size < capacity) {
      name = `ecb_${names.size}`
      names.set(text, name)
    }
    return name
  }

  return class PreparedClient extends Pg.Client {
    /** Texts renamed on this connection after their statement went stale. */
    private renamed: Map<string, string> | undefined
    private renames = 0

    override query(config: any, values?: any, callback?: any): any {
      const named = this.named(config, values)
      if (named === undefined) return super.query(config, values, callback)
      const done: Callback | undefined = typeof values === "function" ? values : callback
      if (done === undefined) {
        return new Promise((resolve, reject) =>
          this.send(named, (error, result) => error === null ? resolve(result) : reject(error))
        )
      }
      this.send(named, done)
      return undefined
    }

    /** `config` with its statement's name, when it has parameters and a name to get. */
    private named(config: unknown, values: unknown): QueryConfig | undefined {
      if (typeof config === "string") {
        if (!Array.isArray(values) || values.length === 0) return undefined
        const name = this.nameFor(config)
        return name === undefined ? undefined : { name, text: config, values }
      }
      if (typeof config !== "object" || config === null) return undefined
      const query = config as QueryConfig
      if (
        typeof query.submit === "function" || query.name !== undefined || typeof query.text !== "string" ||
        !Array.isArray(query.values) || query.values.length === 0
      ) return undefined
      const name = this.nameFor(query.text)
      return name === undefined ? undefined : { ...query, name }
    }

    private nameFor(text: string): string | undefined {
      return this.renamed?.get(text) ?? nameOf(text)
    }

    private send(config: QueryConfig, done: Callback) {
      super.query(config as Pg.QueryConfig, (error: Error | null, result: unknown) => {
        if (error === null || !isStale(error)) return done(error, result)
        const retry = { ...config, name: this.rename(config) }
        // `pg` reports an error as it arrives, before the server says what
        // state it left: the status is still the one this statement started
        // in. Idle means it ran on its own, and its failure changed nothing.
        const alone = (this as unknown as { readonly _txStatus?: unknown })._txStatus === "I"
        if (!alone) return done(error, result)
        super.query(retry as Pg.QueryConfig, done as any)
      })
    }

    /** A fresh name for `config`'s text on this connection (the old one may still exist on the server). */
    private rename(config: QueryConfig): string {
      const name = `${config.name}_${++this.renames}`
      ;(this.renamed ??= new Map()).set(config.text, name)
      return name
    }
  }
}
