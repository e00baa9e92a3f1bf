/**
 * The order service's handlers. Each asks for its repository and inventory
 * as services, and fails only with its command's declared errors. Each runs
 * in a span of its own (`Tracing.withSpan`: the span `Effect.fn` would make,
 * at a third of its cost).
 *
 * @since 0.1.0
 */
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { CommandError, CurrentUser, Handler, Tracing } from "../index.js"
import { CancelOrder, CreateOrder, RestockProduct } from "./Commands.js"
import { Inventory } from "./Inventory.js"
import * as Order from "./Order.js"
import { OrderRepository } from "./OrderRepository.js"

/**
 * The role that may act on any order and restock products.
 *
 * @since 0.1.0
 * @category constants
 */
export const adminRole = "admin"

/**
 * @since 0.1.0
 * @category handlers
 */
export const createOrder = Handler.make(
  CreateOrder,
  Effect.fnUntraced(function*(command) {
    if (command.userId === undefined) {
      return yield* new CommandError.Forbidden({ reason: "Orders belong to a user; dispatch with a userId" })
    }
    const now = yield* DateTime.now
    const { events, order } = Order.create({
      id: command.commandId,
      customerId: command.customerId,
      userId: command.userId,
      items: command.items,
      shippingAddress: command.shippingAddress,
      now
    })
    const inventory = yield* Inventory
    yield* inventory.reserve(order.items)
    // A redelivered command finds its order already there: give the stock
    // back, since not every unit of work rolls back (in memory, none does).
    yield* Effect.flatMap(OrderRepository, (orders) => orders.insert(order)).pipe(
      Effect.tapError(() => inventory.release(order.items))
    )
    return Handler.result({ orderId: order.id, status: "created" as const, version: order.version }, events)
  }, Tracing.withSpan("Orders.createOrder"))
)

/**
 * @since 0.1.0
 * @category handlers
 */
export const cancelOrder = Handler.make(
  CancelOrder,
  Effect.fnUntraced(function*(command) {
    const orders = yield* OrderRepository
    const order = yield* orders.findById(command.orderId).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.fail(new Order.OrderNotFound({ orderId: command.orderId })),
        onSome: Effect.succeed
      }))
    )
    const principal = yield* CurrentUser.CurrentUser
    if (order.userId !== command.userId && !CurrentUser.hasRole(principal, adminRole)) {
      return yield* new CommandError.Forbidden({ reason: "Only the order's owner or an admin may cancel it" })
    }
    if (command.expectedVersion !== undefined && command.expectedVersion !== order.version) {
      return yield* new Order.OrderVersionMismatch({
        orderId: order.id,
        expectedVersion: command.expectedVersion,
        actualVersion: order.version
      })
    }
    const now = yield* DateTime.now
    const change = yield* Order.cancel(order, command.reason, now)
    yield* orders.update(change.order, order.version)
    yield* Effect.flatMap(Inventory, (inventory) => inventory.release(order.items))
    return Handler.result(
      { orderId: order.id, status: "cancelled" as const, version: change.order.version },
      change.events
    )
  }, Tracing.withSpan("Orders.cancelOrder"))
)

/**
 * @since 0.1.0
 * @category handlers
 */
export const restockProduct = Handler.make(
  RestockProduct,
  Effect.fnUntraced(function*(command) {
    yield* Effect.flatMap(Inventory, (inventory) => inventory.setAvailable(command.productId, command.available))
    return Handler.result({ productId: command.productId, available: command.available })
  }, Tracing.withSpan("Orders.restockProduct"))
)
