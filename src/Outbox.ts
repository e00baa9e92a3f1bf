/**
 * The event log a dispatch appends to inside its unit of work. In memory it
 * publishes at once (there is no transaction to wait for); the SQL outbox
 * writes rows in the command's transaction and a relay publishes them after
 * commit.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type { StoreUnavailable } from "./CommandError.js"
import * as DomainEvent from "./DomainEvent.js"
import { EventPublisher } from "./EventPublisher.js"
import { currentPending } from "./internal/pending.js"

/**
 * An event with its global position in the log, in commit order.
 *
 * @since 0.1.0
 * @category models
 */
export class StoredEvent extends Schema.Class<StoredEvent>("StoredEvent")({
  position: Schema.Number,
  event: DomainEvent.Envelope
}) {}

/**
 * @since 0.1.0
 * @category models
 */
export interface ReadOptions {
  /** Events strictly after this position; 0 reads from the start. */
  readonly after: number
  readonly limit: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly append: (events: ReadonlyArray<DomainEvent.Envelope>) => Effect.Effect<void, StoreUnavailable>
  readonly read: (options: ReadOptions) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreUnavailable>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Outbox extends Context.Tag("effect-command-bus/Outbox")<Outbox, Service>() {}

/**
 * An in-memory log that publishes each append through the `EventPublisher`.
 * Inside `UnitOfWork.layerMemory`'s unit of work, an append waits for that
 * unit to commit, and is gone if it does not.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service, never, EventPublisher> = Effect.map(
  EventPublisher,
  (publisher) => {
    const log: Array<StoredEvent> = []
    const appendNow = (events: ReadonlyArray<DomainEvent.Envelope>) =>
      Effect.suspend(() => {
        for (const event of events) {
          log.push(new StoredEvent({ position: log.length + 1, event }, { disableValidation: true }))
        }
        return publisher.publish(events)
      }).pipe(Effect.uninterruptible)
    return {
      append: (events) =>
        Effect.flatMap(FiberRef.get(currentPending), (pending) => {
          if (pending === undefined) return appendNow(events)
          pending.push(...events)
          return Effect.void
        }),
      read: ({ after, limit }) => Effect.sync(() => log.slice(Math.max(0, after), Math.max(0, after) + limit))
    }
  }
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<Outbox, never, EventPublisher> = Layer.effect(Outbox, makeMemory)
