import { Layer } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandBus } from "../src/index.js"
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
})
