/**
 * A fulfilment process for the failure handlers' tests: an order submitted
 * reserves stock, then charges the card, with a deadline; out of stock, its
 * failure handler rejects the order instead and ends the process.
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { Command, CommandBus, DomainEvent, Handler, Idempotency, ProcessManager } from "../../src/index.js"

export class OrderSubmitted extends DomainEvent.Class<OrderSubmitted>()("OrderSubmitted", {
  orderId: Schema.String,
  quantity: Schema.Int
}) {}

export class OutOfStock extends Schema.TaggedError<OutOfStock>()("OutOfStock", { orderId: Schema.String }) {}
export class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}

export class ReserveStock extends Command.Class<ReserveStock>()("ReserveStock", {
  payload: { orderId: Schema.String, quantity: Schema.Int },
  success: Schema.Void,
  failure: OutOfStock
}) {}

export class ChargeCard extends Command.Class<ChargeCard>()("ChargeCard", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: CardDeclined
}) {}

export class RejectOrder extends Command.Class<RejectOrder>()("RejectOrder", {
  payload: { orderId: Schema.String, reason: Schema.String },
  success: Schema.Void,
  failure: CardDeclined
}) {}

export class ExpireOrder extends Command.Class<ExpireOrder>()("ExpireOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export const FulfilmentState = Schema.Struct({
  status: Schema.Literal("new", "reserved", "rejected"),
  reason: Schema.optional(Schema.String)
})

/**
 * A bus whose stock holds `stock` items and whose card is declined for the
 * orders in `declined`; `ran` gets `<tag> <orderId>` for each handler run,
 * `keys` its command's idempotency key.
 */
export const makeBus = (stock: number, declined: ReadonlyArray<string> = []) => {
  const ran: Array<string> = []
  const keys: Array<string | undefined> = []
  const record = (
    command: { readonly _tag: string; readonly orderId: string; readonly idempotencyKey?: string | undefined }
  ) =>
    Effect.sync(() => {
      ran.push(`${command._tag} ${command.orderId}`)
      keys.push(command.idempotencyKey)
    })
  const bus = CommandBus.make([ReserveStock, ChargeCard, RejectOrder, ExpireOrder], {
    ReserveStock: (command) =>
      Effect.zipRight(
        record(command),
        command.quantity > stock
          ? Effect.fail(new OutOfStock({ orderId: command.orderId }))
          : Effect.succeed(Handler.result(undefined))
      ),
    ChargeCard: (command) =>
      Effect.zipRight(
        record(command),
        declined.includes(command.orderId)
          ? Effect.fail(new CardDeclined({ orderId: command.orderId }))
          : Effect.succeed(Handler.result(undefined))
      ),
    RejectOrder: (command) =>
      Effect.zipRight(
        record(command),
        declined.includes(command.orderId)
          ? Effect.fail(new CardDeclined({ orderId: command.orderId }))
          : Effect.succeed(Handler.result(undefined))
      ),
    ExpireOrder: (command) => Effect.zipRight(record(command), Effect.succeed(Handler.result(undefined)))
  }).pipe(CommandBus.withMiddleware(Idempotency.middleware()))
  return { bus, ran, keys }
}

export type Bus = ReturnType<typeof makeBus>["bus"]

/**
 * Reserve, then charge, with a deadline; out of stock, the order is rejected
 * instead and the process ends, in the state `rejection` gives. `handled`
 * gets, for each failure handled, the state the handler got, the failed
 * command's index and quantity. A card declined is a dead letter, unless
 * `rejectDeclined`.
 */
export const makeFulfilment = (
  bus: Bus,
  options: {
    readonly rejection?: (reason: string) => typeof FulfilmentState.Type
    readonly handled?: Array<readonly [string, number, number]>
    /** The rejection keeps the rest of the event's decision (its deadline), rather than ending the process. */
    readonly keepRest?: boolean
    /** A card declined ends the process too, rejected (with no order to reject). */
    readonly rejectDeclined?: boolean
  } = {}
) =>
  ProcessManager.make({
    name: "fulfilment",
    bus,
    state: FulfilmentState,
    initialState: { status: "new" },
    events: [OrderSubmitted],
    key: (event) => event.orderId
  }).on({
    OrderSubmitted: (state, event) => ({
      state: { ...state, status: "reserved" },
      send: [
        new ReserveStock({ orderId: event.orderId, quantity: event.quantity }),
        new ChargeCard({ orderId: event.orderId })
      ],
      schedule: [{ name: "expiry", after: "1 hour", command: new ExpireOrder({ orderId: event.orderId }) }]
    })
  }, {
    onFailure: {
      ReserveStock: (state, { command, decision, failure, index }) => {
        options.handled?.push([state.status, index, command.quantity])
        return {
          ...(options.keepRest === true ? decision : { done: true }),
          state: options.rejection?.(failure._tag) ?? { status: "rejected", reason: failure._tag },
          send: [new RejectOrder({ orderId: command.orderId, reason: failure._tag })]
        }
      },
      ...(options.rejectDeclined === true
        ? {
          ChargeCard: (_, { failure }) => ({ state: { status: "rejected", reason: failure._tag }, done: true })
        }
        : {})
    }
  })
