/**
 * The events of the in-memory unit of work open in a fiber: the in-memory
 * outbox holds them there until that unit commits, so that in memory, as in
 * SQL, a dispatch that fails publishes nothing.
 *
 * @internal
 */
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import type * as DomainEvent from "../DomainEvent.js"

/** @internal */
export const currentPending: FiberRef.FiberRef<Array<DomainEvent.Envelope> | undefined> = globalValue(
  Symbol.for("effect-command-bus/internal/pending"),
  () => FiberRef.unsafeMake<Array<DomainEvent.Envelope> | undefined>(undefined)
)

/**
 * Where an append held in a level (an events array of the in-memory unit of
 * work) goes now: the level itself while open; once it ended, the open level
 * around it, as a fiber forked in a savepoint writes, on a database, in the
 * transaction around it; undefined once its transaction ended. Set by the
 * unit of work for each level it begins.
 *
 * @internal
 */
export const openLevels: WeakMap<
  Array<DomainEvent.Envelope>,
  (level: Array<DomainEvent.Envelope>) => Array<DomainEvent.Envelope> | undefined
> = globalValue(
  Symbol.for("effect-command-bus/internal/pending/openLevels"),
  () => new WeakMap()
)

/**
 * The level each savepoint level was begun in (its host), set by the unit
 * of work as it begins one.
 *
 * @internal
 */
export const enclosingLevels: WeakMap<Array<DomainEvent.Envelope>, Array<DomainEvent.Envelope>> = globalValue(
  Symbol.for("effect-command-bus/internal/pending/enclosingLevels"),
  () => new WeakMap()
)

/**
 * The events the transaction `pending` belongs to holds so far, not yet
 * appended: those of each level still open, from the outermost to `pending`'s
 * (a savepoint that was kept handed its events to the level around it, so
 * each is counted once). What a read inside that transaction sees of its own
 * writes, as a database's does; none once it ended.
 *
 * @internal
 */
export const heldEvents = (pending: Array<DomainEvent.Envelope> | undefined): Array<DomainEvent.Envelope> => {
  const levels: Array<Array<DomainEvent.Envelope>> = []
  let current = pending
  while (current !== undefined) {
    const resolve = openLevels.get(current)
    const open: Array<DomainEvent.Envelope> | undefined = resolve === undefined ? current : resolve(current)
    if (open === undefined) break
    if (!levels.includes(open)) levels.push(open)
    current = enclosingLevels.get(open)
  }
  return levels.reverse().flat()
}

/** @internal */
export const endedFirst = "the transaction this one is part of ended first (a fiber forked in it outlived it)"
