/**
 * In-memory layers for every store the bus uses, for tests and examples.
 *
 * @since 0.1.0
 */
import * as Layer from "effect/Layer"
import * as EventPublisher from "../EventPublisher.js"
import * as Idempotency from "../Idempotency.js"
import * as Outbox from "../Outbox.js"
import * as UnitOfWork from "../UnitOfWork.js"

/**
 * The event publisher, the outbox (publishing at once), the idempotency
 * store and a unit of work without transactions. Build it once per test:
 * each build is a fresh, empty world.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<
  EventPublisher.EventPublisher | Outbox.Outbox | Idempotency.IdempotencyStore | UnitOfWork.UnitOfWork
> = Layer.mergeAll(
  Outbox.layerMemory,
  Idempotency.layerMemory,
  UnitOfWork.layerNone
).pipe(Layer.provideMerge(EventPublisher.layerMemory))
