/**
 * The unit of work on `@effect/sql`: one transaction per dispatch, so the
 * handler's writes, its outbox rows and its idempotency record commit or
 * roll back together. Interrupting the dispatch (a timeout) rolls it back.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import type Pg from "pg"
import type { StoreUnavailable } from "../CommandError.js"
import { markRolledBack } from "../internal/conflict.js"
import * as Span from "../internal/span.js"
import { connectionClassOf } from "../internal/sqlConnection.js"
import * as UnitOfWork from "../UnitOfWork.js"
import type * as PgPreparedClient from "./PgPreparedClient.js"
import * as SqlFailure from "./SqlFailure.js"
import { CommitWrites } from "./SqlStatement.js"

/**
 * The `pg` pool an `@effect/sql-pg` client was made from
 * (`PgClient.layerFromPool`), beside that client. Provided, it lets the unit
 * of work take each transaction's connection from the pool itself, with
 * `BEGIN` sent in the same step and `COMMIT` and the release in one more:
 * about a seventh less CPU per dispatch than `sql.withTransaction`'s scope,
 * finalizers and statement effects. On a pool of `PgPreparedClient`s,
 * `BEGIN` goes out with the transaction's first statement, in the same
 * write, and a transaction that sends no statement sends neither `BEGIN`
 * nor its end; the writes its stores hold for the commit
 * (`SqlStatement.runAtCommit`: the outbox's events, the idempotency record)
 * go out with `COMMIT`, in the same exchange. Same statements, same span
 * (`sql.transaction`), same rollback on failure and interruption. Used only
 * by a unit of work on that same client.
 *
 * @since 0.1.0
 * @category tags
 */
export class PgPool extends Context.Tag("effect-command-bus/sql/SqlUnitOfWork/PgPool")<PgPool, {
  readonly client: SqlClient.SqlClient
  readonly pool: Pg.Pool
}>() {}

/**
 * `PgPool` for the client in context and `pool`, the pool it was made from.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerPgPool = (pool: Pg.Pool): Layer.Layer<PgPool, never, SqlClient.SqlClient> =>
  Layer.effect(PgPool, Effect.map(SqlClient.SqlClient, (client) => ({ client, pool })))

/**
 * `sql.withTransaction`, or the pool's own connections when a `PgPool` of
 * this client is provided and the client is `@effect/sql-pg`'s. A transaction
 * inside another (a dispatch from a handler) is a savepoint of the outer
 * one either way.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<UnitOfWork.Service, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pgPool = yield* Effect.serviceOption(PgPool)
  // A transaction's connection tells it from any other; one inside another
  // (a savepoint) has the outer one's, and ends with it.
  const ends = UnitOfWork.makeEnds()
  // Each savepoint's level around it: a fiber forked in a savepoint that
  // ended writes, on the connection, in the innermost level still open.
  const parents = new WeakMap<object, object>()
  const outermost: <A, E, R>(self: Effect.Effect<A, E, R>, fiber: AnyFiber) => Effect.Effect<A, E | SqlError, R> =
    (Option.isSome(pgPool) && pgPool.value.client === sql
      ? onPool(sql, pgPool.value.pool, ends)
      : undefined) ?? withTransaction(sql, ends)
  return {
    transactional: <A, E, R>(self: Effect.Effect<A, E, R>) =>
      Effect.withFiberRuntime<A, E | StoreUnavailable, R>((fiber) => {
        const connection = connectionOf(fiber)
        if (connection === undefined) return rolledBackWhole(SqlFailure.classify(outermost(self, fiber)))
        // A fiber forked in a transaction of this unit of work that outlived
        // it: its connection went back to the pool (where it may be in
        // another's transaction), so this is a transaction of its own.
        if (ends.hasEnded(connection)) {
          return rolledBackWhole(SqlFailure.classify(Effect.mapInputContext(
            outermost(self, fiber),
            (context: Context.Context<R>) =>
              Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<R>
          )))
        }
        // Inside a transaction: a savepoint of it, as `@effect/sql` makes.
        // What is registered in it waits on it (it may roll back while the
        // transaction commits), under the innermost level that takes them.
        const outer = innermost(ends, parents, fiber, connection)
        // Its exit read in a region of its own, so that an interruption that
        // came as it ended does not pass for its rollback.
        let level: object | undefined
        return SqlFailure.classify(Effect.uninterruptibleMask((restore) =>
          Effect.onExit(
            sql.withTransaction(restore(Effect.withFiberRuntime<A, E, R>((inner) => {
              level = levelOf(inner)
              if (level === undefined) return self
              ends.within(level, outer)
              parents.set(level, outer)
              return Effect.locally(self, currentLevel, level)
            }))),
            // Kept, what it registered waits on the level open around it now:
            // a fiber's may outlive the savepoint it began in.
            (exit) =>
              level === undefined
                ? Effect.void
                : ends.leave(level, openAround(ends, parents, outer) ?? outer, Exit.isSuccess(exit))
          )
        ))
      }),
    afterEnd: (end) =>
      Effect.withFiberRuntime((fiber) => {
        const connection = connectionOf(fiber)
        if (connection === undefined) return Effect.succeed(false)
        // The innermost savepoint the caller is in that this unit of work
        // began, else the transaction (a savepoint made with
        // `sql.withTransaction` directly counts as the level around it).
        return Effect.succeed(ends.add(innermost(ends, parents, fiber, connection), end))
      })
  }
})

type Ends = ReturnType<typeof UnitOfWork.makeEnds>

// A transaction of its own that the database ended to break a deadlock or a
// serialization conflict rolled back whole: the retry middleware may run its
// dispatch again. A savepoint's does not (its transaction goes on).
const rolledBackWhole = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.tapError(self, (error) => {
    markRolledBack(error)
    return Effect.void
  })

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

/** The level (transaction or savepoint) the fiber is in, if any: `@effect/sql`'s pair of its connection and depth. */
const levelOf = (fiber: AnyFiber): object | undefined =>
  Option.getOrUndefined(Context.getOption(fiber.currentContext, SqlClient.TransactionConnection))

