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
import { currentPending, endedFirst, openLevels } from "./internal/pending.js"

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
  /** Events strictly after this position; 0 reads from the start. A non-negative integer. */
  readonly after: number
  /** At most this many events. A positive integer. */
  readonly limit: number
}

/**
 * Why `options` cannot be read, or `undefined` when they can. Every outbox
 * refuses the same options (its `read` dies with this message), so a caller
 * tested on the in-memory one meets the same answer on PostgreSQL.
 *
 * @since 0.1.0
 * @category utils
 */
export const invalidReadOptions = ({ after, limit }: ReadOptions): string | undefined =>
  !Number.isSafeInteger(after) || after < 0
    ? `Outbox.read: after must be a non-negative integer, got ${String(after)}`
    : !Number.isSafeInteger(limit) || limit < 1
    ? `Outbox.read: limit must be a positive integer, got ${String(limit)}`
    : undefined

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
 * An in-memory log that publishes each append through the `EventPublisher`,
 * in log order, as the SQL relay does.
 * Inside `UnitOfWork.layerMemory`'s unit of work, an append waits for that
 * unit to commit, and is gone if it does not.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service, never, EventPublisher> = Effect.zipWith(
  EventPublisher,
  Effect.makeSemaphore(1),
  (publisher, appending) => {
    const log: Array<StoredEvent> = []
    // One append at a time, positions to publication: a fiber can yield
    // between the two, and another's events, logged after, went out first.
    const appendNow = (events: ReadonlyArray<DomainEvent.Envelope>) =>
      Effect.suspend(() => {
        for (const event of events) {
          log.push(new StoredEvent({ position: log.length + 1, event }, { disableValidation: true }))
        }
        return publisher.publish(events)
      }).pipe(appending.withPermits(1), Effect.uninterruptible)
    return {
      append: (events) =>
        Effect.flatMap(FiberRef.get(currentPending), (pending) => {
          if (pending === undefined) return appendNow(events)
          const resolve = openLevels.get(pending)
          const level = resolve === undefined ? pending : resolve(pending)
          // A fiber forked in a transaction that outlived it: on a database its
          // connection refuses the write, as here.
          if (level === undefined) return Effect.dieMessage(endedFirst)
          level.push(...events)
          return Effect.void
        }),
      read: (options) => {
        const invalid = invalidReadOptions(options)
        return invalid === undefined
          ? Effect.sync(() => log.slice(options.after, options.after + options.limit))
          : Effect.dieMessage(invalid)
      }
    }
  }
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<Outbox, never, EventPublisher> = Layer.effect(Outbox, makeMemory)
