/**
 * Running a statement on its connection at once.
 *
 * `@effect/sql` runs every statement through a span made by `useSpan`, its
 * statement transformers, and a `Scope` for the connection it acquires, even
 * when that connection is already there (a transaction's) or the same for
 * every statement (a pooled client's): about 65 fiber steps per statement
 * (`bench/steps.ts` counts them). Here a statement goes to that connection
 * at once, with the same `sql.execute` span (kind client, `db.query.text`,
 * `db.operation.name` and the client's own attributes) made in the same
 * step. With a statement transformer installed, or on a client whose
 * connections need a scope, it is the statement as `@effect/sql` runs it.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import type * as Tracer from "effect/Tracer"
import * as Span from "../internal/span.js"
import { autocommitConnection } from "../internal/sqlConnection.js"

/**
 * The rows of `statement`, untransformed, as `statement.withoutTransform`.
 *
 * @since 0.1.0
 * @category execution
 */
export const rows = <A>(statement: Statement.Statement<A>): Effect.Effect<ReadonlyArray<A>, SqlError> =>
  onConnection(
    statement,
    "executeWithoutTransform",
    (connection, sql, params) => connection.execute(sql, params, undefined),
    statement.withoutTransform
  )

/**
 * Runs `statement` for its effect, as `statement.raw` does, and discards the
 * driver's result.
 *
 * @since 0.1.0
 * @category execution
 */
export const run = (statement: Statement.Statement<unknown>): Effect.Effect<void, SqlError> =>
  onConnection(
    statement,
    "executeRaw",
    (connection, sql, params) => Effect.asVoid(connection.executeRaw(sql, params)),
    Effect.asVoid(statement.raw)
  )

/**
 * Where a transaction's writes can wait for its commit: provided, for the
 * transaction on `connection` alone, by a unit of work that sends them with
 * its `COMMIT` (`SqlUnitOfWork` on a pool of `PgPreparedClient`s). `hold`
 * answers whether it took the statement. For one it took, it makes its
 * `sql.execute` span (`span`), which ends with the commit, and `onFailure`
 * makes the dispatch's failure of the statement's error.
 *
 * @since 0.1.0
 * @category tags
 */
export class CommitWrites extends Context.Tag("effect-command-bus/sql/SqlStatement/CommitWrites")<CommitWrites, {
  readonly connection: object
  readonly hold: (
    sql: string,
    params: ReadonlyArray<unknown>,
    onFailure: (error: SqlError) => Effect.Effect<never, unknown>,
    span: () => Tracer.Span | undefined
  ) => boolean
}>() {}

/**
 * Holds `statement`, a write whose answer nobody reads, for the
 * transaction's `COMMIT`, to go out in the same exchange (`CommitWrites`):
 * one round trip less. Answers whether it held it; when it did not (no such
 * unit of work, inside a savepoint, a connection that cannot hold it), the
 * caller runs its write at once. A held write goes out with the `COMMIT`, or
 * ahead of the next statement the transaction sends (so a later read sees
 * it), and its error fails the commit, with what
 * `onFailure` makes of it: so a write whose outcome must decide the commit
 * (a row count) raises an error in SQL.
 *
 * @since 0.1.0
 * @category execution
 */
export const holdForCommit = <E>(
  statement: Statement.Statement<unknown>,
  onFailure: (error: SqlError) => Effect.Effect<never, E>
): Effect.Effect<boolean> =>
  Effect.withFiberRuntime<boolean>((fiber) => {
    const writes = Context.getOption(fiber.currentContext, CommitWrites)
    const transaction = Context.getOption(fiber.currentContext, SqlClient.TransactionConnection)
    if (
      writes._tag === "None" || transaction._tag === "None" || transaction.value[1] !== 0 ||
      transaction.value[0] !== writes.value.connection ||
      fiber.getFiberRef(Statement.currentTransformer)._tag === "Some"
    ) return Effect.succeed(false)
    const [sql, params] = statement.compile(true)
    // The caller's child, as a statement sent at once is: it ends with the
    // commit, after the caller's own span (which holding it does not wait for).
    const span = () =>
      fiber.getFiberRef(FiberRef.currentTracerEnabled)
        ? Span.start(fiber, "sql.execute", { kind: "client", attributes: attributesOf(statement, "executeRaw", sql) })
        : undefined
    return Effect.succeed(writes.value.hold(sql, params, onFailure, span))
  })

/**
 * `holdForCommit`, or `run` at once when it is not held; an error at once is
 * `onFailure`'s too.
 *
 * @since 0.1.0
 * @category execution
 */
export const runAtCommit = <E>(
  statement: Statement.Statement<unknown>,
  onFailure: (error: SqlError) => Effect.Effect<never, E>
): Effect.Effect<void, E> =>
  Effect.flatMap(
    holdForCommit(statement, onFailure),
    (held) => held ? Effect.void : Effect.catchAll(run(statement), onFailure)
  )

const onConnection = <A>(
  statement: Statement.Statement<unknown>,
  operation: string,
  execute: (
    connection: SqlConnection.Connection,
    sql: string,
    params: ReadonlyArray<unknown>
  ) => Effect.Effect<A, SqlError>,
  fallback: Effect.Effect<A, SqlError>
): Effect.Effect<A, SqlError> =>
  Effect.withFiberRuntime<A, SqlError>((fiber) => {
    if (fiber.getFiberRef(Statement.currentTransformer)._tag === "Some") return fallback
    const transaction = Context.getOption(fiber.currentContext, SqlClient.TransactionConnection)
    const connection = transaction._tag === "Some" ? transaction.value[0] : autocommitConnection(statement)
    if (connection === null) return fallback
    const [sql, params] = statement.compile(true)
    const executed = execute(connection, sql, params)
    if (!fiber.getFiberRef(FiberRef.currentTracerEnabled)) return executed
    return Span.leaf(fiber, executed, "sql.execute", {
      kind: "client",
      attributes: attributesOf(statement, operation, sql)
    })
  })

// The client's span attributes (database system, name, server) are a field
// of `@effect/sql`'s statement that its interface does not declare; a
// statement without it gets the two attributes of the statement itself.
const attributesOf = (statement: Statement.Statement<unknown>, operation: string, sql: string) => {
  const attributes: Record<string, unknown> = {}
  const own = (statement as { readonly spanAttributes?: unknown }).spanAttributes
  if (Array.isArray(own)) {
    for (const entry of own as ReadonlyArray<readonly [string, unknown]>) attributes[entry[0]] = entry[1]
  }
  attributes["db.operation.name"] = operation
  attributes["db.query.text"] = sql
  return attributes
}
