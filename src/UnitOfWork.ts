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
import type { StoreUnavailable } from "./CommandError.js"
import type * as DomainEvent from "./DomainEvent.js"
import { currentPending } from "./internal/pending.js"
import { Outbox } from "./Outbox.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly transactional: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StoreUnavailable, R>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class UnitOfWork extends Context.Tag("effect-command-bus/UnitOfWork")<UnitOfWork, Service>() {}

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
  Effect.map(Outbox, (outbox): Service => ({
    // An interruption between `self`'s success and the append ends the
    // dispatch as interrupted, with nothing published: as a commit that
    // never happened.
    transactional: (self) =>
      Effect.flatMap(FiberRef.get(currentPending), (outer) => {
        const events: Array<DomainEvent.Envelope> = []
        return Effect.flatMap(Effect.locally(self, currentPending, events), (value) => {
          if (events.length === 0) return Effect.succeed(value)
          if (outer !== undefined) {
            outer.push(...events)
            return Effect.succeed(value)
          }
          return Effect.as(outbox.append(events), value)
        })
      })
  }))
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
