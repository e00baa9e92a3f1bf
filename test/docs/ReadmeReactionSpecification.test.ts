// The README's example of answering a reaction's command, verbatim between the markers, run as a test.
import { it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { Command, CommandBus, DomainEvent, Handler, Reaction } from "effect-command-bus"
import { ReactionSpecification } from "effect-command-bus/testing"

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}

class TakePayment extends Command.Class<TakePayment>()("TakePayment", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: CardDeclined
}) {}

const bus = CommandBus.make([TakePayment], { TakePayment: () => Effect.succeed(Handler.result(undefined)) })

const pay = Reaction.dispatch(
  OrderPlaced,
  bus,
  (event, followUp) => new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }),
  { name: "pay" }
)

// README:begin
const declining = ReactionSpecification.make({
  reactions: [pay],
  respond: { TakePayment: (command) => Effect.fail(new CardDeclined({ orderId: command.orderId })) }
})

it.effect("fails as its payment does when the card is declined", () =>
  declining.when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
    .thenFails(new CardDeclined({ orderId: "o-1" })))
// README:end