/**
 * The innermost savepoint this unit of work began that the fiber is in, as
 * `transactional` marks it: a savepoint made with `sql.withTransaction`
 * directly hides it from `levelOf`, but rolls back with it all the same.
 */
const currentLevel = FiberRef.unsafeMake<object | undefined>(undefined)

/**
 * The level the fiber's registrations wait on: its own when this unit of
 * work began it and it is open, else the innermost open one around it
 * (`currentLevel`, of this transaction; a level that ended hands on to the
 * one it was begun in, as the connection's statements go there), else the
 * transaction.
 */
const innermost = (ends: Ends, parents: WeakMap<object, object>, fiber: AnyFiber, connection: object): object => {
  const level = openAround(ends, parents, levelOf(fiber))
  if (level !== undefined) return level
  const marked = fiber.getFiberRef(currentLevel)
  if (marked !== undefined && (marked as ReadonlyArray<unknown>)[0] === connection) {
    const around = openAround(ends, parents, marked)
    if (around !== undefined) return around
  }
  return connection
}

/** `from` while it is open, else the innermost open level it was begun in, if any. */
const openAround = (ends: Ends, parents: WeakMap<object, object>, from: object | undefined): object | undefined => {
  let current = from
  while (current !== undefined && !ends.isOpen(current)) current = parents.get(current)
  return current
}

/** The connection of the transaction the fiber is in, if any. */
const connectionOf = (fiber: AnyFiber): object | undefined => {
  const transaction = Context.getOption(fiber.currentContext, SqlClient.TransactionConnection)
  return Option.isSome(transaction) ? transaction.value[0] : undefined
}

