/**
 * The transaction a dispatch runs in. A handler's writes, its events and its
 * idempotency result commit or roll back together, because the bus runs all
 * three inside one `transactional` call.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { StoreUnavailable } from "./CommandError.js"
import type * as DomainEvent from "./DomainEvent.js"
import { currentPending, enclosingLevels, endedFirst, openLevels } from "./internal/pending.js"
import { Outbox } from "./Outbox.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Runs `self` in a transaction. Once `self` has succeeded, the commit is
   * not interrupted (an interruption is seen after its outcome), as
   * `@effect/sql`'s `withTransaction` does. A commit that fails while the
   * caller is being interrupted ends interrupted all the same (the runtime
   * drops the failure): `afterEnd` is how the caller learns it did not
   * commit.
   */
  readonly transactional: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StoreUnavailable, R>
  /**
   * Runs `end` when the transaction the caller is inside ends, told whether
   * it committed; false, with nothing registered, outside one. Inside a
   * savepoint this unit of work began (a dispatch inside another's), `end`
   * is told at once that it did not commit when that savepoint rolls back,
   * else when the outermost transaction ends. For what a
   * dispatch inside another's transaction (a savepoint of it) must not do
   * before that transaction commits: an idempotency record kept outside the
   * database. Optional: without it, such work is done at once.
   */
  readonly afterEnd?: ((end: (committed: boolean) => Effect.Effect<void>) => Effect.Effect<boolean>) | undefined
}

/**
 * What each transaction has registered with `afterEnd`, by the object that
 * tells it from any other (its connection, its pending events), for the
 * implementations of `Service`: `begin` when a transaction of theirs starts
 * (one that someone else began takes no registration), `run` when it ended.
 * A registered end that fails is logged; the others still run, and the
 * transaction's outcome stands.
 *
 * @since 0.1.0
 * @category utils
 */
export const makeEnds = () => {
  const registered = new WeakMap<object, Array<(committed: boolean) => Effect.Effect<void>>>()
  const ended = new WeakSet<object>()
  const runAll = (ends: ReadonlyArray<(committed: boolean) => Effect.Effect<void>>, committed: boolean) =>
    Effect.forEach(
      ends,
      (end) => Effect.catchAllCause(end(committed), (cause) => Effect.logWarning("unit-of-work.after-end", cause)),
      { discard: true }
    )
  return {
    /**
     * Whether the transaction `of` began here and has ended: a fiber forked
     * inside it that outlives it still has it in its context, and must not
     * join it.
     */
    hasEnded: (of: object): boolean => ended.has(of),
    begin: (of: object): void => {
      registered.set(of, [])
    },
    /** Whether `of` (a transaction, or a savepoint of one) takes registrations now. */
    isOpen: (of: object): boolean => registered.has(of),
    /** Registers `end` for the transaction `of`; false when it is not one begun here. */
    add: (of: object, end: (committed: boolean) => Effect.Effect<void>): boolean => {
      const ends = registered.get(of)
      if (ends === undefined) return false
      ends.push(end)
      return true
    },
    /**
     * A savepoint `of` begun inside `outer` (open here): what is registered
     * in it waits on it, since it may roll back while `outer` commits.
     */
    within: (of: object, outer: object): void => {
      if (registered.has(outer)) registered.set(of, [])
    },
    /**
     * Ends the savepoint `of`, begun `within` `outer`: kept, what it
     * registered waits on `outer`; rolled back, it is told now that it did
     * not commit (nor will it, whatever `outer` does).
     */
    leave: (of: object, outer: object, kept: boolean): Effect.Effect<void> => {
      const ends = registered.get(of)
      registered.delete(of)
      if (ends === undefined || ends.length === 0) return Effect.void
      const outerEnds = kept ? registered.get(outer) : undefined
      if (outerEnds === undefined) return runAll(ends, false)
      outerEnds.push(...ends)
      return Effect.void
    },
    run: (of: object, committed: boolean): Effect.Effect<void> => {
      const ends = registered.get(of)
      registered.delete(of)
      ended.add(of)
      if (ends === undefined || ends.length === 0) return Effect.void
      return runAll(ends, committed)
    }
  }
}

/**
 * @since 0.1.0
 * @category tags
 */
export class UnitOfWork extends Context.Tag("effect-command-bus/UnitOfWork")<UnitOfWork, Service>() {}

/**
 * Registers `end` with the caller's unit of work (`Service.afterEnd`), for
 * a store that undoes or keeps what a dispatch did by how its transaction
 * ended: false, with nothing registered, when there is no unit of work, it
 * cannot tell, or the caller is outside a transaction.
 *
 * @since 0.1.0
 * @category combinators
 */
export const afterEnd = (end: (committed: boolean) => Effect.Effect<void>): Effect.Effect<boolean> =>
  Effect.flatMap(Effect.serviceOption(UnitOfWork), (unitOfWork) => {
    const register = Option.getOrUndefined(unitOfWork)?.afterEnd
    return register === undefined ? Effect.succeed(false) : register(end)
  })

