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
import { globalValue } from "effect/GlobalValue"
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
 * success value (the idempotency record is one). Its errors are declared by
 * the middleware that registers it.
 *
 * @since 0.1.0
 * @category models
 */
export type BeforeCommit = (value: unknown) => Effect.Effect<void, unknown>

/**
 * The hooks the bus runs after the handler succeeds and its events are
 * appended, still inside the unit of work.
 *
 * @since 0.1.0
 * @category fiber refs
 */
export const currentBeforeCommit: FiberRef.FiberRef<ReadonlyArray<BeforeCommit>> = globalValue(
  Symbol.for("effect-command-bus/UnitOfWork/currentBeforeCommit"),
  () => FiberRef.unsafeMake<ReadonlyArray<BeforeCommit>>([])
)

/**
 * Registers a hook for the dispatch `self` runs. Middleware registers hooks,
 * and a bus runs them only when it has middleware: one with none runs the
 * handler and appends its events, nothing more.
 *
 * @since 0.1.0
 * @category combinators
 */
export const beforeCommit = <A, E, R>(self: Effect.Effect<A, E, R>, hook: BeforeCommit): Effect.Effect<A, E, R> =>
  Effect.locallyWith(self, currentBeforeCommit, (hooks) => [...hooks, hook])