/** `sql.withTransaction` outside any, running what was registered for it once it ends. */
const withTransaction =
  (sql: SqlClient.SqlClient, ends: Ends) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> => {
    let connection: object | undefined
    // `@effect/sql` does not read COMMIT's answer: one that rolled back (a
    // failed statement the handler went past) would pass for a commit.
    const checked = (sql as { readonly [SqlFailure.checksAbortedCommit]?: boolean })[SqlFailure.checksAbortedCommit]
      ? self
      : Effect.tap(self, () => SqlFailure.failIfAborted(sql.unsafe("SELECT 1")))
    // Whether COMMIT went out: `withTransaction` sends it, uninterruptibly,
    // once the work succeeded. An interruption that came meanwhile (a client
    // that hung up) ends the transaction interrupted all the same, its
    // commit's success hidden; a failed commit leaves its defect beside the
    // interruption.
    let commitSent = false
    // Once the work is done, its connection (`@effect/sql-pg`'s) sends only
    // the transaction's end: a fiber forked in it that outlives it must not
    // write into whatever the pool's client serves next, or commit on its own.
    const seen = Effect.withFiberRuntime<A, E | SqlError, R>((fiber) => {
      connection = connectionOf(fiber)
      if (connection === undefined) return checked
      ends.begin(connection)
      watchCommit(connection, () => {
        commitSent = true
      })
      const of = connection
      return Effect.ensuring(checked, Effect.sync(() => retireButEnd(of)))
    })
    return Effect.onExit(
      sql.withTransaction(seen),
      (exit) => {
        if (connection === undefined) return Effect.void
        retire(connection)
        return ends.run(connection, Exit.isSuccess(exit) || (commitSent && Cause.isInterruptedOnly(exit.cause)))
      }
    )
  }

/**
 * Calls `sent` when `@effect/sql`'s `withTransaction` sends COMMIT on the
 * transaction's connection (its own, made for this transaction, as
 * `@effect/sql-pg`'s and PGlite's are; `executeUnprepared` is how both send it).
 */
