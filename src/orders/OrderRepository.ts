/**
 * Where orders live. Saving is optimistic: an update names the version it
 * was read at, and fails with `ConcurrencyConflict` if that is stale.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { CommandError } from "../index.js"
import { aggregateType, type Order, OrderAlreadyExists } from "./Order.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly findById: (id: string) => Effect.Effect<Option.Option<Order>>
  /** Stores a new order; an existing id fails with `OrderAlreadyExists`. */
  readonly insert: (order: Order) => Effect.Effect<void, OrderAlreadyExists>
  /** Replaces the order read at `expectedVersion`. */
  readonly update: (order: Order, expectedVersion: number) => Effect.Effect<void, CommandError.ConcurrencyConflict>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class OrderRepository extends Context.Tag("orders/OrderRepository")<OrderRepository, Service>() {}

/**
 * In memory, with the same version check the SQL repository does. Each
 * operation is one synchronous step, so concurrent fibers cannot interleave
 * inside it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service> = Effect.sync(() => {
  const orders = new Map<string, Order>()
  return {
    findById: (id) => Effect.sync(() => Option.fromNullable(orders.get(id))),
    insert: (order) =>
      Effect.suspend(() => {
        if (orders.has(order.id)) return Effect.fail(new OrderAlreadyExists({ orderId: order.id }))
        orders.set(order.id, order)
        return Effect.void
      }),
    update: (order, expectedVersion) =>
      Effect.suspend(() => {
        if (orders.get(order.id)?.version !== expectedVersion) {
          return Effect.fail(
            new CommandError.ConcurrencyConflict({ aggregateType, aggregateId: order.id, expectedVersion })
          )
        }
        orders.set(order.id, order)
        return Effect.void
      })
  }
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<OrderRepository> = Layer.effect(OrderRepository, makeMemory)
