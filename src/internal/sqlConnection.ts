/**
 * What `@effect/sql`'s statements and `@effect/sql-pg`'s client carry
 * without declaring it: the connection a client runs statements on outside
 * a transaction, and the class `@effect/sql-pg` wraps a pool's client in.
 *
 * @internal
 */
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type * as Statement from "@effect/sql/Statement"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"

// The connection a client runs statements on outside a transaction, when it
// is one object that needs no scope (`@effect/sql-pg`'s and PGlite's hand
// each statement to the pool or the session): found once per client by
// running its acquirer twice with no scope, and kept when both runs give the
// same connection. A client whose acquirer needs a scope, or hands out a new
// connection each time, keeps `@effect/sql`'s way (null). The acquirer is a
// field of `@effect/sql`'s statements that their interface does not declare.
const autocommitConnections = new WeakMap<object, SqlConnection.Connection | null>()

/** @internal */
export const autocommitConnection = (statement: Statement.Statement<unknown>): SqlConnection.Connection | null => {
  const acquirer = (statement as { readonly acquirer?: unknown }).acquirer
  if (!Effect.isEffect(acquirer)) return null
  let connection = autocommitConnections.get(acquirer)
  if (connection === undefined) {
    const acquire = () => {
      const exit = Effect.runSyncExit(acquirer as Effect.Effect<SqlConnection.Connection, unknown>)
      return Exit.isSuccess(exit) ? exit.value : null
    }
    const first = acquire()
    connection = first !== null && acquire() === first ? first : null
    autocommitConnections.set(acquirer, connection)
  }
  return connection
}

/**
 * How `@effect/sql-pg` makes the connection of one pool client (its
 * transactions' `ConnectionImpl`): the class of its autocommit connection,
 * which holds the client it is given as `pg` and none of its own. Undefined
 * for any other client, or a version whose class no longer does so.
 *
 * @internal
 */
export const connectionClassOf = (
  statement: Statement.Statement<unknown>
): ((client: object) => SqlConnection.Connection) | undefined => {
  const autocommit = autocommitConnection(statement) as { readonly pg?: unknown } | null
  if (autocommit === null || !("pg" in autocommit) || autocommit.pg !== undefined) return undefined
  const Connection = autocommit.constructor as new(client: object) => SqlConnection.Connection & { pg?: unknown }
  const marker = {}
  try {
    if (new Connection(marker).pg !== marker) return undefined
  } catch {
    return undefined
  }
  return (client) => new Connection(client)
}
