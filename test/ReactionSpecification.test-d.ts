import { Context, Effect, Layer, Schema } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import { Command, CommandBus, CommandError, DomainEvent, Handler, Reaction } from "../src/index.js"
import { InMemory, ReactionSpecification } from "../src/testing/index.js"

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}
class MailDown extends Schema.TaggedError<MailDown>()("MailDown", {}) {}
class Unrelated extends Schema.TaggedError<Unrelated>()("Unrelated", {}) {}

class TakePayment extends Command.Class<TakePayment>()("TakePayment", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: CardDeclined
}) {}

class NotifyCustomer extends Command.Class<NotifyCustomer>()("NotifyCustomer", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Ship extends Command.Class<Ship>()("Ship", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Payments extends Context.Tag("Payments")<Payments, { readonly take: Effect.Effect<void> }>() {}
class Mailer extends Context.Tag("Mailer")<Mailer, { readonly send: Effect.Effect<void, MailDown> }>() {}

const handlers: CommandBus.HandlersFor<TakePayment | NotifyCustomer, Payments> = {
  TakePayment: () => Effect.as(Effect.flatMap(Payments, (payments) => payments.take), Handler.result(undefined)),
  NotifyCustomer: () => Effect.succeed(Handler.result(undefined))
}
const bus = CommandBus.make([TakePayment, NotifyCustomer], handlers)
  .pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))

const pay = Reaction.dispatch(
  OrderPlaced,
  bus,
  (event, followUp) => new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp })
)
const mail = Reaction.make(OrderPlaced, () => Effect.flatMap(Mailer, (mailer) => mailer.send), { name: "mail" })

const placed = new OrderPlaced({ orderId: "o-1", amount: 5 })
const takePayment = new TakePayment({ orderId: "o-1", amount: 5 })

describe("ReactionSpecification types", () => {
  it("names, in a dispatch reaction's type, the commands it sends", () => {
    expectTypeOf<ReactionSpecification.Dispatched<typeof pay>>().toEqualTypeOf<TakePayment>()
    expectTypeOf<ReactionSpecification.Dispatched<typeof mail>>().toEqualTypeOf<never>()
    const either = Reaction.dispatch(OrderPlaced, bus, (event, followUp) =>
      event.amount > 0
        ? new TakePayment({ ...event, ...followUp })
        : new NotifyCustomer({ orderId: event.orderId, ...followUp }))
    expectTypeOf<ReactionSpecification.Dispatched<typeof either>>().toEqualTypeOf<TakePayment | NotifyCustomer>()
    // still a reaction, for start, follow and redrive
    expectTypeOf(pay).toMatchTypeOf<Reaction.Any>()
  })

  it("takes in then only the commands the reactions send, and checks needing the layer's services", () => {
    const spec = ReactionSpecification.make({ reactions: [pay] })
    spec.when(placed).then(takePayment)
    spec.when(placed).then(takePayment, Effect.void)
    // @ts-expect-error -- a command of the bus, but no reaction sends it
    spec.when(placed).then(new NotifyCustomer({ orderId: "o-1" }))
    // @ts-expect-error -- an event is not a command
    spec.when(placed).then(placed)
    // @ts-expect-error -- the scenario has no Mailer to check with
    spec.when(placed).then(Effect.flatMap(Mailer, (mailer) => mailer.send))
    const mailing = ReactionSpecification.make({
      reactions: [mail],
      layer: Layer.succeed(Mailer, { send: Effect.void })
    })
    mailing.when(placed).then(Effect.flatMap(Mailer, (mailer) => mailer.send))
    // @ts-expect-error -- a Reaction.make reaction sends no command
    mailing.when(placed).then(takePayment)
  })

  it("takes in thenFails only what the reactions may fail with, or its class", () => {
    const spec = ReactionSpecification.make({
      reactions: [pay, mail],
      layer: Layer.succeed(Mailer, { send: Effect.void })
    })
    spec.when(placed).thenFails(new CardDeclined({ orderId: "o-1" }))
    spec.when(placed).thenFails(new MailDown())
    spec.when(placed).thenFails(new CommandError.CommandTimeout({ commandType: "TakePayment", timeoutMillis: 1 }))
    spec.when(placed).thenFails(Reaction.Undecodable, new MailDown())
    // @ts-expect-error -- no reaction fails with it
    spec.when(placed).thenFails(new Unrelated())
    // @ts-expect-error -- nor with any of its class
    spec.when(placed).thenFails(Unrelated)
  })

  it("needs no service of a dispatch reaction's bus while its commands are only recorded", () => {
    ReactionSpecification.make({ reactions: [pay] })
    ReactionSpecification.make({ reactions: [pay, mail], layer: Layer.succeed(Mailer, { send: Effect.void }) })
    // @ts-expect-error -- the Mailer the make reaction needs is missing
    ReactionSpecification.make({ reactions: [pay, mail] })
  })

  it("needs the bus's services when the commands run on it, and a bus that handles them", () => {
    const payments = Layer.succeed(Payments, { take: Effect.void })
    ReactionSpecification.make({ reactions: [pay], bus, layer: Layer.merge(InMemory.layer, payments) })
    // @ts-expect-error -- the handlers' Payments are missing
    ReactionSpecification.make({ reactions: [pay], bus, layer: InMemory.layer })
    const shipping = CommandBus.make([Ship], { Ship: () => Effect.succeed(Handler.result(undefined)) })
    // @ts-expect-error -- this bus does not handle TakePayment
    ReactionSpecification.make({ reactions: [pay], bus: shipping, layer: InMemory.layer })
  })
})

