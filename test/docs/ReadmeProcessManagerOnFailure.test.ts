// The README's failure handler example, verbatim between the markers, run as a test.
import { expect, it } from "@effect/vitest"
// README:begin
import { Effect, Schema } from "effect"
import { Command, CommandBus, DomainEvent, Handler, Idempotency, ProcessManager } from "effect-command-bus"
import { ProcessManagerSpecification } from "effect-command-bus/testing"

class OrderSubmitted extends DomainEvent.Class<OrderSubmitted>()("OrderSubmitted", {
  orderId: Schema.String,
  quantity: Schema.Int
}) {}

class OutOfStock extends Schema.TaggedError<OutOfStock>()("OutOfStock", { orderId: Schema.String }) {}

class ReserveStock extends Command.Class<ReserveStock>()("ReserveStock", {
  payload: { orderId: Schema.String, quantity: Schema.Int },
  success: Schema.Void,
  failure: OutOfStock
}) {}

class ChargeCard extends Command.Class<ChargeCard>()("ChargeCard", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class RejectOrder extends Command.Class<RejectOrder>()("RejectOrder", {
  payload: { orderId: Schema.String, reason: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const done = () => Effect.succeed(Handler.result(undefined))
const bus = CommandBus.make([ReserveStock, ChargeCard, RejectOrder], {
  ReserveStock: (command) => command.quantity > 10 ? Effect.fail(new OutOfStock({ orderId: command.orderId })) : done(),
  ChargeCard: done,
  RejectOrder: done
}).pipe(CommandBus.withMiddleware(Idempotency.middleware()))

const fulfilment = ProcessManager.make({
  name: "fulfilment",
  bus,
  state: Schema.Struct({ status: Schema.Literal("new", "reserved", "rejected") }),
  initialState: { status: "new" },
  events: [OrderSubmitted],
  key: (event) => event.orderId
}).on({
  OrderSubmitted: (_, event) => ({
    state: { status: "reserved" },
    send: [
      new ReserveStock({ orderId: event.orderId, quantity: event.quantity }),
      new ChargeCard({ orderId: event.orderId })
    ]
  })
}, {
  onFailure: {
    // Out of stock: no charge; the order is rejected, and the process ends.
    ReserveStock: (_, { command, failure }) => ({
      state: { status: "rejected" },
      send: [new RejectOrder({ orderId: command.orderId, reason: failure._tag })],
      done: true
    })
  }
})

// In a test: the reservation answered with its failure, its handler not run.
const spec = ProcessManagerSpecification.make({
  manager: fulfilment,
  respond: { ReserveStock: (command) => Effect.fail(new OutOfStock({ orderId: command.orderId })) }
})
const rejectedWhenOutOfStock = spec.when(new OrderSubmitted({ orderId: "o-1", quantity: 3 })).then({
  commands: [
    new ReserveStock({ orderId: "o-1", quantity: 3 }),
    new RejectOrder({ orderId: "o-1", reason: "OutOfStock" })
  ],
  state: { status: "rejected" },
  done: true
})
// README:end

import { DateTime, Exit, Layer, Option } from "effect"
import { CommandScheduler, Reaction } from "effect-command-bus"
import { InMemory } from "effect-command-bus/testing"
import { randomUUID } from "node:crypto"

it.effect("the README's failure handler rejects an order out of stock, in a specification", () =>
  rejectedWhenOutOfStock)

it.effect("the README's failure handler rejects an order its bus finds out of stock, and ends the process", () =>
  Effect.gen(function*() {
    const [envelope] = yield* DomainEvent.stamp(
      { commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() },
      [DomainEvent.draft(
        { aggregateType: "Order", aggregateId: "o-2", aggregateVersion: 1 },
        new OrderSubmitted({ orderId: "o-2", quantity: 20 })
      )]
    )
    const exit = yield* Effect.exit(fulfilment.reactions[0]!.handle(envelope!))
    expect(Exit.isSuccess(exit)).toBe(true)
    const process = yield* fulfilment.process("o-2")
    expect(Option.map(process, (p) => [p.state, p.done])).toEqual(Option.some([{ status: "rejected" }, true]))
  }).pipe(
    Effect.provide(Layer.mergeAll(
      InMemory.layer,
      Reaction.layerCheckpointsMemory,
      CommandScheduler.layerMemory,
      ProcessManager.layerMemory
    ))
  ))
