/**
 * Where committed events go: subscribers of the application (projections,
 * integrations). Delivery is at-least-once; consumers dedupe by `eventId`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import type * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type * as DomainEvent from "./DomainEvent.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly publish: (events: ReadonlyArray<DomainEvent.Envelope>) => Effect.Effect<void>
  readonly subscribe: Effect.Effect<Queue.Dequeue<DomainEvent.Envelope>, never, Scope.Scope>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class EventPublisher extends Context.Tag("effect-command-bus/EventPublisher")<EventPublisher, Service>() {}

/**
 * An in-memory publisher over an unbounded `PubSub`: every subscriber sees
 * every event published after it subscribed, in publish order.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service> = Effect.map(
  PubSub.unbounded<DomainEvent.Envelope>(),
  (pubsub) => ({
    publish: (events) => events.length === 0 ? Effect.void : Effect.asVoid(PubSub.publishAll(pubsub, events)),
    subscribe: PubSub.subscribe(pubsub)
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<EventPublisher> = Layer.effect(EventPublisher, makeMemory)