describe("ReactionSpecification respond", () => {
  class OutOfStock extends Schema.TaggedError<OutOfStock>()("OutOfStock", { productId: Schema.String }) {}
  class ReserveStock extends Command.Class<ReserveStock>()("ReserveStock", {
    payload: { productId: Schema.String },
    success: Schema.Struct({ reserved: Schema.Int }),
    failure: OutOfStock
  }) {}
  const stockBus = CommandBus.make([ReserveStock], {
    ReserveStock: () => Effect.succeed(Handler.result({ reserved: 1 }))
  })
  const reserve = Reaction.dispatch(
    OrderPlaced,
    stockBus,
    (event, followUp) => new ReserveStock({ productId: event.orderId, ...followUp })
  )

  it("answers, by tag, the commands the reactions send, each given its own command", () => {
    ReactionSpecification.make({
      reactions: [pay, reserve],
      respond: {
        TakePayment: (command) => {
          expectTypeOf(command).toEqualTypeOf<TakePayment>()
          return Effect.fail(new CardDeclined({ orderId: command.orderId }))
        },
        ReserveStock: (command) => {
          expectTypeOf(command).toEqualTypeOf<ReserveStock>()
          return Effect.succeed({ reserved: 2 })
        }
      }
    })
    // an answer for some of them only
    ReactionSpecification.make({
      reactions: [pay, reserve],
      respond: { ReserveStock: () => Effect.succeed({ reserved: 0 }) }
    })
  })

  it("takes only the command's own success and failures", () => {
    ReactionSpecification.make({
      reactions: [reserve],
      // @ts-expect-error -- ReserveStock declares OutOfStock, not CardDeclined
      respond: { ReserveStock: () => Effect.fail(new CardDeclined({ orderId: "o-1" })) }
    })
    const timeout = new CommandError.CommandTimeout({ commandType: "ReserveStock", timeoutMillis: 1 })
    ReactionSpecification.make({
      reactions: [reserve],
      // @ts-expect-error -- nor a failure of the bus's middleware: a command's own failures only
      respond: { ReserveStock: () => Effect.fail(timeout) }
    })
    ReactionSpecification.make({
      reactions: [reserve],
      // @ts-expect-error -- ReserveStock succeeds with { reserved }, not a string
      respond: { ReserveStock: () => Effect.succeed("reserved") }
    })
    ReactionSpecification.make({
      reactions: [reserve],
      respond: { ReserveStock: () => Effect.fail(new OutOfStock({ productId: "p" })) }
    })
  })

  it("refuses an answer for a command no reaction sends", () => {
    ReactionSpecification.make({
      reactions: [pay],
      // @ts-expect-error -- pay never sends NotifyCustomer
      respond: { NotifyCustomer: () => Effect.void }
    })
    ReactionSpecification.make({
      reactions: [mail],
      layer: Layer.succeed(Mailer, { send: Effect.void }),
      // @ts-expect-error -- a Reaction.make reaction sends no command
      respond: { TakePayment: () => Effect.void }
    })
  })

  it("runs an answer with the layer's services, and no other", () => {
    ReactionSpecification.make({
      reactions: [pay],
      layer: Layer.succeed(Mailer, { send: Effect.void }),
      respond: { TakePayment: () => Effect.flatMap(Mailer, (mailer) => Effect.orDie(mailer.send)) }
    })
    // @ts-expect-error -- there is no layer, so no Mailer
    ReactionSpecification.make({
      reactions: [pay],
      respond: { TakePayment: () => Effect.flatMap(Mailer, (mailer) => Effect.orDie(mailer.send)) }
    })
  })

  it("keeps the failure it answers in what the reactions may fail with", () => {
    const spec = ReactionSpecification.make({
      reactions: [reserve],
      respond: { ReserveStock: (command) => Effect.fail(new OutOfStock({ productId: command.productId })) }
    })
    spec.when(placed).thenFails(new OutOfStock({ productId: "o-1" }))
    spec.when(placed).then(new ReserveStock({ productId: "o-1" }))
  })
})
