/**
 * Pruning finished processes, in memory, on the test clock: only done ones
 * past the retention (to the millisecond), never one under way or held by a
 * run, in batches; one pruned while an event of another runs; what an event
 * of a pruned process does later, with `startedBy` and without; a store
 * without `prune`; the background pruner.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import { ProcessManager } from "../src/index.js"
import {
  CheckoutState,
  envelopeOf,
  failedWith,
  makeCheckoutOnBus,
  memoryStores as stores,
  OrderPlaced,
  paid,
  PaymentReceived,
  PaymentTimedOut,
  pruningOnClaim,
  reactionOf,
  started
} from "./support/Checkout.js"

const finished = (manager: ProcessManager.Any, orderId: string) =>
  Effect.zipRight(started(manager, orderId), paid(manager, orderId))

const exists = (manager: ProcessManager.Any, key: string) => Effect.map(manager.process(key), Option.isSome)

/** The store, its `prune` calls' results recorded in `batches`. */
const counting = (batches: Array<number>) =>
  Layer.effect(
    ProcessManager.Processes,
    Effect.map(ProcessManager.Processes, (inner): ProcessManager.ProcessStore => ({
      ...inner,
      prune: (manager, before, limit) =>
        Effect.tap(inner.prune!(manager, before, limit), (pruned) => Effect.sync(() => batches.push(pruned)))
    }))
  )