const watchCommit = (connection: object, sent: () => void) => {
  type Execute = SqlConnection.Connection["executeUnprepared"]
  const execute = (connection as { readonly executeUnprepared?: unknown }).executeUnprepared
  if (typeof execute !== "function") return
  const watched: Execute = function(this: unknown, statement, params, transformRows) {
    if (statement === "COMMIT") sent()
    return (execute as Execute).call(this, statement, params, transformRows)
  }
  ;(connection as { executeUnprepared: Execute }).executeUnprepared = watched
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<UnitOfWork.UnitOfWork, never, SqlClient.SqlClient> = Layer.effect(
  UnitOfWork.UnitOfWork,
  make
)

// -----------------------------------------------------------------------------
// transactions on a pg pool's connections
// -----------------------------------------------------------------------------

// What a transaction's connection runs its statements on once the
// transaction's work is done: the pool's client may by then serve another
// transaction, which a fiber forked in this one and still running (a
// savepoint it began while this was open, a statement) would write into.
// Refused, as PGlite refuses a connection used after its transaction.
const ended = {
  query: (...args: ReadonlyArray<unknown>) => {
    const error = new Error(
      "connection used after its transaction ended (a fiber forked in the transaction outlived it)"
    )
    // As `pg` answers: a submittable (a cursor, which `@effect/sql-pg`'s
    // streams send) through its own handler, else to the callback, or,
    // without one, by the promise. A cursor given a rejected promise was
    // never told, and the rejection, handled by nobody, ended the process.
    const submittable = args[0] as { readonly submit?: unknown; readonly handleError?: unknown } | null | undefined
    if (typeof submittable?.submit === "function" && typeof submittable.handleError === "function") {
      const handleError = submittable.handleError as (error: Error) => void
      queueMicrotask(() => handleError.call(submittable, error))
      return submittable
    }
    const callback = args[args.length - 1]
    if (typeof callback !== "function") return Promise.reject(error)
    callback(error)
    return undefined
  }
}

/** Points the connection (`@effect/sql-pg`'s, holding its client as `pg`) at `ended`. */
const retire = (connection: object) => {
  if ("pg" in connection) (connection as { pg: unknown }).pg = ended
}

interface Queryable {
  readonly query: (...args: ReadonlyArray<unknown>) => unknown
}

/**
 * As `retire`, but the transaction's own end still goes through: the
 * `COMMIT` or `ROLLBACK` that `@effect/sql`'s `withTransaction` sends on the
 * connection once the work is done (a savepoint's statements never are one).
 */
const retireButEnd = (connection: object) => {
  if (!("pg" in connection)) return
  const client = (connection as { pg: unknown }).pg as Queryable | undefined
  if (client === undefined || client === ended) return
  ;(connection as { pg: unknown }).pg = {
    query: (...args: ReadonlyArray<unknown>) =>
      args[0] === "COMMIT" || args[0] === "ROLLBACK" ? client.query(...args) : ended.query(...args)
  }
}

type DefersBegin = Pick<PgPreparedClient.PreparedClient, "deferBegin" | "cancelDeferredBegin">

/** A `PgPreparedClient`'s, which can send `BEGIN` with the next statement. */
const defersBegin = (client: Pg.PoolClient): client is Pg.PoolClient & DefersBegin =>
  typeof (client as Partial<DefersBegin>).deferBegin === "function" &&
  typeof (client as Partial<DefersBegin>).cancelDeferredBegin === "function"

type HoldsWrites = Pick<
  PgPreparedClient.PreparedClient,
  "deferUntilCommit" | "commitDeferred" | "dropDeferred" | "takeDeferredFailure"
>

/** A `PgPreparedClient`'s, which can hold writes for the commit. */
const holdsWrites = (client: Pg.PoolClient): client is Pg.PoolClient & HoldsWrites =>
  typeof (client as Partial<HoldsWrites>).deferUntilCommit === "function" &&
  typeof (client as Partial<HoldsWrites>).commitDeferred === "function" &&
  typeof (client as Partial<HoldsWrites>).dropDeferred === "function" &&
  typeof (client as Partial<HoldsWrites>).takeDeferredFailure === "function"

/** A connection held for a transaction, on a client that can hold writes for its commit. */
type Holding = Held & { readonly client: Pg.PoolClient & HoldsWrites }

/** A write held for the commit, as its store registered it. */
interface HeldWrite {
  readonly onFailure: (error: SqlError) => Effect.Effect<never, unknown>
  readonly span: Tracer.Span | undefined
}

interface Held {
  readonly client: Pg.PoolClient
  readonly release: (error?: Error | boolean) => void
  readonly onError: (error: Error) => void
  /** The error the client emitted while held: it is then destroyed, not pooled again. */
  broken: Error | undefined
}

/** Hands `held` back to the pool: destroyed when it broke while held or `failed`. */
const handBack = (held: Held, failed?: Error) => {
  held.client.off("error", held.onError)
  held.release(held.broken ?? failed)
}

/**
 * A connection taken from the pool with its transaction begun (or, on a
 * `PgPreparedClient`, to begin with its first statement). A client that
 * emits an error while held (the server went away) is destroyed when it is
 * released, as `@effect/sql-pg` does with its own. Called where interruption
 * is masked: `restore` makes the wait for a connection interruptible, so that
 * a deadline or a hang-up is not held up by a full pool; a connection handed
 * out after the wait was given up goes straight back.
 */
const begin = (
  pool: Pg.Pool,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
): Effect.Effect<Held, SqlError> =>
  Effect.flatMap(acquire(pool, restore), (held) =>
    Effect.async<Held, SqlError>((resume) => {
      held.client.on("error", held.onError)
      if (defersBegin(held.client) && held.client.deferBegin()) return resume(Effect.succeed(held))
      held.client.query("BEGIN", (error: Error | null) => {
        if (error === null) return resume(Effect.succeed(held))
        handBack(held, error)
        resume(Effect.fail(new SqlError({ cause: error, message: "Failed to begin transaction" })))
      })
    }))

const acquire = (
  pool: Pg.Pool,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
): Effect.Effect<Held, SqlError> =>
  Effect.suspend(() => {
    let given: Held | undefined
    let abandoned = false
    return Effect.onExit(
      restore(Effect.async<Held, SqlError>((resume) => {
        pool.connect((error, client, release) => {
          if (abandoned) {
            if (client !== undefined) release()
            return
          }
          if (error !== undefined || client === undefined) {
            const cause = error ?? new Error("No client returned")
            return resume(Effect.fail(new SqlError({ cause, message: "Failed to acquire connection for transaction" })))
          }
          const held: Held = {
            client,
            release,
            onError: (cause) => {
              held.broken = cause
            },
            broken: undefined
          }
          given = held
          resume(Effect.succeed(held))
        })
        return Effect.sync(() => {
          abandoned = true
        })
      })),
      // Handed out, but the wait was interrupted before it was taken.
      (exit) =>
        Effect.sync(() => {
          if (Exit.isFailure(exit) && given !== undefined) given.release()
        })
    )
  })

/**
 * Ends the transaction (`COMMIT` or `ROLLBACK`) and hands the connection
 * back; one whose end failed is destroyed. A connection lost during COMMIT
 * reports the failed COMMIT before the client emits its error, so without
 * that the pool took the dead connection back as a live one, and the next
 * statement on it (the release of an idempotency claim) failed.
 */
const end = (held: Held, commit: boolean) =>
  Effect.async<void, SqlError>((resume) => {
    if (!commit && holdsWrites(held.client)) held.client.dropDeferred()
    // No statement went out, so no BEGIN: there is nothing to end.
    if (defersBegin(held.client) && held.client.cancelDeferredBegin()) {
      handBack(held)
      return resume(Effect.void)
    }
    held.client.query(commit ? "COMMIT" : "ROLLBACK", (error: Error | null, result?: { command?: string }) => {
      handBack(held, error ?? undefined)
      if (error !== null) {
        return resume(
          Effect.fail(new SqlError({ cause: error, message: `Failed to ${commit ? "commit" : "roll back"}` }))
        )
      }
      // A statement that failed in the transaction, its error caught by the
      // handler, aborted it: PostgreSQL answers COMMIT with ROLLBACK and no
      // error. The dispatch did not commit, so it does not succeed.
      if (commit && result?.command === "ROLLBACK") return resume(Effect.fail(SqlFailure.abortedCommit()))
      resume(Effect.void)
    })
  })

// The outcomes of held writes beside one that failed at commit: those held
// before it ran and were rolled back, those after it never ran.
const rolledBackAfter = () =>
  new SqlError({ cause: new Error("Rolled back"), message: "Rolled back: a write held after it failed" })
const skipped = () => new SqlError({ cause: new Error("Not run"), message: "Not run: a write held before it failed" })

/** Ends each held write's span with `outcome(i)`. */
const endHeldSpans = (
  fiber: AnyFiber,
  writes: ReadonlyArray<HeldWrite>,
  outcome: (i: number) => Exit.Exit<unknown, unknown>
) => {
  for (const [i, write] of writes.entries()) {
    if (write.span !== undefined) Span.end(fiber, write.span, outcome(i))
  }
}

/** The dispatch's failure of held write `index`, failed with `error`: what its store said. */
const heldWriteFailed = (
  writes: ReadonlyArray<HeldWrite>,
  index: number,
  error: Error
): Effect.Effect<never, unknown> => {
  const sqlError = new SqlError({ cause: error, message: "Failed to execute statement" })
  const write = writes[index]
  return write === undefined ? Effect.die(sqlError) : write.onFailure(sqlError)
}

/**
 * Rolls back a transaction that held writes. One that a later statement sent
 * ahead and that failed aborted the transaction, so what came after it
 * failed for that reason (25P02): the transaction fails as that write's store
 * says, as at commit. Otherwise the held writes were never sent, and their
 * spans end with the transaction's failure.
 */
const rollBackHolding = (
  held: Holding,
  writes: ReadonlyArray<HeldWrite>,
  fiber: AnyFiber,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void, unknown> =>
  Effect.suspend(() => {
    const failed = held.client.takeDeferredFailure()
    const rolledBack = Effect.ensuring(
      Effect.orDie(end(held, false)),
      Effect.sync(() => endHeldSpans(fiber, writes, (i) => i === failed?.index ? Exit.die(failed.error) : exit))
    )
    return failed === undefined
      ? rolledBack
      : Effect.zipRight(rolledBack, heldWriteFailed(writes, failed.index, failed.error))
  })

/**
 * Commits `held`'s transaction, with the writes it holds in the same
 * exchange (none held: `end`). A held write that failed rolls the
 * transaction back and fails as its store said; a COMMIT that failed or
 * rolled back is a defect, as `end`'s failures are here. `fiber` ends the
 * writes' spans.
 */
const commitWith = (
  held: Holding,
  writes: ReadonlyArray<HeldWrite>,
  fiber: AnyFiber
): Effect.Effect<void, unknown> =>
  Effect.async<void, unknown>((resume) => {
    // Ends the writes' spans as the commit ended, then the commit.
    const ended = (outcome: Exit.Exit<void, unknown>) => {
      endHeldSpans(fiber, writes, () => outcome)
      resume(outcome)
    }
    const sent = held.client.commitDeferred((error, outcome) => {
      if (error !== null || outcome === undefined) {
        handBack(held, error ?? undefined)
        const cause = error ?? new Error("No answer to COMMIT")
        return ended(Exit.die(new SqlError({ cause, message: "Failed to commit" })))
      }
      if (outcome._tag !== "Failed") {
        handBack(held)
        return ended(outcome._tag === "Committed" ? Exit.void : Exit.die(SqlFailure.abortedCommit()))
      }
      // The transaction is open and aborted: rolled back before the failure
      // is told, so the connection goes back idle. Before the failed write,
      // writes that ran and are rolled back; after it, writes that never ran.
      endHeldSpans(fiber, writes, (i) =>
        Exit.die(i === outcome.index ? outcome.error : i < outcome.index ? rolledBackAfter() : skipped()))
      held.client.query("ROLLBACK", (rollbackError: Error | null) => {
        handBack(held, rollbackError ?? undefined)
        resume(heldWriteFailed(writes, outcome.index, outcome.error))
      })
    })
    // None held any more (sent ahead of a later statement), none failed.
    if (!sent) {
      const endSpans = (exit: Exit.Exit<void>) =>
        Effect.sync(() =>
          endHeldSpans(fiber, writes, () => exit)
        )
      resume(Effect.onExit(Effect.orDie(end(held, true)), endSpans))
    }
  })

/**
 * An outermost transaction on the pool's connections, or undefined when the
 * client is not one this can hand a connection to (not `@effect/sql-pg`'s,
 * or a version whose connection class takes no client).
 */
const onPool = (sql: SqlClient.SqlClient, pool: Pg.Pool, ends: Ends) => {
  const probe = sql`SELECT 1`
  const connectionFor = connectionClassOf(probe)
  if (connectionFor === undefined) return undefined
  const spanAttributes = (probe as { readonly spanAttributes?: unknown }).spanAttributes
  const attributes: ReadonlyArray<readonly [string, unknown]> = Array.isArray(spanAttributes) ? spanAttributes : []
  // `fiber` is the one running the transaction, read before its region.
  return <A, E, R>(self: Effect.Effect<A, E, R>, fiber: AnyFiber): Effect.Effect<A, E | SqlError, R> =>
    Effect.uninterruptibleMask((restore) => {
      const context = fiber.currentContext
      const span = fiber.getFiberRef(FiberRef.currentTracerEnabled)
        ? Span.start(fiber, "sql.transaction", { kind: "client" })
        : undefined
      if (span !== undefined) { for (const [key, value] of attributes) span.attribute(key, value) }
      const transaction = Effect.flatMap(begin(pool, restore), (held) => {
        const connection = connectionFor(held.client)
        ends.begin(connection)
        let inner = Context.add(context, SqlClient.TransactionConnection, [connection, 0] as const)
        if (span !== undefined) inner = Context.add(inner, Tracer.ParentSpan, span)
        const writes: Array<HeldWrite> = []
        const holding = holdsWrites(held.client) ? held as Holding : undefined
        // Until the work is done: a fiber forked in it that outlives it must
        // not write into whatever transaction the connection serves next.
        let open = true
        if (holding !== undefined) {
          inner = Context.add(inner, CommitWrites, {
            connection,
            hold: (sql, params, onFailure, makeSpan) => {
              if (!open || !holding.client.deferUntilCommit(sql, params)) return false
              writes.push({ onFailure, span: makeSpan() })
              return true
            }
          })
        }
        return Effect.flatMap(Effect.exit(Effect.locally(restore(self), FiberRef.currentContext, inner)), (exit) => {
          open = false
          retire(connection)
          const committing = Exit.isSuccess(exit)
          if (span !== undefined) {
            const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
            span.event(`db.transaction.${committing ? "commit" : "rollback"}`, clock.unsafeCurrentTimeNanos())
          }
          // A held write's failure is one of `self`'s errors: its store (run
          // by `self`) said what it fails with.
          const heldEnd = holding === undefined || writes.length === 0
            ? undefined
            : committing
            ? commitWith(holding, writes, fiber)
            : rollBackHolding(holding, writes, fiber, exit)
          const ended = heldEnd === undefined ? Effect.orDie(end(held, committing)) : heldEnd as Effect.Effect<void, E>
          return Effect.onExit(
            Effect.zipRight(ended, exit),
            (final) => ends.run(connection, Exit.isSuccess(final))
          )
        })
      })
      // Ended however the transaction ends, a connection or BEGIN that failed included.
      return span === undefined
        ? transaction
        : Effect.onExit(transaction, (final) => Effect.sync(() => Span.end(fiber, span, final)))
    })
}
