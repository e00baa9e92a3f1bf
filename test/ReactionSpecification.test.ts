import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { Command, CommandBus, type CommandError, DomainEvent, Handler, Outbox, Reaction } from "../src/index.js"
import { InMemory, ReactionSpecification, Specification } from "../src/testing/index.js"

// -----------------------------------------------------------------------------
// a small process: an order placed is paid for, a payment taken is booked
// -----------------------------------------------------------------------------

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

class PaymentTaken extends DomainEvent.Class<PaymentTaken>()("PaymentTaken", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}

class LedgerClosed extends Schema.TaggedError<LedgerClosed>()("LedgerClosed", {}) {}

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

/** The bus the reactions send to; its handlers must not run while commands are only recorded. */
const bus = CommandBus.make([TakePayment, NotifyCustomer], {
  TakePayment: () => Effect.dieMessage("TakePayment's handler ran"),
  NotifyCustomer: () => Effect.dieMessage("NotifyCustomer's handler ran")
})

const pay = Reaction.dispatch(
  OrderPlaced,
  bus,
  (event, followUp) =>
    event.amount > 0 ? new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }) : undefined,
  { name: "pay" }
)

const takePayment = (orderId: string, amount: number) => new TakePayment({ orderId, amount })

/** Where the booking reaction keeps what it booked. */
class Ledger extends Context.Tag("Ledger")<Ledger, Ref.Ref<ReadonlyArray<string>>>() {}

const book = Reaction.make(
  PaymentTaken,
  (event) =>
    Effect.flatMap(Ledger, (ledger) =>
      event.amount < 0
        ? Effect.fail(new LedgerClosed())
        : Ref.update(ledger, (lines) => [...lines, `${event.orderId} ${event.amount}`])),
  { name: "book" }
)

const ledgerLayer = Layer.effect(Ledger, Ref.make<ReadonlyArray<string>>([]))

const ledgerIs = (expected: ReadonlyArray<string>) =>
  Effect.flatMap(Ledger, (ledger) => Effect.map(Ref.get(ledger), (lines) => assert.deepStrictEqual(lines, expected)))

/** The message of the `SpecificationFailed` a specification that must not hold fails with. */
const failureOf = (specification: Effect.Effect<void, Specification.SpecificationFailed>) =>
  Effect.map(Effect.flip(specification), (error) => {
    assert.instanceOf(error, Specification.SpecificationFailed)
    return error.message
  })

const payments = ReactionSpecification.make({ reactions: [pay] })

