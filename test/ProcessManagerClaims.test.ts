/**
 * Process managers in memory: two runs of different events of one process
 * at once (a redrive beside the follower, leases that overlapped): the
 * loser's commands and deadlines, decided on a state that is no longer the
 * process's, never take effect.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import {
  makeBus,
  makeCheckoutOnBus,
  makeReminders,
  memoryStores as stores,
  PaymentReceived,
  PaymentTimedOut,
  pendingDeadlines,
  placedThenAtOnce
} from "./support/Checkout.js"

describe("ProcessManager: runs of two events of one process at once", () => {
  it.effect("a payment and a timeout at once: the order is shipped or cancelled, not both", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const exit = yield* placedThenAtOnce(
        checkout,
        new PaymentReceived({ orderId: "o-1" }),
        new PaymentTimedOut({ orderId: "o-1" })
      )
      assert.isTrue(Exit.isSuccess(exit))
      const process = yield* checkout.process("o-1")
      assert.deepStrictEqual(process._tag === "Some" && process.value.state.status, "cancelled")
      // The saved decision was the timeout's: the payment's ShipOrder, decided on
      // a state that never became the process's, must not have run.
      assert.deepStrictEqual(ran.filter((line) => !line.startsWith("TakePayment")), ["CancelOrder o-1"])
    }).pipe(Effect.provide(stores)))

  it.effect("a deadline set by the run that lost to a run that ended the process is not left pending", () =>
    Effect.gen(function*() {
      // A payment timed out sets a reminder, in an hour; a payment ends the process.
      const manager = makeReminders(makeBus([]))
      const exit = yield* placedThenAtOnce(
        manager,
        new PaymentTimedOut({ orderId: "o-2" }),
        new PaymentReceived({ orderId: "o-2" })
      )
      assert.isTrue(Exit.isSuccess(exit))
      const process = yield* manager.process("o-2")
      assert.deepStrictEqual(process._tag === "Some" && [process.value.done, process.value.deadlines], [true, []])
      // Done: no deadline of the process may be pending.
      assert.deepStrictEqual((yield* pendingDeadlines).map((deadline) => deadline.key), [])
    }).pipe(Effect.provide(stores)))
})
