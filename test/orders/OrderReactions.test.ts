import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { Reaction } from "../../src/index.js"
import { CancelOrder, CreateOrder } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import * as Order from "../../src/orders/Order.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import * as Persistence from "../../src/orders/Persistence.js"
import { ReactionSpecification } from "../../src/testing/index.js"

// The order service has no reaction of its own: this one, a policy a shop
// might add, cancels an order that asks for more than five of one product.

const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const orderId = "3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const reason = "more than 5 of one product"

const bus = OrderBus.make()

const limitLargeOrders = Reaction.dispatch(
  Order.OrderCreated,
  bus,
  (event, followUp) =>
    event.items.some((line) => line.quantity > 5)
      ? new CancelOrder({ orderId: event.orderId, reason, userId: event.userId, ...followUp })
      : undefined,
  { name: "limit large orders" }
)

const orderCreated = (items: ReadonlyArray<Order.OrderLine>, id = orderId) =>
  new Order.OrderCreated({ orderId: id, customerId, userId: "alice", items, shippingAddress })

describe("limiting large orders", () => {
  describe("the commands it sends", () => {
    const spec = ReactionSpecification.make({ reactions: [limitLargeOrders] })

    it.effect("cancels, as the order's owner, an order with more than five of one product", () =>
      spec.when(orderCreated([{ productId: "p-1", quantity: 2 }, { productId: "p-2", quantity: 6 }]))
        .then(new CancelOrder({ orderId, reason, userId: "alice" })))

    it.effect("lets an order of five or fewer of each product be", () =>
      spec.when(orderCreated([{ productId: "p-1", quantity: 5 }, { productId: "p-2", quantity: 5 }])).thenNothing())

    it.effect("fails, saying what differed, when the expected cancellation is not the one sent", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(
          spec.when(orderCreated([{ productId: "p-1", quantity: 6 }]))
            .then(new CancelOrder({ orderId, reason: "too large", userId: "alice" }))
        )
        assert.include(error.message, `"reason":"too large"`)
        assert.include(error.message, `but got [{"type":"CancelOrder","payload":{"orderId":"${orderId}",`)
        assert.include(error.message, `"reason":"${reason}"`)
      }))
  })

  describe("on the order bus", () => {
    const spec = ReactionSpecification.make({
      reactions: [limitLargeOrders],
      bus,
      layer: Persistence.layerMemory([["p-1", 10]])
    })

    it.effect("cancels the order and releases its stock", () =>
      Effect.gen(function*() {
        const create = new CreateOrder({
          customerId,
          items: [{ productId: "p-1", quantity: 6 }],
          shippingAddress,
          userId: "alice"
        })
        yield* spec.given(bus.dispatch(create))
          .when(orderCreated([{ productId: "p-1", quantity: 6 }], create.commandId))
          .then(
            new CancelOrder({ orderId: create.commandId, reason, userId: "alice" }),
            Effect.gen(function*() {
              const order = yield* Effect.flatMap(OrderRepository.OrderRepository, (orders) =>
                orders.findById(create.commandId))
              assert.strictEqual(Option.getOrThrow(order).status, "cancelled")
              const available = yield* Effect.flatMap(Inventory.Inventory, (inventory) =>
                inventory.available("p-1"))
              assert.strictEqual(available, 10)
            })
          )
      }))

    it.effect("fails as its command does, for an order the store does not have", () =>
      spec.when(orderCreated([{ productId: "p-1", quantity: 6 }])).thenFails(new Order.OrderNotFound({ orderId })))
  })
})
