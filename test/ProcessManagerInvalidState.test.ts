/**
 * A decision whose state does not encode (InvalidProcess, a dead
 * letter) must have no effect: its commands not sent, its deadlines not set.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { ProcessManager } from "../src/index.js"
import {
  envelopeOf,
  ExpirePayment,
  failedWith,
  makeBus,
  memoryStores as stores,
  OrderPlaced,
  PaymentReceived,
  pendingDeadlines,
  TakePayment
} from "./support/Checkout.js"

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
      const envelope = yield* envelopeOf(new OrderPlaced({ orderId: "o-1", amount: 0 }))
      const exit = yield* Effect.exit(manager.reactions[0]!.handle(envelope))
      assert.isTrue(failedWith(exit, ProcessManager.InvalidProcess))
      assert.deepStrictEqual(yield* manager.process("o-1"), Option.none())
      // A dead letter, not applied: nothing of its decision may have happened.
      assert.deepStrictEqual(ran, [])
      assert.deepStrictEqual((yield* pendingDeadlines).map((deadline) => deadline.key), [])
    }).pipe(Effect.provide(stores)))
})
