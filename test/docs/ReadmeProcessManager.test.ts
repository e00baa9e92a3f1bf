// The README's process manager example, verbatim between the markers, run as a test.
import { expect, it } from "@effect/vitest"
// README:begin
import { Effect, Schema } from "effect"
import { Command, CommandBus, DomainEvent, Handler, Idempotency, ProcessManager, Reaction } from "effect-command-bus"
import { ProcessManagerSpecification } from "effect-command-bus/testing"

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", { orderId: Schema.String }) {}
class OrderPaid extends DomainEvent.Class<OrderPaid>()("OrderPaid", { orderId: Schema.String }) {}

class ShipOrder extends Command.Class<ShipOrder>()("ShipOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class CancelOrder extends Command.Class<CancelOrder>()("CancelOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

// With the idempotency middleware: an event run again after a crash sends its
// commands again, under the same keys, and the middleware replays them.
const bus = CommandBus.make([ShipOrder, CancelOrder], {
  ShipOrder: () => Effect.succeed(Handler.result(undefined)),
  // Runs when due, whatever the process became since: it checks the order itself
  // (an order paid for is not cancelled).
  CancelOrder: () => Effect.succeed(Handler.result(undefined))
}).pipe(CommandBus.withMiddleware(Idempotency.middleware()))

const checkout = ProcessManager.make({
  name: "checkout",
  bus, // its commands, and no other, may be sent
  state: Schema.Struct({ status: Schema.Literal("awaiting-payment", "shipped") }),
  initialState: { status: "awaiting-payment" },
  events: [OrderPlaced, OrderPaid],
  key: (event) => event.orderId,
  startedBy: ["OrderPlaced"]
}).on({
  OrderPlaced: (state, event) => ({
    state,
    schedule: [{ name: "unpaid", after: "30 minutes", command: new CancelOrder({ orderId: event.orderId }) }]
  }),
  OrderPaid: (_, event) => ({
    state: { status: "shipped" },
    send: [new ShipOrder({ orderId: event.orderId })],
    done: true // cancels "unpaid"; later events of the order are ignored
  })
})

// Run as any reactions are: checkpoint, lease, dead letters, redrive.
const following = Reaction.follow("checkout", checkout.reactions)

// In a test: given / when / then, in memory.
const spec = ProcessManagerSpecification.make({ manager: checkout })
const shipsWhenPaid = spec.given(new OrderPlaced({ orderId: "o-1" }))
  .when(new OrderPaid({ orderId: "o-1" }))
  .then({ commands: [new ShipOrder({ orderId: "o-1" })], deadlines: [], state: { status: "shipped" }, done: true })
// README:end

import { DateTime, Layer, Option } from "effect"
import { CommandScheduler, Outbox } from "effect-command-bus"
import { InMemory } from "effect-command-bus/testing"
import { randomUUID } from "node:crypto"

it.effect("the README's process manager ships an order paid for", () => shipsWhenPaid)

it.scoped("the README's process manager sets its deadline under follow, and the payment cancels it", () =>
  Effect.gen(function*() {
    yield* following
    const outbox = yield* Outbox.Outbox
    const store = yield* CommandScheduler.ScheduledCommands
    // Events as the order's bus would commit them.
    const envelope = (event: OrderPlaced | OrderPaid) =>
      DomainEvent.stamp({ commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() }, [
        DomainEvent.draft({ aggregateType: "Order", aggregateId: event.orderId, aggregateVersion: 1 }, event)
      ])
    yield* outbox.append(yield* envelope(new OrderPlaced({ orderId: "o-2" })))
    yield* Effect.repeat(store.list(), { until: (pending) => pending.length === 1, times: 1000 })
    expect((yield* store.list()).map((command) => command.commandType)).toEqual(["CancelOrder"])
    yield* outbox.append(yield* envelope(new OrderPaid({ orderId: "o-2" })))
    const shipped = yield* Effect.repeat(checkout.process("o-2"), {
      until: (process) => Option.exists(process, (p) => p.done),
      times: 1000
    })
    expect(Option.map(shipped, (process) => process.state)).toEqual(Option.some({ status: "shipped" }))
    expect(yield* store.list()).toEqual([])
  }).pipe(
    Effect.provide(Layer.mergeAll(
      InMemory.layer,
      Reaction.layerCheckpointsMemory,
      Reaction.layerDeadLettersMemory,
      CommandScheduler.layerMemory,
      ProcessManager.layerMemory
    ))
  ))
