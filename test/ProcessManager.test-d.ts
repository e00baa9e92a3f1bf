import { Effect, Schema } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandScheduler } from "../src/index.js"
import { Command, CommandBus, Handler, ProcessManager, Reaction } from "../src/index.js"
import { ProcessManagerSpecification } from "../src/testing/index.js"
import {
  CheckoutState,
  makeBus,
  makeCheckout,
  OrderPlaced,
  PaymentReceived,
  ShipOrder,
  TakePayment
} from "./support/Checkout.js"

// A command of another bus.
class SendInvoice extends Command.Class<SendInvoice>()("SendInvoice", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const bus = makeBus([])
const declared = ProcessManager.make({
  name: "types",
  bus,
  state: CheckoutState,
  initialState: { status: "new", amount: 0 },
  events: [OrderPlaced, PaymentReceived],
  key: (event) => event.orderId
})

describe("ProcessManager types", () => {
  it("sends the bus's commands only, as commands and as deadlines", () => {
    declared.on({
      OrderPlaced: (state, event) => ({
        state,
        // @ts-expect-error: SendInvoice is not a command of the bus
        send: [new SendInvoice({ orderId: event.orderId })]
      }),
      PaymentReceived: (state, event) => ({
        state,
        // @ts-expect-error: nor as a deadline
        schedule: [{ name: "invoice", after: "1 day", command: new SendInvoice({ orderId: event.orderId }) }]
      })
    })
    declared.on({
      OrderPlaced: (state, event) => {
        expectTypeOf(event).toEqualTypeOf<OrderPlaced>()
        expectTypeOf(state.status).toEqualTypeOf<"new" | "awaiting-payment" | "shipped" | "cancelled">()
        return { state, send: [new TakePayment({ orderId: event.orderId, amount: event.amount })] }
      },
      PaymentReceived: (state) => ({ state })
    })
  })

  it("takes a handler for each event, of its own event, and a state of the schema's type", () => {
    // @ts-expect-error: no handler for PaymentReceived
    declared.on({ OrderPlaced: (state) => ({ state }) })
    declared.on({
      OrderPlaced: (state) => ({ state }),
      // @ts-expect-error: the event is a PaymentReceived, which has no amount
      PaymentReceived: (state, event) => ({ state: { ...state, amount: event.amount } })
    })
    declared.on({
      // @ts-expect-error: a status the schema does not have
      OrderPlaced: (state) => ({ state: { ...state, status: "lost" } }),
      PaymentReceived: (state) => ({ state })
    })
    ProcessManager.make({
      name: "types",
      bus,
      state: CheckoutState,
      initialState: { status: "new", amount: 0 },
      events: [OrderPlaced, PaymentReceived],
      key: (event) => event.orderId,
      // @ts-expect-error: not one of its events
      startedBy: ["OrderShipped"]
    })
  })

  it("runs under Reaction.follow, requiring its store, the scheduler's and the bus's", () => {
    const checkout = makeCheckout(bus)
    const followed = Reaction.follow("checkout", checkout.reactions)
    expectTypeOf<ProcessManager.Processes>().toMatchTypeOf<Effect.Effect.Context<typeof followed>>()
    expectTypeOf<CommandScheduler.ScheduledCommands>().toMatchTypeOf<Effect.Effect.Context<typeof followed>>()
  })

  it("its specification expects the bus's commands only", () => {
    const spec = ProcessManagerSpecification.make({ manager: makeCheckout(bus) })
    const then = spec.when(new OrderPlaced({ orderId: "o", amount: 1 }))
    then.then({ commands: [new TakePayment({ orderId: "o", amount: 1 })], state: { status: "new", amount: 1 } })
    then.then({ deadlines: [{ name: "payment", command: new ShipOrder({ orderId: "o" }) }] })
    // @ts-expect-error: SendInvoice is not a command of the bus
    then.then({ commands: [new SendInvoice({ orderId: "o" })] })
    // @ts-expect-error: a state of another shape
    then.then({ state: { paid: true } })
  })

  it("takes failure handlers by the tag of a command of the bus, each of its own command and failure", () => {
    class Declined extends Schema.TaggedError<Declined>()("Declined", { reason: Schema.String }) {}
    class Charge extends Command.Class<Charge>()("Charge", {
      payload: { orderId: Schema.String },
      success: Schema.Void,
      failure: Declined
    }) {}
    const charging = CommandBus.make([Charge, ShipOrder], {
      Charge: () => Effect.succeed(Handler.result(undefined)),
      ShipOrder: () => Effect.succeed(Handler.result(undefined))
    })
    const charges = ProcessManager.make({
      name: "charges",
      bus: charging,
      state: CheckoutState,
      initialState: { status: "new", amount: 0 },
      events: [OrderPlaced],
      key: (event) => event.orderId
    })
    const handlers = {
      OrderPlaced: (state: typeof CheckoutState.Type, event: OrderPlaced) => ({
        state,
        send: [new Charge({ orderId: event.orderId })]
      })
    }
    charges.on(handlers, {
      onFailure: {
        Charge: (state, failed, event) => {
          expectTypeOf(failed.command).toEqualTypeOf<Charge>()
          expectTypeOf(failed.decision.state).toEqualTypeOf<typeof CheckoutState.Type>()
          expectTypeOf(failed.failure).toEqualTypeOf<Declined>()
          expectTypeOf(event).toEqualTypeOf<OrderPlaced>()
          return { state: { ...state, status: "cancelled" }, send: [new ShipOrder({ orderId: event.orderId })] }
        }
      }
    })
    charges.on(handlers, {
      onFailure: {
        // @ts-expect-error: ShipOrder declares no failure: nothing to handle
        ShipOrder: (state: typeof CheckoutState.Type) => ({ state })
      }
    })
    charges.on(handlers, {
      onFailure: {
        // @ts-expect-error: not a command of the bus
        SendInvoice: (state: typeof CheckoutState.Type) => ({ state })
      }
    })
    charges.on(handlers, {
      onFailure: {
        // @ts-expect-error: a compensation sends the bus's commands only
        Charge: (state, failed) => ({ state, send: [new SendInvoice({ orderId: failed.command.orderId })] })
      }
    })
  })
})
