/**
 * Process managers in memory: two runs of different events of one process
 * at once (a redrive beside the follower, leases that overlapped): the
 * loser's commands and deadlines, decided on a state that is no longer the
 * process's, never take effect.
 */
import { assert, describe, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { randomUUID } from "node:crypto"
import { CommandScheduler, DomainEvent, ProcessManager, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import {
  CheckoutState,
  ExpirePayment,
  makeBus,
  makeCheckout,
  OrderPlaced,
  PaymentReceived,
  PaymentTimedOut
} from "./support/Checkout.js"

const stores = Layer.mergeAll(
  InMemory.layer,
  Reaction.layerCheckpointsMemory,
  Reaction.layerDeadLettersMemory,
  CommandScheduler.layerMemory,
  ProcessManager.layerMemory
)

const envelopeOf = (event: DomainEvent.Any & { readonly orderId: string }) =>
  Effect.map(
    DomainEvent.stamp({ commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() }, [
      DomainEvent.draft({ aggregateType: "Order", aggregateId: event.orderId, aggregateVersion: 1 }, event)
    ]),
    (stamped) => stamped[0]!
  )

const pendingDeadlines = Effect.flatMap(CommandScheduler.ScheduledCommands, (store) => store.list({ state: "pending" }))

// Runs `first`, with `second` run whole between `first`'s read of the process and the rest of it.
const interleaved = <A, E, R, A2, E2, R2>(first: Effect.Effect<A, E, R>, second: Effect.Effect<A2, E2, R2>) =>
  Effect.gen(function*() {
    const context = yield* Effect.context<R2>()
    const inner = yield* ProcessManager.Processes
    let raced = false
    const processes = Layer.succeed(ProcessManager.Processes, {
      ...inner,
      load: (manager, key) =>
        Effect.tap(inner.load(manager, key), () => {
          if (raced) return Effect.void
          raced = true
          return Effect.provide(Effect.orDie(second), context)
        })
    })
    // The first run retries its conflict, as `follow` would.
    return yield* Effect.exit(Effect.retry(first, { times: 3 }).pipe(Effect.provide(processes)))
  })

describe("ProcessManager: runs of two events of one process at once", () => {
  it.effect("a payment and a timeout at once: the order is shipped or cancelled, not both", () =>
    Effect.gen(function*() {
      const ran: Array<string> = []
      const checkout = makeCheckout(makeBus(ran))
      const on = (type: string) => checkout.reactions.find((reaction) => reaction.eventType === type)!
      yield* on("OrderPlaced").handle(yield* envelopeOf(new OrderPlaced({ orderId: "o-1", amount: 5 })))
      const paid = yield* envelopeOf(new PaymentReceived({ orderId: "o-1" }))
      const timedOut = yield* envelopeOf(new PaymentTimedOut({ orderId: "o-1" }))
      const exit = yield* interleaved(on("PaymentReceived").handle(paid), on("PaymentTimedOut").handle(timedOut))
      assert.isTrue(Exit.isSuccess(exit))
      const process = yield* checkout.process("o-1")
      assert.deepStrictEqual(process._tag === "Some" && process.value.state.status, "cancelled")
      // The saved decision was the timeout's: the payment's ShipOrder, decided on
      // a state that never became the process's, must not have run.
      assert.deepStrictEqual(ran.filter((line) => !line.startsWith("TakePayment")), ["CancelOrder o-1"])
    }).pipe(Effect.provide(stores)))

  it.effect("a deadline set by the run that lost to a run that ended the process is not left pending", () =>
    Effect.gen(function*() {
      const ran: Array<string> = []
      const bus = makeBus(ran)
      const manager = ProcessManager.make({
        name: "reminders",
        bus,
        state: CheckoutState,
        initialState: { status: "new", amount: 0 },
        events: [OrderPlaced, PaymentReceived, PaymentTimedOut],
        key: (event) => event.orderId,
        startedBy: ["OrderPlaced"]
      }).on({
        OrderPlaced: (state) => ({ state: { ...state, status: "awaiting-payment" } }),
        // A reminder, in an hour.
        PaymentTimedOut: (state, event) => ({
          state,
          schedule: [{ name: "remind", after: "1 hour", command: new ExpirePayment({ orderId: event.orderId }) }]
        }),
        PaymentReceived: (state) => ({ state: { ...state, status: "shipped" }, done: true })
      })
      const on = (type: string) => manager.reactions.find((reaction) => reaction.eventType === type)!
      yield* on("OrderPlaced").handle(yield* envelopeOf(new OrderPlaced({ orderId: "o-2", amount: 5 })))
      const reminded = yield* envelopeOf(new PaymentTimedOut({ orderId: "o-2" }))
      const paid = yield* envelopeOf(new PaymentReceived({ orderId: "o-2" }))
      const exit = yield* interleaved(on("PaymentTimedOut").handle(reminded), on("PaymentReceived").handle(paid))
      assert.isTrue(Exit.isSuccess(exit))
      const process = yield* manager.process("o-2")
      assert.deepStrictEqual(process._tag === "Some" && [process.value.done, process.value.deadlines], [true, []])
      // Done: no deadline of the process may be pending.
      assert.deepStrictEqual((yield* pendingDeadlines).map((deadline) => deadline.key), [])
    }).pipe(Effect.provide(stores)))
})
