/**
 * A decision whose state does not encode (InvalidProcess, a dead
 * letter) must have no effect: its commands not sent, its deadlines not set.
 */
import { assert, describe, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import { CommandScheduler, DomainEvent, ProcessManager, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { ExpirePayment, makeBus, OrderPlaced, PaymentReceived, TakePayment } from "./support/Checkout.js"

const stores = Layer.mergeAll(
  InMemory.layer,
  Reaction.layerCheckpointsMemory,
  Reaction.layerDeadLettersMemory,
  CommandScheduler.layerMemory,
  ProcessManager.layerMemory
)

describe("ProcessManager: a state that does not encode", () => {
  it.effect("fails the event with InvalidProcess, and nothing was sent or scheduled", () =>
    Effect.gen(function*() {
      const ran: Array<string> = []
      const manager = ProcessManager.make({
        name: "ratio",
        bus: makeBus(ran),
        state: Schema.Struct({ ratio: Schema.Number }),
        initialState: { ratio: 1 },
        events: [OrderPlaced, PaymentReceived],
        key: (event) => event.orderId
      }).on({
        // amount 0: a ratio of NaN, which JSON does not hold.
        OrderPlaced: (state, event) => ({
          state: { ratio: state.ratio / event.amount * 0 },
          send: [new TakePayment({ orderId: event.orderId, amount: event.amount })],
          schedule: [{ name: "expire", after: "1 hour", command: new ExpirePayment({ orderId: event.orderId }) }]
        }),
        PaymentReceived: (state) => ({ state })
      })
      const [envelope] = yield* DomainEvent.stamp(
        { commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() },
        [DomainEvent.draft(
          { aggregateType: "Order", aggregateId: "o-1", aggregateVersion: 1 },
          new OrderPlaced({ orderId: "o-1", amount: 0 })
        )]
      )
      const exit = yield* Effect.exit(manager.reactions[0]!.handle(envelope!))
      assert.isTrue(
        Exit.isFailure(exit) && Exit.causeOption(exit).pipe(
          Option.exists((cause) => cause._tag === "Fail" && cause.error instanceof ProcessManager.InvalidProcess)
        )
      )
      assert.deepStrictEqual(yield* manager.process("o-1"), Option.none())
      // A dead letter, not applied: nothing of its decision may have happened.
      assert.deepStrictEqual(ran, [])
      const pending = yield* Effect.flatMap(CommandScheduler.ScheduledCommands, (store) =>
        store.list({ state: "pending" }))
      assert.deepStrictEqual(
        pending.map((deadline) =>
          deadline.key
        ),
        []
      )
    }).pipe(Effect.provide(stores)))
})
