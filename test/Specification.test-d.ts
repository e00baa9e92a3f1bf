import { Context, Effect, Layer } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandBus, DomainEvent } from "../src/index.js"
import { CommandError } from "../src/index.js"
import { CancelOrder, RestockProduct } from "../src/orders/Commands.js"
import { InsufficientInventory } from "../src/orders/Inventory.js"
import * as Order from "../src/orders/Order.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import * as OrderRepository from "../src/orders/OrderRepository.js"
import * as Persistence from "../src/orders/Persistence.js"
import { InMemory, Specification } from "../src/testing/index.js"

describe("Specification types", () => {
  it("takes a layer that provides every service of the bus", () => {
    const spec = Specification.make({ bus: OrderBus.make(), layer: Persistence.layerMemory() })
    expectTypeOf(spec.when).toBeFunction()
  })

  it("takes a bus typed CommandBus.Any, as a helper generic over its bus passes it, unchecked", () => {
    const specFor = <B extends CommandBus.Any>(bus: B) =>
      Specification.make({ bus: bus as CommandBus.Any, layer: Persistence.layerMemory() })
    expectTypeOf(specFor(OrderBus.make()).when).toBeFunction()
  })

  it("refuses, at compile time, a layer that misses services the bus needs", () => {
    // @ts-expect-error -- the layer does not provide the Inventory the handlers need
    Specification.make({ bus: OrderBus.make(), layer: Layer.merge(InMemory.layer, OrderRepository.layerMemory) })
    // @ts-expect-error -- nothing at all: not even the Outbox the bus appends to
    Specification.make({ bus: OrderBus.bare, layer: Layer.empty })
  })

  it("takes, in thenFails, only what the bus's dispatch of that command may fail with", () => {
    const spec = Specification.make({ bus: OrderBus.make(), layer: Persistence.layerMemory() })
    const orderId = "7b0ea7bb-4c52-4d54-9f2d-6a1d3ec1b0e4"
    const cancel = new CancelOrder({ orderId, reason: "changed my mind" })
    const restock = new RestockProduct({ productId: "p-1", available: 3 })
    // the command's own failure, and the middleware's
    spec.when(cancel).thenFails(new Order.OrderAlreadyCancelled({ orderId }))
    spec.when(cancel).thenFails(new CommandError.CommandTimeout({ commandType: "CancelOrder", timeoutMillis: 1 }))
    // @ts-expect-error -- a failure of another command: CancelOrder never fails with InsufficientInventory
    spec.when(cancel).thenFails(new InsufficientInventory({ productId: "p-1", requested: 2, available: 1 }))
    // @ts-expect-error -- not an error of this bus at all
    spec.when(restock).thenFails("Forbidden")
    // the bare bus adds no middleware errors: a timeout cannot happen there
    const bare = Specification.make({ bus: OrderBus.bare, layer: Persistence.layerMemory() })
    // @ts-expect-error -- CommandTimeout comes from the timeout middleware, which the bare bus does not have
    bare.when(cancel).thenFails(new CommandError.CommandTimeout({ commandType: "CancelOrder", timeoutMillis: 1 }))
  })

  describe("evolve and given", () => {
    const orderId = "7b0ea7bb-4c52-4d54-9f2d-6a1d3ec1b0e4"
    const created = new Order.OrderCreated({
      orderId,
      customerId: "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10",
      userId: "alice",
      items: [{ productId: "p-1", quantity: 1 }],
      shippingAddress: { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
    })
    const cancelled = new Order.OrderCancelled({ orderId, reason: "changed my mind", releasedItems: [] })
    const cancel = new CancelOrder({ orderId, reason: "changed my mind" })

    it("gives evolve the events its parameter names, and takes in given only those", () => {
      const spec = Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        evolve: (event: Order.OrderCreated) => Effect.log(event.items)
      })
      expectTypeOf(spec).toEqualTypeOf<
        Specification.Specification<ReturnType<typeof OrderBus.make>, Persistence.Stores, Order.OrderCreated>
      >()
      spec.given(created)
      // commands of the bus and setup effects, as before
      spec.given(created, cancel, Effect.void)
      // @ts-expect-error -- an event this evolve does not take
      spec.given(cancelled)
      // @ts-expect-error -- nor a command of no bus, nor anything else
      spec.given({ _tag: "OrderShipped" })
    })

    it("takes a union of events, narrowed by their tag in evolve", () => {
      const spec = Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        evolve: (event: Order.OrderCreated | Order.OrderCancelled) => {
          expectTypeOf(event).toEqualTypeOf<Order.OrderCreated | Order.OrderCancelled>()
          switch (event._tag) {
            case "OrderCreated":
              return Effect.log(event.customerId)
            case "OrderCancelled":
              return Effect.log(event.releasedItems)
          }
        }
      })
      spec.given(created, cancelled).when(cancel)
    })

    it("takes any event, as before, with an evolve of DomainEvent.Any or one whose parameter is inferred", () => {
      const anyEvent = Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        evolve: (event: DomainEvent.Any) => Effect.log(event._tag)
      })
      anyEvent.given(created, cancelled, { _tag: "OrderShipped" })
      const inferred = Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        evolve: (event) => {
          expectTypeOf(event).toEqualTypeOf<DomainEvent.Any>()
          return Effect.void
        }
      })
      inferred.given(created, cancelled)
      // a specification without the event type still names the same type
      expectTypeOf(inferred).toEqualTypeOf<
        Specification.Specification<ReturnType<typeof OrderBus.make>, Persistence.Stores>
      >()
    })

    it("takes no event without evolve, still commands and effects", () => {
      const spec = Specification.make({ bus: OrderBus.make(), layer: Persistence.layerMemory() })
      spec.given(cancel, Effect.void)
      // @ts-expect-error -- no evolve to apply it
      spec.given(created)
    })

    it("passes, whatever events it takes, for a Specification of the bus as it was typed before", () => {
      type Before = Specification.Specification<ReturnType<typeof OrderBus.make>, Persistence.Stores>
      const withoutEvolve: Before = Specification.make({ bus: OrderBus.make(), layer: Persistence.layerMemory() })
      const typed: Before = Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        evolve: (event: Order.OrderCreated) => Effect.log(event.orderId)
      })
      expectTypeOf(withoutEvolve.when).toEqualTypeOf(typed.when)
    })

    it("refuses an evolve that needs a service the layer does not provide, or may fail", () => {
      Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        // @ts-expect-error -- a service the layer does not provide
        evolve: (_: Order.OrderCreated) => Effect.flatMap(Missing, () => Effect.void)
      })
      Specification.make({
        bus: OrderBus.make(),
        layer: Persistence.layerMemory(),
        // @ts-expect-error -- evolve applies an event; it does not fail
        evolve: (_: Order.OrderCreated) => Effect.fail("no")
      })
    })

    it("still refuses a layer that misses services of the bus, with evolve or without", () => {
      // @ts-expect-error -- the layer does not provide the Inventory the handlers need
      Specification.make({
        bus: OrderBus.make(),
        layer: Layer.merge(InMemory.layer, OrderRepository.layerMemory),
        evolve: (event: Order.OrderCreated) => Effect.log(event.orderId)
      })
    })
  })
})

class Missing extends Context.Tag("Missing")<Missing, object>() {}
