import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import { Command, CommandBus, DomainEvent, Handler } from "../src/index.js"
import { InMemory, Specification } from "../src/testing/index.js"

// An account: opened, deposited into, withdrawn from. Its balance lives in a store the handler reads,
// which a scenario's prior events fill through a typed evolve.

class Opened extends DomainEvent.Class<Opened>()("Opened", { account: Schema.String }) {}
class Deposited extends DomainEvent.Class<Deposited>()("Deposited", { account: Schema.String, amount: Schema.Int }) {}
class Withdrawn extends DomainEvent.Class<Withdrawn>()("Withdrawn", { account: Schema.String, amount: Schema.Int }) {}

class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  account: Schema.String,
  balance: Schema.Int
}) {}

class Withdraw extends Command.Class<Withdraw>()("Withdraw", {
  payload: { account: Schema.String, amount: Schema.Int },
  success: Schema.Int,
  failure: InsufficientFunds
}) {}

class Balances extends Context.Tag("Balances")<Balances, Ref.Ref<ReadonlyMap<string, number>>>() {}

const bus = CommandBus.make([Withdraw], {
  Withdraw: (command) =>
    Effect.gen(function*() {
      const balances = yield* Balances
      const balance = (yield* Ref.get(balances)).get(command.account) ?? 0
      if (balance < command.amount) return yield* Effect.fail(new InsufficientFunds({ ...command, balance }))
      yield* Ref.update(balances, (all) => new Map(all).set(command.account, balance - command.amount))
      return Handler.result(balance - command.amount, [
        DomainEvent.draft(
          { aggregateType: "Account", aggregateId: command.account, aggregateVersion: 1 },
          new Withdrawn({ account: command.account, amount: command.amount })
        )
      ])
    })
})

const world = Layer.merge(InMemory.layer, Layer.effect(Balances, Ref.make<ReadonlyMap<string, number>>(new Map())))

describe("Specification", () => {
  describe("evolve", () => {
    it.effect("applies each given event, as the event type its parameter names, in order", () =>
      Effect.gen(function*() {
        const seen: Array<string> = []
        const spec = Specification.make({
          bus,
          layer: world,
          // no narrowing by hand: the tag tells the two events apart
          evolve: (event: Opened | Deposited) =>
            Effect.flatMap(Balances, (balances) => {
              seen.push(event._tag)
              switch (event._tag) {
                case "Opened":
                  return Ref.update(balances, (all) => new Map(all).set(event.account, 0))
                case "Deposited":
                  return Ref.update(balances, (all) =>
                    new Map(all).set(event.account, all.get(event.account)! + event.amount))
              }
            })
        })
        yield* spec.given(new Opened({ account: "a-1" }), new Deposited({ account: "a-1", amount: 10 }))
          .when(new Withdraw({ account: "a-1", amount: 4 }))
          .thenSucceeds(6, new Withdrawn({ account: "a-1", amount: 4 }))
        assert.deepStrictEqual(seen, ["Opened", "Deposited"])
        yield* spec.given(new Opened({ account: "a-1" }), new Deposited({ account: "a-1", amount: 3 }))
          .when(new Withdraw({ account: "a-1", amount: 4 }))
          .thenFails(new InsufficientFunds({ account: "a-1", balance: 3 }))
      }))
  })

  describe("then", () => {
    class Notified extends DomainEvent.Class<Notified>()("Notified", { account: Schema.String }) {}
    class Notify extends Command.Class<Notify>()("Notify", {
      payload: { account: Schema.String },
      success: Schema.Void,
      failure: Schema.Never
    }) {}
    class Close extends Command.Class<Close>()("Close", {
      payload: { account: Schema.String, causedBy: Schema.Boolean },
      success: Schema.Void,
      failure: Schema.Never
    }) {}
    class Closed extends DomainEvent.Class<Closed>()("Closed", { account: Schema.String }) {}
    const notified = (command: Notify) =>
      Effect.succeed(Handler.result(undefined, [
        DomainEvent.draft(
          { aggregateType: "Notice", aggregateId: command.account, aggregateVersion: 1 },
          new Notified({ account: command.account })
        )
      ]))
    const notifying = CommandBus.make([Notify], { Notify: notified })
    // A handler that dispatches a command of its own, in its transaction.
    const closing = CommandBus.make([Notify, Close], {
      Notify: notified,
      Close: (command) =>
        Effect.gen(function*() {
          const notify = new Notify({
            account: command.account,
            ...(command.causedBy ? Command.causedBy(command) : {})
          })
          yield* Effect.orDie(notifying.dispatch(notify))
          return Handler.result(undefined, [
            DomainEvent.draft(
              { aggregateType: "Account", aggregateId: command.account, aggregateVersion: 1 },
              new Closed({ account: command.account })
            )
          ])
        })
    })
    const spec = Specification.make({ bus: closing, layer: InMemory.layer })

    it.effect("takes the events of a command the handler dispatched, caused by the command", () =>
      Effect.gen(function*() {
        yield* spec.when(new Close({ account: "a-1", causedBy: true }))
          .then(new Notified({ account: "a-1" }), new Closed({ account: "a-1" }))
        // one dispatched without the command's correlation is not
        const message = yield* Effect.map(
          Effect.flip(
            spec.when(new Close({ account: "a-1", causedBy: false }))
              .then(new Notified({ account: "a-1" }), new Closed({ account: "a-1" }))
          ),
          (error) => error.message
        )
        assert.include(message, "event Notified carries correlation id")
      }))
  })

  describe("thenFails", () => {
    class Unreachable extends Schema.TaggedError<Unreachable>()("Unreachable", { cause: Schema.Defect }) {}
    class Sync extends Command.Class<Sync>()("Sync", { payload: {}, success: Schema.Void, failure: Unreachable }) {}
    const syncing = CommandBus.make([Sync], {
      Sync: () => Effect.fail(new Unreachable({ cause: new Error("disk full") }))
    })
    const spec = Specification.make({ bus: syncing, layer: InMemory.layer })

    it.effect("tells failures apart by an Error they hold, and shows it", () =>
      Effect.gen(function*() {
        yield* spec.when(new Sync()).thenFails(new Unreachable({ cause: new Error("disk full") }))
        const error = yield* Effect.flip(
          spec.when(new Sync()).thenFails(new Unreachable({ cause: new Error("network down") }))
        )
        assert.include(error.message, "network down")
        assert.include(error.message, "but got Unreachable")
        assert.include(error.message, "disk full")
      }))
  })
})