describe("ReactionSpecification", () => {
  describe("then", () => {
    it.effect("holds when the reactions send these commands, without running their handlers", () =>
      payments.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then(takePayment("o-1", 5)))

    it.effect("says which commands were expected and which were sent when they differ", () =>
      Effect.gen(function*() {
        const message = yield* failureOf(
          payments.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then(takePayment("o-1", 6))
        )
        assert.include(message, `expected commands [{"type":"TakePayment","payload":{"orderId":"o-1","amount":6}}]`)
        assert.include(message, `but got [{"type":"TakePayment","payload":{"orderId":"o-1","amount":5}}]`)
      }))

    it.effect("compares the commands in the order they were sent, over the events in the order given", () =>
      Effect.gen(function*() {
        const placed = [new OrderPlaced({ orderId: "o-1", amount: 5 }), new OrderPlaced({ orderId: "o-2", amount: 7 })]
        yield* payments.when(placed).then(takePayment("o-1", 5), takePayment("o-2", 7))
        const message = yield* failureOf(payments.when(placed).then(takePayment("o-2", 7), takePayment("o-1", 5)))
        assert.include(message, "expected commands")
      }))

    it.effect("fails when a reaction sends fewer or more commands than expected", () =>
      Effect.gen(function*() {
        const placed = new OrderPlaced({ orderId: "o-1", amount: 5 })
        assert.include(yield* failureOf(payments.when(placed).then()), "expected commands []")
        assert.include(
          yield* failureOf(payments.when(placed).then(takePayment("o-1", 5), takePayment("o-1", 5))),
          "but got [{\"type\":\"TakePayment\""
        )
      }))

    it.effect("checks that each command carries its event's correlation, causation and idempotency key", () =>
      Effect.gen(function*() {
        const placed = DomainEvent.draft(
          { aggregateType: "Order", aggregateId: "o-1", aggregateVersion: 1 },
          new OrderPlaced({ orderId: "o-1", amount: 5 })
        )
        // a reaction that forgets to spread its follow-up into the command
        const forgetful = Reaction.dispatch(OrderPlaced, bus, (event) => takePayment(event.orderId, event.amount), {
          name: "forgetful"
        })
        const forgot = yield* failureOf(
          ReactionSpecification.make({ reactions: [forgetful] }).when(placed).then(
            takePayment("o-1", 5)
          )
        )
        assert.include(forgot, `TakePayment, sent by reaction "forgetful" on OrderPlaced, does not carry its follow-up`)
        assert.include(forgot, "causationId none, not the event's id")
        assert.include(forgot, "idempotencyKey none, not forgetful:")
        // one that keeps the correlation and causation but makes its own key
        const ownKey = Reaction.dispatch(
          OrderPlaced,
          bus,
          (event, _followUp, envelope) =>
            new TakePayment({
              orderId: event.orderId,
              amount: event.amount,
              ...Command.causedBy(envelope),
              idempotencyKey: `pay-${event.orderId}`
            }),
          { name: "own key" }
        )
        const keyed = yield* failureOf(
          ReactionSpecification.make({ reactions: [ownKey] }).when(placed).then(
            takePayment("o-1", 5)
          )
        )
        assert.include(keyed, "idempotencyKey pay-o-1, not own key:")
        assert.notInclude(keyed, "causationId")
        assert.notInclude(keyed, "correlationId")
      }))

    it.effect("tells commands apart by the user they act for", () =>
      Effect.gen(function*() {
        // the user a command acts for is what authorization checks: not an id to leave out
        const asMallory = Reaction.dispatch(
          OrderPlaced,
          bus,
          (event, followUp) =>
            new TakePayment({ orderId: event.orderId, amount: event.amount, userId: "mallory", ...followUp }),
          { name: "as mallory" }
        )
        const spec = ReactionSpecification.make({ reactions: [asMallory] })
        const placed = new OrderPlaced({ orderId: "o-1", amount: 5 })
        yield* spec.when(placed).then(new TakePayment({ orderId: "o-1", amount: 5, userId: "mallory" }))
        const message = yield* failureOf(
          spec.when(placed).then(new TakePayment({ orderId: "o-1", amount: 5, userId: "alice" }))
        )
        assert.include(message, `"userId":"alice"`)
        assert.include(
          message,
          `but got [{"type":"TakePayment","payload":{"orderId":"o-1","amount":5},"userId":"mallory"}]`
        )
        assert.include(yield* failureOf(spec.when(placed).then(takePayment("o-1", 5))), `"userId":"mallory"`)
      }))

    it.effect("fails, naming the reaction and its error, when a reaction fails", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        const message = yield* failureOf(spec.when(new PaymentTaken({ orderId: "o-1", amount: -1 })).then())
        assert.include(message, `reaction "book" on PaymentTaken failed with LedgerClosed`)
      }))

    it.effect("runs its effects afterwards, as checks of the state a Reaction.make reaction leaves", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        yield* spec.when([
          new PaymentTaken({ orderId: "o-1", amount: 5 }),
          new PaymentTaken({ orderId: "o-2", amount: 7 })
        ])
          .then(ledgerIs(["o-1 5", "o-2 7"]))
        // a check that fails fails the specification, saying so
        const message = yield* failureOf(
          spec.when(new PaymentTaken({ orderId: "o-1", amount: 5 })).then(Effect.fail(new LedgerClosed()))
        )
        assert.include(message, "a check failed: LedgerClosed")
      }))

    it.effect("builds the layer afresh for each scenario", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        yield* spec.when(new PaymentTaken({ orderId: "o-1", amount: 5 })).then(ledgerIs(["o-1 5"]))
        yield* spec.when(new PaymentTaken({ orderId: "o-2", amount: 7 })).then(ledgerIs(["o-2 7"]))
      }))
  })

  describe("thenNothing", () => {
    it.effect("holds when no reaction sends a command, and fails, showing what was sent, when one does", () =>
      Effect.gen(function*() {
        yield* payments.when(new OrderPlaced({ orderId: "o-1", amount: 0 })).thenNothing()
        // an event no reaction takes
        yield* payments.when(new PaymentTaken({ orderId: "o-1", amount: 5 })).thenNothing()
        const message = yield* failureOf(payments.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).thenNothing())
        assert.include(
          message,
          `expected no command but got [{"type":"TakePayment","payload":{"orderId":"o-1","amount":5}}]`
        )
      }))

    it.effect("fails when a reaction fails", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        const message = yield* failureOf(spec.when(new PaymentTaken({ orderId: "o-1", amount: -1 })).thenNothing())
        assert.include(message, "LedgerClosed")
      }))
  })

  describe("thenFails", () => {
    it.effect("holds when a reaction fails with this error", () =>
      ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        .when(new PaymentTaken({ orderId: "o-1", amount: -1 }))
        .thenFails(new LedgerClosed()))

    it.effect("takes an error's class for any error of it: an event its schema does not decode", () =>
      Effect.gen(function*() {
        const garbled = new DomainEvent.Envelope({
          eventId: crypto.randomUUID(),
          type: "OrderPlaced",
          aggregateType: "Order",
          aggregateId: "o-1",
          aggregateVersion: 1,
          occurredAt: yield* DateTime.now,
          correlationId: crypto.randomUUID(),
          causationId: crypto.randomUUID(),
          payload: { orderId: "o-1", amount: "five" }
        })
        yield* payments.when(garbled).thenFails(Reaction.Undecodable)
        const message = yield* failureOf(payments.when(garbled).thenFails(new CardDeclined({ orderId: "o-1" })))
        assert.include(message, `expected failure CardDeclined {"orderId":"o-1","_tag":"CardDeclined"}`)
        assert.include(message, `but got Undecodable`)
        assert.include(message, `(reaction "pay")`)
      }))

    it.effect("fails, saying so, when no reaction fails, or one fails with another error", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        assert.include(
          yield* failureOf(spec.when(new PaymentTaken({ orderId: "o-1", amount: 5 })).thenFails(new LedgerClosed())),
          "expected failure LedgerClosed {\"_tag\":\"LedgerClosed\"} but no reaction failed"
        )
        assert.include(
          yield* failureOf(spec.when(new PaymentTaken({ orderId: "o-1", amount: -1 })).thenFails(Reaction.Undecodable)),
          "expected failure any Undecodable\n     but got LedgerClosed"
        )
      }))

    it.effect("compares every failure, in the order the reactions ran", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        const twice = [
          new PaymentTaken({ orderId: "o-1", amount: -1 }),
          new PaymentTaken({ orderId: "o-2", amount: -2 })
        ]
        yield* spec.when(twice).thenFails(new LedgerClosed(), new LedgerClosed())
        assert.include(yield* failureOf(spec.when(twice).thenFails(new LedgerClosed())), "but got LedgerClosed")
      }))

    it.effect("reports a reaction that died as such", () =>
      Effect.gen(function*() {
        const broken = Reaction.make(OrderPlaced, () => Effect.dieMessage("boom"), { name: "broken" })
        const message = yield* failureOf(
          ReactionSpecification.make({ reactions: [broken] }).when(new OrderPlaced({ orderId: "o-1", amount: 1 }))
            .thenFails(Reaction.Undecodable)
        )
        assert.include(message, `but reaction "broken" on OrderPlaced died`)
        assert.include(message, "boom")
      }))
  })

  describe("given", () => {
    it.effect("runs prior events through the reactions, without counting what they sent", () =>
      payments.given(new OrderPlaced({ orderId: "o-0", amount: 3 }))
        .when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
        .then(takePayment("o-1", 5)))

    it.effect("runs setup effects, and prior events build the state the reactions keep", () =>
      ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        .given(
          Effect.flatMap(Ledger, (ledger) => Ref.set(ledger, ["opening 0"])),
          new PaymentTaken({ orderId: "o-0", amount: 3 })
        )
        .when(new PaymentTaken({ orderId: "o-1", amount: 5 }))
        .then(ledgerIs(["opening 0", "o-0 3", "o-1 5"])))

    it.effect("fails the scenario, saying where, when a prior event's reaction or a setup effect fails", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({ reactions: [book], layer: ledgerLayer })
        const when = new PaymentTaken({ orderId: "o-1", amount: 5 })
        assert.include(
          yield* failureOf(spec.given(new PaymentTaken({ orderId: "o-0", amount: -1 })).when(when).then()),
          `given PaymentTaken: reaction "book" on PaymentTaken failed with LedgerClosed`
        )
        assert.include(
          yield* failureOf(spec.given(Effect.fail("no ledger today")).when(when).then()),
          "setting up the scenario failed: no ledger today"
        )
      }))
  })

  describe("events", () => {
    it.effect("stamps an event as the bus would: its own ids and correlation, the time, in one aggregate", () =>
      Effect.gen(function*() {
        const seen: Array<DomainEvent.Envelope> = []
        const watch = Reaction.make(OrderPlaced, (_, envelope) => Effect.sync(() => void seen.push(envelope)))
        yield* TestClock.setTime(1_000)
        yield* ReactionSpecification.make({ reactions: [watch] })
          .given(new OrderPlaced({ orderId: "o-1", amount: 1 }))
          .when([
            new OrderPlaced({ orderId: "o-1", amount: 2 }),
            DomainEvent.draft(
              { aggregateType: "Order", aggregateId: "o-9", aggregateVersion: 4 },
              new OrderPlaced({ orderId: "o-9", amount: 3 })
            )
          ])
          .then()
        assert.deepStrictEqual(seen.map((envelope) => envelope.payload), [
          { orderId: "o-1", amount: 1, _tag: "OrderPlaced" },
          { orderId: "o-1", amount: 2, _tag: "OrderPlaced" },
          { orderId: "o-9", amount: 3, _tag: "OrderPlaced" }
        ])
        const [first, second, third] = seen
        assert.deepStrictEqual(
          [first!.aggregateType, first!.aggregateVersion, second!.aggregateVersion],
          ["Specification", 1, 2]
        )
        assert.strictEqual(first!.aggregateId, second!.aggregateId)
        assert.deepStrictEqual([third!.aggregateType, third!.aggregateId, third!.aggregateVersion], ["Order", "o-9", 4])
        assert.strictEqual(new Set(seen.map((envelope) => envelope.correlationId)).size, 3)
        assert.strictEqual(new Set(seen.map((envelope) => envelope.eventId)).size, 3)
        assert.strictEqual(DateTime.toEpochMillis(first!.occurredAt), 1_000)
      }))

    it.effect("passes an envelope on as it is", () =>
      Effect.gen(function*() {
        const envelope = new DomainEvent.Envelope({
          eventId: crypto.randomUUID(),
          type: "OrderPlaced",
          aggregateType: "Order",
          aggregateId: "o-1",
          aggregateVersion: 7,
          occurredAt: yield* DateTime.now,
          correlationId: crypto.randomUUID(),
          causationId: crypto.randomUUID(),
          payload: { orderId: "o-1", amount: 5 }
        })
        const seen: Array<DomainEvent.Envelope> = []
        const watch = Reaction.make(OrderPlaced, (_, envelope) => Effect.sync(() => void seen.push(envelope)))
        yield* ReactionSpecification.make({ reactions: [watch, pay] }).when(envelope).then(takePayment("o-1", 5))
        assert.strictEqual(seen[0], envelope)
      }))
  })

  describe("with a bus", () => {
    const realBus = CommandBus.make([TakePayment, NotifyCustomer], {
      TakePayment: (command) =>
        command.amount > 1000
          ? Effect.fail(new CardDeclined({ orderId: command.orderId }))
          : Effect.succeed(Handler.result(undefined, [
            DomainEvent.draft(
              { aggregateType: "Payment", aggregateId: command.orderId, aggregateVersion: 1 },
              new PaymentTaken({ orderId: command.orderId, amount: command.amount })
            )
          ])),
      NotifyCustomer: () => Effect.succeed(Handler.result(undefined, []))
    })
    const running = ReactionSpecification.make({ reactions: [pay], bus: realBus, layer: InMemory.layer })

    const appended = Effect.flatMap(
      Outbox.Outbox,
      (outbox) => Effect.map(outbox.read({ after: 0, limit: 100 }), (stored) => stored.map((s) => s.event.type))
    )

    it.effect("runs the commands the reactions send on it, recorded as well", () =>
      running.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then(
        takePayment("o-1", 5),
        Effect.map(appended, (types) => assert.deepStrictEqual(types, ["PaymentTaken"]))
      ))

    it.effect("makes a command's failure the reaction's", () =>
      running.when(new OrderPlaced({ orderId: "o-1", amount: 5000 })).thenFails(new CardDeclined({ orderId: "o-1" })))
  })

  describe("respond", () => {
    const declining = ReactionSpecification.make({
      reactions: [pay],
      respond: {
        TakePayment: (command) =>
          command.amount > 100 ? Effect.fail(new CardDeclined({ orderId: command.orderId })) : Effect.void
      }
    })

    it.effect("answers a recorded command with its declared failure, which fails a reaction that does not handle it", () =>
      Effect.gen(function*() {
        yield* declining.when(new OrderPlaced({ orderId: "o-1", amount: 500 })).thenFails(
          new CardDeclined({ orderId: "o-1" })
        )
        // the answer is the reaction's failure: a then that expects the command sent says so
        const message = yield* failureOf(
          declining.when(new OrderPlaced({ orderId: "o-1", amount: 500 })).then(takePayment("o-1", 500))
        )
        assert.include(message, `reaction "pay" on OrderPlaced failed with CardDeclined`)
        // an answer that succeeds leaves the command sent, as without respond
        yield* declining.when(new OrderPlaced({ orderId: "o-2", amount: 5 })).then(takePayment("o-2", 5))
      }))

    // A reaction that turns a declined card into a note to the customer: the payment's failure is
    // its command's outcome, handled in the process rather than left as a dead letter.
    const notify = Reaction.dispatch(
      OrderPlaced,
      bus,
      (event, followUp) => new NotifyCustomer({ orderId: event.orderId, ...followUp }),
      { name: "notify declined" }
    )
    const payOrNotify: Reaction.Dispatching<
      TakePayment | NotifyCustomer,
      CommandError.StoreUnavailable,
      Reaction.Requirements<typeof pay>
    > = {
      ...pay,
      name: "pay or notify",
      handle: (envelope) => pay.handle(envelope).pipe(Effect.catchTag("CardDeclined", () => notify.handle(envelope)))
    }

    it.effect("shows what a reaction that handles the failure sends then: the failed command, and the next", () =>
      Effect.gen(function*() {
        const spec = ReactionSpecification.make({
          reactions: [payOrNotify],
          respond: { TakePayment: (command) => Effect.fail(new CardDeclined({ orderId: command.orderId })) }
        })
        yield* spec.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then(
          takePayment("o-1", 5),
          new NotifyCustomer({ orderId: "o-1" })
        )
        // unanswered, the payment goes through, and the customer hears nothing
        yield* ReactionSpecification.make({ reactions: [payOrNotify] })
          .when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
          .then(takePayment("o-1", 5))
      }))

    it.effect("answers with the layer's services, once for each command, and for given events too", () =>
      Effect.gen(function*() {
        const answered = Effect.flatMap(Ledger, Ref.get)
        const spec = ReactionSpecification.make({
          reactions: [pay],
          layer: ledgerLayer,
          respond: {
            TakePayment: (command) =>
              Effect.flatMap(Ledger, (ledger) => Ref.update(ledger, (lines) => [...lines, command.orderId]))
          }
        })
        yield* spec.given(new OrderPlaced({ orderId: "o-0", amount: 3 }))
          .when([new OrderPlaced({ orderId: "o-1", amount: 5 }), new OrderPlaced({ orderId: "o-2", amount: 7 })])
          .then(
            takePayment("o-1", 5),
            takePayment("o-2", 7),
            Effect.map(answered, (orders) => assert.deepStrictEqual(orders, ["o-0", "o-1", "o-2"]))
          )
        assert.include(
          yield* failureOf(
            declining.given(new OrderPlaced({ orderId: "o-0", amount: 500 }))
              .when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
              .then(takePayment("o-1", 5))
          ),
          `given OrderPlaced: reaction "pay" on OrderPlaced failed with CardDeclined`
        )
      }))

    it.effect("with a bus, answers the commands it names in place of running them, and runs the others", () =>
      Effect.gen(function*() {
        const notifyToo = Reaction.dispatch(
          OrderPlaced,
          bus,
          (event, followUp) => new NotifyCustomer({ orderId: event.orderId, ...followUp }),
          { name: "notify" }
        )
        const ran: Array<string> = []
        const recording = CommandBus.make([TakePayment, NotifyCustomer], {
          TakePayment: () => Effect.dieMessage("TakePayment's handler ran"),
          NotifyCustomer: (command) => Effect.sync(() => Handler.result(void ran.push(command.orderId)))
        })
        yield* ReactionSpecification.make({
          reactions: [pay, notifyToo],
          bus: recording,
          layer: InMemory.layer,
          respond: { TakePayment: () => Effect.void }
        }).when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then(
          takePayment("o-1", 5),
          new NotifyCustomer({ orderId: "o-1" })
        )
        assert.deepStrictEqual(ran, ["o-1"])
      }))

    it.effect("reports an answer that dies as the reaction's death", () =>
      Effect.gen(function*() {
        const message = yield* failureOf(
          ReactionSpecification.make({ reactions: [pay], respond: { TakePayment: () => Effect.dieMessage("boom") } })
            .when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
            .then(takePayment("o-1", 5))
        )
        assert.include(message, `reaction "pay" on OrderPlaced died`)
        assert.include(message, "boom")
      }))
  })

  it.effect("refuses two reactions of one name, as start and follow do", () =>
    Effect.gen(function*() {
      const again = Reaction.make(OrderPlaced, () => Effect.void, { name: "pay" })
      const message = yield* failureOf(
        ReactionSpecification.make({ reactions: [pay, again] }).when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
          .thenNothing()
      )
      assert.include(message, `two reactions are named "pay"`)
    }))

  it.effect("fails, saying so, when the layer cannot be built", () =>
    Effect.gen(function*() {
      const spec = ReactionSpecification.make({ reactions: [book], layer: Layer.fail("no ledger") })
      const message = yield* failureOf(spec.when(new PaymentTaken({ orderId: "o-1", amount: 5 })).thenNothing())
      assert.include(message, "building the layer failed: no ledger")
    }))

  it.effect("leaves Reaction.dispatch sending to its bus outside a specification", () =>
    Effect.gen(function*() {
      const sent: Array<string> = []
      const counting = CommandBus.make([TakePayment, NotifyCustomer], {
        TakePayment: (command) => Effect.sync(() => Handler.result(void sent.push(command.orderId))),
        NotifyCustomer: () => Effect.succeed(Handler.result(undefined))
      })
      const reaction = Reaction.dispatch(OrderPlaced, counting, (event, followUp) =>
        new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }))
      const [envelope] = yield* DomainEvent.stamp(
        { commandId: crypto.randomUUID(), correlationId: crypto.randomUUID(), timestamp: yield* DateTime.now },
        [DomainEvent.draft(
          { aggregateType: "Order", aggregateId: "o-1", aggregateVersion: 1 },
          new OrderPlaced({ orderId: "o-1", amount: 5 })
        )]
      )
      yield* reaction.handle(envelope!).pipe(Effect.provide(InMemory.layer))
      assert.deepStrictEqual(sent, ["o-1"])
    }))
})
