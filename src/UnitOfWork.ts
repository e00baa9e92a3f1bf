/**
 * The transaction a dispatch runs in. A handler's writes, its events and its
 * idempotency result commit or roll back together, because the bus runs all
 * three inside one `transactional` call.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { StoreUnavailable } from "./CommandError.js"

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
 * No transaction: for in-memory stores, whose single writes are atomic.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNone: Layer.Layer<UnitOfWork> = Layer.succeed(UnitOfWork, { transactional: (self) => self })

/**
 * Work that must commit with the handler's own writes, given the handler's
 * success value (the idempotency record is one). Middleware adds it to the
 * dispatch's `beforeCommit`; its errors are declared by that middleware.
 *
 * @since 0.1.0
 * @category models
 */
export type BeforeCommit = (value: unknown) => Effect.Effect<void, unknown>
