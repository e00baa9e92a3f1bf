/**
 * A small checkout process for the process manager's tests: an order placed
 * is paid for, with a deadline; paid in time, it ships; not, it is
 * cancelled. The bus's handlers record what they ran, and raise the events
 * the process reacts to.
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { Command, CommandBus, DomainEvent, Handler, Idempotency, ProcessManager } from "../../src/index.js"

export class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

export class PaymentReceived extends DomainEvent.Class<PaymentReceived>()("PaymentReceived", {
  orderId: Schema.String
}) {}

export class PaymentTimedOut extends DomainEvent.Class<PaymentTimedOut>()("PaymentTimedOut", {
  orderId: Schema.String
}) {}

export class PlaceOrder extends Command.Class<PlaceOrder>()("PlaceOrder", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ConfirmPayment extends Command.Class<ConfirmPayment>()("ConfirmPayment", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class TakePayment extends Command.Class<TakePayment>()("TakePayment", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ExpirePayment extends Command.Class<ExpirePayment>()("ExpirePayment", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ShipOrder extends Command.Class<ShipOrder>()("ShipOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class CancelOrder extends Command.Class<CancelOrder>()("CancelOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export const CheckoutCommands = [
  PlaceOrder,
  ConfirmPayment,
  TakePayment,
  ExpirePayment,
  ShipOrder,
  CancelOrder
] as const

const raise = (orderId: string, event: DomainEvent.Any) =>
  Effect.succeed(Handler.result(undefined, [
    DomainEvent.draft({ aggregateType: "Order", aggregateId: orderId, aggregateVersion: 1 }, event)
  ]))

/** The bus, with the idempotency middleware; `ran` gets `<tag> <orderId>` for each handler run. */
export const makeBus = (ran: Array<string>) => {
  const record = (command: { readonly _tag: string; readonly orderId: string }) =>
    Effect.sync(() => ran.push(`${command._tag} ${command.orderId}`))
  return CommandBus.make(CheckoutCommands, {
    PlaceOrder: (command) => Effect.zipRight(record(command), raise(command.orderId, new OrderPlaced(command))),
    ConfirmPayment: (command) =>
      Effect.zipRight(record(command), raise(command.orderId, new PaymentReceived({ orderId: command.orderId }))),
    TakePayment: (command) => Effect.as(record(command), Handler.result(undefined)),
    ExpirePayment: (command) =>
      Effect.zipRight(record(command), raise(command.orderId, new PaymentTimedOut({ orderId: command.orderId }))),
    ShipOrder: (command) => Effect.as(record(command), Handler.result(undefined)),
    CancelOrder: (command) => Effect.as(record(command), Handler.result(undefined))
  }).pipe(CommandBus.withMiddleware(Idempotency.middleware()))
}

export const CheckoutState = Schema.Struct({
  status: Schema.Literal("new", "awaiting-payment", "shipped", "cancelled"),
  amount: Schema.Int
})

/** The checkout process over `bus`: pay within `deadline` of the order, or it is cancelled. */
export const makeCheckout = (bus: ReturnType<typeof makeBus>, deadline: Duration.DurationInput = "30 minutes") =>
  ProcessManager.make({
    name: "checkout",
    bus,
    state: CheckoutState,
    initialState: { status: "new", amount: 0 },
    events: [OrderPlaced, PaymentReceived, PaymentTimedOut],
    key: (event) => event.orderId,
    startedBy: ["OrderPlaced"]
  }).on({
    OrderPlaced: (state, event) => ({
      state: { ...state, status: "awaiting-payment", amount: event.amount },
      send: [new TakePayment({ orderId: event.orderId, amount: event.amount })],
      schedule: [{ name: "payment", after: deadline, command: new ExpirePayment({ orderId: event.orderId }) }]
    }),
    PaymentReceived: (state, event) => ({
      state: { ...state, status: "shipped" },
      send: [new ShipOrder({ orderId: event.orderId })],
      cancel: ["payment"],
      done: true
    }),
    PaymentTimedOut: (state, event) => ({
      state: { ...state, status: "cancelled" },
      send: [new CancelOrder({ orderId: event.orderId })],
      done: true
    })
  })