/**
 * Runs `effect` when the caller's transaction commits, `onRollback` (by
 * default nothing) when it rolls back, and `effect` at once where `afterEnd`
 * registers nothing (no transaction, or a unit of work that cannot tell).
 *
 * @since 0.1.0
 * @category combinators
 */
export const onCommit = (
  effect: Effect.Effect<void>,
  onRollback: Effect.Effect<void> = Effect.void
): Effect.Effect<void> =>
  Effect.flatMap(
    afterEnd((committed) => committed ? effect : onRollback),
    (registered) => registered ? Effect.void : effect
  )

/**
 * No transaction: each store's writes stand as they are made.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNone: Layer.Layer<UnitOfWork> = Layer.succeed(UnitOfWork, { transactional: (self) => self })

/**
 * The unit of work of the in-memory outbox (`Outbox.layerMemory`): the
 * events a dispatch appends are held until it succeeds, then appended and
 * published; a dispatch that fails (a before-commit hook, a deadline, a
 * handler that dispatched another command and then failed) publishes none,
 * as on PostgreSQL. One inside another adds its events to the outer one's.
 * Other in-memory stores' writes are not rolled back.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<UnitOfWork, never, Outbox> = Layer.effect(
  UnitOfWork,
  Effect.map(Outbox, (outbox): Service => {
    // Each transaction's events array tells it from any other; one inside
    // another ends when the outermost does.
    const ends = makeEnds()
    const outermost = new WeakMap<Array<DomainEvent.Envelope>, Array<DomainEvent.Envelope>>()
    // Each savepoint's parent: a fiber forked in a savepoint that ended (kept,
    // or rolled back) while the outermost is open is in the level around it,
    // as its statements would be on a database's connection.
    // (Shared, so that a read in the transaction can find the levels around its own.)
    const parents = enclosingLevels
    const openLevel = (level: Array<DomainEvent.Envelope>): Array<DomainEvent.Envelope> | undefined => {
      let current: Array<DomainEvent.Envelope> | undefined = level
      while (current !== undefined && !ends.isOpen(current)) current = parents.get(current)
      return current
    }
    // Once `self` succeeded, the append (its commit) is not interrupted,
    // as a database's commit is not; before, an interruption ends the
    // dispatch with nothing published.
    const transactional: Service["transactional"] = (self) =>
      Effect.flatMap(FiberRef.get(currentPending), (outer) => {
        const events: Array<DomainEvent.Envelope> = []
        if (outer !== undefined) {
          const root = outermost.get(outer) ?? outer
          // A fiber forked in a transaction that outlived it: its events
          // are its own transaction's, appended outside the ended one.
          if (ends.hasEnded(root)) return Effect.locally(transactional(self), currentPending, undefined)
          outermost.set(events, root)
          const host = openLevel(outer) ?? outer
          parents.set(events, host)
          openLevels.set(events, openLevel)
          ends.within(events, host)
          // One begun while the outer was open, by a fiber forked in it, may
          // end after it: its events have no transaction left to join, as
          // its statements would have no connection on a database.
          // Its events joined the outer's, or not, as its exit says.
          return Effect.uninterruptibleMask((restore) =>
            Effect.onExit(
              Effect.flatMap(restore(Effect.locally(self, currentPending, events)), (value) => {
                const into = ends.hasEnded(root) ? undefined : openLevel(host)
                if (into === undefined) return Effect.dieMessage(endedFirst)
                into.push(...events)
                return Effect.succeed(value)
              }),
              (exit) => ends.leave(events, openLevel(host) ?? host, exit._tag === "Success")
            )
          )
        }
        ends.begin(events)
        openLevels.set(events, openLevel)
        return Effect.uninterruptibleMask((restore) =>
          Effect.onExit(
            Effect.flatMap(
              Effect.locally(restore(self), currentPending, events),
              (value) => events.length === 0 ? Effect.succeed(value) : Effect.as(outbox.append(events), value)
            ),
            (exit) => ends.run(events, exit._tag === "Success")
          )
        )
      })
    return {
      transactional,
      afterEnd: (end) =>
        Effect.map(
          FiberRef.get(currentPending),
          // At the level it is called in: a savepoint that rolls back tells
          // its registrations so, whatever the outermost transaction does.
          (pending) => {
            const level = pending === undefined ? undefined : openLevel(pending)
            return level !== undefined && ends.add(level, end)
          }
        )
    }
  })
)

/**
 * Work that must commit with the handler's own writes, given the handler's
 * success value (the idempotency record is one). Middleware adds it to the
 * dispatch's `beforeCommit`; its errors are declared by that middleware.
 *
 * @since 0.1.0
 * @category models
 */
export type BeforeCommit = (value: unknown) => Effect.Effect<void, unknown>