describe("ProcessManager.prune", () => {
  it.effect("prunes done processes past the retention, to the millisecond, and keeps the others", () =>
    Effect.gen(function*() {
      const { checkout } = makeCheckoutOnBus()
      yield* finished(checkout, "a")
      yield* started(checkout, "b")
      yield* TestClock.adjust("1 hour")
      yield* finished(checkout, "c")

      // "a" ended an hour ago exactly: not older than an hour.
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 1)
      assert.deepStrictEqual(
        [yield* exists(checkout, "a"), yield* exists(checkout, "b"), yield* exists(checkout, "c")],
        [false, true, true]
      )

      // Later, "c" too; "b", under way, is kept however old.
      yield* TestClock.adjust("2 hours")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 1)
      yield* TestClock.adjust("365 days")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 0)
      assert.deepStrictEqual([yield* exists(checkout, "b"), yield* exists(checkout, "c")], [true, false])
    }).pipe(Effect.provide(stores)))

  it.effect("goes in batches of batchSize until one comes back short", () => {
    const batches: Array<number> = []
    return Effect.gen(function*() {
      const { checkout } = makeCheckoutOnBus()
      for (const key of ["a", "b", "c", "d", "e"]) yield* finished(checkout, key)
      yield* TestClock.adjust("2 hours")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour", batchSize: 2 }), 5)
      assert.deepStrictEqual(batches, [2, 2, 1])

      batches.length = 0
      for (const key of ["f", "g", "h", "i"]) yield* finished(checkout, key)
      yield* TestClock.adjust("2 hours")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour", batchSize: 2 }), 4)
      assert.deepStrictEqual(batches, [2, 2, 0])
    }).pipe(Effect.provide(counting(batches).pipe(Layer.provideMerge(stores))))
  })

  it.effect("keeps a process a run holds, and the processes of other managers", () =>
    Effect.gen(function*() {
      const store = yield* ProcessManager.Processes
      const done = { state: { status: "shipped", amount: 1 }, done: true, version: 2, deadlines: [] }
      assert.isTrue(yield* store.save("checkout", "held", { ...done, applying: "event-1" }, 0))
      assert.isTrue(yield* store.save("other", "o", done, 0, undefined, "event-2"))
      yield* TestClock.adjust("2 hours")
      const { checkout } = makeCheckoutOnBus()
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 0)
      assert.isTrue(Option.isSome(yield* store.load("checkout", "held")))
      assert.isTrue(Option.getOrThrow(yield* store.load("other", "o", "event-2")).applied)
    }).pipe(Effect.provide(stores)))

  it.effect("prunes a process while an event of another runs, which goes on as if nothing happened", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      yield* finished(checkout, "a")
      yield* started(checkout, "b")
      yield* TestClock.adjust("2 hours")
      // Pruned once "b"'s payment has claimed its process, before its commands go.
      const prunedMeanwhile = yield* pruningOnClaim(paid(checkout, "b"), checkout, { olderThan: "1 hour" })
      assert.strictEqual(prunedMeanwhile, 1)
      assert.isFalse(yield* exists(checkout, "a"))
      const b = Option.getOrThrow(yield* checkout.process("b"))
      assert.deepStrictEqual([b.state.status, b.done, b.version], ["shipped", true, 2])
      assert.deepStrictEqual(ran.filter((line) => line.endsWith(" b")), ["TakePayment b", "ShipOrder b"])
    }).pipe(Effect.provide(stores)))

  it.effect("with startedBy, a later event of a pruned process is ignored; its starting event starts it again", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const placed = yield* envelopeOf(new OrderPlaced({ orderId: "a", amount: 5 }))
      yield* reactionOf(checkout, "OrderPlaced").handle(placed)
      yield* paid(checkout, "a")
      yield* TestClock.adjust("2 hours")
      assert.strictEqual(yield* checkout.prune({ olderThan: "1 hour" }), 1)

      yield* paid(checkout, "a")
      yield* reactionOf(checkout, "PaymentTimedOut").handle(yield* envelopeOf(new PaymentTimedOut({ orderId: "a" })))
      assert.isFalse(yield* exists(checkout, "a"))
      assert.deepStrictEqual(ran, ["TakePayment a", "ShipOrder a"])

      // Its first event again (a replay): the process starts from the start,
      // and its command, under the same idempotency key, is a replay.
      yield* reactionOf(checkout, "OrderPlaced").handle(placed)
      const again = Option.getOrThrow(yield* checkout.process("a"))
      assert.deepStrictEqual([again.state.status, again.done, again.version], ["awaiting-payment", false, 1])
      assert.deepStrictEqual(ran, ["TakePayment a", "ShipOrder a"])
    }).pipe(Effect.provide(stores)))

  it.effect("without startedBy, any later event of a pruned process starts it again", () =>
    Effect.gen(function*() {
      const { bus } = makeCheckoutOnBus()
      const tally = ProcessManager.make({
        name: "tally",
        bus,
        state: CheckoutState,
        initialState: { status: "new", amount: 0 },
        events: [OrderPlaced, PaymentReceived],
        key: (event) => event.orderId
      }).on({
        OrderPlaced: (state, event) => ({ state: { ...state, amount: state.amount + event.amount } }),
        PaymentReceived: (state) => ({ state: { ...state, status: "shipped" }, done: true })
      })
      yield* finished(tally, "a")
      yield* TestClock.adjust("2 hours")
      assert.strictEqual(yield* tally.prune({ olderThan: "1 hour" }), 1)
      yield* paid(tally, "a")
      const again = Option.getOrThrow(yield* tally.process("a"))
      assert.deepStrictEqual([again.state, again.done, again.version], [{ status: "shipped", amount: 0 }, true, 1])
    }).pipe(Effect.provide(stores)))

  it.effect("fails with PruneUnsupported on a store without prune, and pruneEvery starts nothing", () =>
    Effect.gen(function*() {
      const { checkout } = makeCheckoutOnBus()
      const inner = yield* ProcessManager.Processes
      const withoutPrune: ProcessManager.ProcessStore = { load: inner.load, save: inner.save }
      const exit = yield* Effect.exit(
        Effect.provideService(checkout.prune({ olderThan: "1 day" }), ProcessManager.Processes, withoutPrune)
      )
      assert.isTrue(failedWith(exit, ProcessManager.PruneUnsupported))
      const every = yield* Effect.exit(Effect.scoped(
        Effect.provideService(
          ProcessManager.pruneEvery(checkout, { olderThan: "1 day", interval: "1 hour" }),
          ProcessManager.Processes,
          withoutPrune
        )
      ))
      assert.isTrue(failedWith(every, ProcessManager.PruneUnsupported))
    }).pipe(Effect.provide(stores)))

  it.effect("refuses a batch size that is not a positive whole number", () =>
    Effect.gen(function*() {
      const { checkout } = makeCheckoutOnBus()
      for (const batchSize of [0, -1, 1.5, Number.NaN]) {
        const exit = yield* Effect.exit(checkout.prune({ olderThan: "1 day", batchSize }))
        assert.isTrue(Exit.isFailure(exit) && !failedWith(exit, ProcessManager.PruneUnsupported), String(batchSize))
      }
    }).pipe(Effect.provide(stores)))

  it.scoped("pruneEvery prunes at its interval for as long as its scope lives", () =>
    Effect.gen(function*() {
      const { checkout } = makeCheckoutOnBus()
      yield* finished(checkout, "a")
      yield* ProcessManager.pruneEvery(checkout, { olderThan: "1 hour", interval: "10 minutes" })
      yield* TestClock.adjust("50 minutes")
      yield* finished(checkout, "b")
      yield* TestClock.adjust("20 minutes")
      yield* Effect.repeatN(Effect.yieldNow(), 50)
      assert.deepStrictEqual([yield* exists(checkout, "a"), yield* exists(checkout, "b")], [false, true])
      yield* TestClock.adjust("1 hour")
      yield* Effect.repeatN(Effect.yieldNow(), 50)
      assert.isFalse(yield* exists(checkout, "b"))
    }).pipe(Effect.provide(stores), Effect.provide(Logger.minimumLogLevel(LogLevel.None))))
})
