import { Layer } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandBus } from "../src/index.js"
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
})
