/**
 * In-memory layers for every store the bus uses, for tests and examples.
 *
 * @since 0.1.0
 */
import * as Layer from "effect/Layer"
import * as EventPublisher from "../EventPublisher.js"
import * as EventStore from "../EventStore.js"
import * as Idempotency from "../Idempotency.js"
import * as Outbox from "../Outbox.js"
import * as UnitOfWork from "../UnitOfWork.js"

/**
 * The event publisher, the outbox, the idempotency store, the outbox's
 * unit of work (a dispatch's events are published when it succeeds, none
 * when it fails) and the event-sourced streams over that outbox. Build it once per test: each build is a fresh, empty
 * world.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<
  | EventPublisher.EventPublisher
  | Outbox.Outbox
  | Idempotency.IdempotencyStore
  | UnitOfWork.UnitOfWork
  | EventStore.EventStore
> = Layer.merge(UnitOfWork.layerMemory, EventStore.layerMemory).pipe(
  Layer.provideMerge(Layer.merge(Outbox.layerMemory, Idempotency.layerMemory)),
  Layer.provideMerge(EventPublisher.layerMemory)
)
