/**
 * Process managers in memory, on the test clock: a checkout that pays for
 * an order within a deadline, run by `Reaction.follow`, with its deadline
 * run by the `CommandScheduler`; redelivery and crashes at each point send
 * nothing twice; two runs of one event do not both apply it.
 */
import { assert, describe, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as TestClock from "effect/TestClock"
import { CommandError, CommandScheduler, Outbox, ProcessManager, Reaction } from "../src/index.js"
import {
  ConfirmPayment,
  envelopeOf,
  failedWith,
  makeCheckoutOnBus,
  memoryStores as stores,
  OrderPlaced,
  PaymentReceived,
  pendingDeadlines,
  PlaceOrder,
  reactionOf,
  withRunAfterFirstRead
} from "./support/Checkout.js"

/** Yields until `check` holds, at most 2000 times: what the fibers run on the test clock settles meanwhile. */
const eventually = (what: string, check: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 2000; i++) {
      if (check()) return
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage(`not reached: ${what}`)
  })

const quiet = Logger.minimumLogLevel(LogLevel.None)

// A follower wakes on each event published: one that also polls every
// second would run thousands of steps while the test clock jumps half an hour.
const idle = { pollInterval: "1 hour", lease: "3 hours" } as const

// The checkout followed, its deadlines run by the scheduler; an order placed, and its payment sent.
const placedAndFollowed = (orderId: string, amount: number) =>
  Effect.gen(function*() {
    const checkoutOnBus = makeCheckoutOnBus()
    const { bus, checkout, ran } = checkoutOnBus
    yield* Reaction.follow("checkout", checkout.reactions, idle)
    yield* CommandScheduler.forBus(bus).start({ pollInterval: "1 minute" })
    yield* bus.dispatch(new PlaceOrder({ orderId, amount }))
    yield* eventually("the payment", () => ran.includes(`TakePayment ${orderId}`))
    return checkoutOnBus
  })

describe("ProcessManager", () => {
  it.scoped("sends a placed order's payment and sets its deadline; the payment cancels it, ships, and ends", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = yield* placedAndFollowed("o-1", 5)
      const [placed] = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 1 }))
      const [deadline, ...others] = yield* pendingDeadlines
      assert.deepStrictEqual(others, [])
      assert.deepStrictEqual([deadline!.commandType, deadline!.key], [
        "ExpirePayment",
        checkout.deadlineKey("o-1", "payment")
      ])
      // Due 30 minutes after the event occurred, whenever it is handled.
      assert.strictEqual(
        DateTime.toEpochMillis(deadline!.dueAt),
        DateTime.toEpochMillis(placed!.event.occurredAt) + Duration.toMillis("30 minutes")
      )
      // The deadline carries the event's correlation, as the commands sent do.
      assert.strictEqual((deadline!.command as { correlationId: string }).correlationId, placed!.event.correlationId)
      const waiting = Option.getOrThrow(yield* checkout.process("o-1"))
      assert.deepStrictEqual(
        [waiting.state, waiting.done, waiting.version, waiting.deadlines],
        [{ status: "awaiting-payment", amount: 5 }, false, 1, ["payment"]]
      )

      yield* bus.dispatch(new ConfirmPayment({ orderId: "o-1" }))
      yield* eventually("the shipment", () => ran.includes("ShipOrder o-1"))
      const shipped = Option.getOrThrow(
        yield* Effect.repeat(checkout.process("o-1"), {
          until: (process) => Option.exists(process, (p) => p.done),
          times: 2000
        })
      )
      assert.deepStrictEqual(yield* pendingDeadlines, [])
      assert.deepStrictEqual([shipped.state, shipped.done, shipped.version, shipped.deadlines], [
        { status: "shipped", amount: 5 },
        true,
        2,
        []
      ])

      // The deadline's time passes: nothing more runs.
      yield* TestClock.adjust("31 minutes")
      yield* Effect.repeatN(Effect.yieldNow(), 200)
      assert.deepStrictEqual(ran, ["PlaceOrder o-1", "TakePayment o-1", "ConfirmPayment o-1", "ShipOrder o-1"])
    }).pipe(Effect.provide(stores)))

  it.scoped("the deadline fires when no payment came: the order is cancelled and the process ends", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = yield* placedAndFollowed("o-2", 7)

      yield* TestClock.adjust("29 minutes")
      yield* Effect.repeatN(Effect.yieldNow(), 200)
      assert.deepStrictEqual(ran, ["PlaceOrder o-2", "TakePayment o-2"])

      yield* TestClock.adjust("1 minute")
      yield* eventually("the cancellation", () => ran.includes("CancelOrder o-2"))
      assert.deepStrictEqual(ran, ["PlaceOrder o-2", "TakePayment o-2", "ExpirePayment o-2", "CancelOrder o-2"])
      const cancelled = yield* Effect.repeat(checkout.process("o-2"), {
        until: (process) => Option.isSome(process) && process.value.done,
        times: 1000
      })
      assert.deepStrictEqual(
        Option.map(cancelled, (process) => process.state),
        Option.some({
          status: "cancelled" as const,
          amount: 7
        })
      )
      // A payment after the end is ignored.
      yield* bus.dispatch(new ConfirmPayment({ orderId: "o-2" }))
      yield* Effect.repeatN(Effect.yieldNow(), 200)
      assert.deepStrictEqual(ran.slice(4), ["ConfirmPayment o-2"])
      assert.strictEqual(Option.getOrThrow(yield* checkout.process("o-2")).version, 2)
    }).pipe(Effect.provide(stores)))

  it.effect("a redelivered event sends nothing twice and sets its deadline once", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const placed = yield* envelopeOf(new OrderPlaced({ orderId: "o-3", amount: 9 }))
      const onPlaced = reactionOf(checkout, "OrderPlaced")
      yield* onPlaced.handle(placed)
      const [first] = yield* pendingDeadlines
      yield* onPlaced.handle(placed)
      yield* onPlaced.handle(placed)
      assert.deepStrictEqual(ran, ["TakePayment o-3"])
      const [again, ...others] = yield* pendingDeadlines
      assert.deepStrictEqual([again!.id, others], [first!.id, []])
      assert.strictEqual(Option.getOrThrow(yield* checkout.process("o-3")).version, 1)
    }).pipe(Effect.provide(stores)))

  it.scoped("a replay of the log through a restarted follower sends nothing twice", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = makeCheckoutOnBus()
      const followUntil = (position: number) =>
        Effect.scoped(Effect.gen(function*() {
          yield* Reaction.follow("checkout", checkout.reactions, idle)
          const checkpoints = yield* Reaction.Checkpoints
          yield* Effect.repeat(checkpoints.load("checkout"), { until: (at) => at >= position, times: 2000 })
        }))
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-4", amount: 1 }))
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-5", amount: 2 }))
      yield* bus.dispatch(new ConfirmPayment({ orderId: "o-4" }))
      yield* followUntil(3)
      const before = [...ran]
      assert.deepStrictEqual(before.filter((line) => !line.startsWith("PlaceOrder") && !line.startsWith("Confirm")), [
        "TakePayment o-4",
        "TakePayment o-5",
        "ShipOrder o-4"
      ])
      yield* Reaction.replay("checkout")
      yield* followUntil(3)
      assert.deepStrictEqual(ran, before)
      assert.strictEqual((yield* pendingDeadlines).length, 1)
    }).pipe(Effect.provide(stores)))

  it.scoped("a crash between the state's save and the checkpoint's: the event runs again and sends nothing", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = makeCheckoutOnBus()
      let saves = 0
      let loads = 0
      // The first checkpoint save after the process saved fails, as a crash
      // before it would leave it.
      const checkpoints = Layer.effect(
        Reaction.Checkpoints,
        Effect.map(Reaction.Checkpoints, (inner) => ({
          ...inner,
          save: (name: string, position: number) =>
            ++saves === 1
              ? Effect.fail(new CommandError.StoreUnavailable({ store: "checkpoints", reason: "crashed" }))
              : inner.save(name, position)
        }))
      ).pipe(Layer.provide(Reaction.layerCheckpointsMemory))
      const processes = Layer.effect(
        ProcessManager.Processes,
        Effect.map(ProcessManager.Processes, (inner) => ({
          ...inner,
          load: (manager: string, key: string, eventId?: string) =>
            Effect.zipRight(Effect.sync(() => loads++), inner.load(manager, key, eventId))
        }))
      ).pipe(Layer.provide(ProcessManager.layerMemory))
      yield* Effect.gen(function*() {
        yield* Reaction.follow("checkout", checkout.reactions, { pollInterval: "1 second" })
        yield* bus.dispatch(new PlaceOrder({ orderId: "o-6", amount: 3 }))
        yield* eventually("the payment", () => ran.includes("TakePayment o-6"))
        yield* eventually("the failed checkpoint", () => saves === 1)
        // The follower reads again at its next poll, from where it was.
        yield* TestClock.adjust("1 second")
        const checkpoints = yield* Reaction.Checkpoints
        yield* Effect.repeat(checkpoints.load("checkout"), { until: (at) => at === 1, times: 2000 })
        assert.strictEqual(loads, 2)
        assert.deepStrictEqual(ran, ["PlaceOrder o-6", "TakePayment o-6"])
        assert.strictEqual((yield* pendingDeadlines).length, 1)
        assert.strictEqual(Option.getOrThrow(yield* checkout.process("o-6")).version, 1)
      }).pipe(
        Effect.provide(Layer.mergeAll(checkpoints, processes)),
        Effect.provide(quiet)
      )
    }).pipe(Effect.provide(stores)))

  it.scoped("a crash between the commands and the state's save: run again, the commands replay their outcome", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = makeCheckoutOnBus()
      // The saves of the state (not the claims that come before the commands).
      let saves = 0
      const processes = Layer.effect(
        ProcessManager.Processes,
        Effect.map(ProcessManager.Processes, (inner) => ({
          ...inner,
          save: (
            manager: string,
            key: string,
            process: ProcessManager.Stored,
            expected: number,
            claimed?: string | undefined
          ) =>
            process.applying === undefined && ++saves === 1
              ? Effect.fail(new CommandError.StoreUnavailable({ store: "processes", reason: "crashed" }))
              : inner.save(manager, key, process, expected, claimed)
        }))
      ).pipe(Layer.provide(ProcessManager.layerMemory))
      yield* Effect.gen(function*() {
        yield* Reaction.follow("checkout", checkout.reactions, { retry: Schedule.recurs(3) })
        yield* bus.dispatch(new PlaceOrder({ orderId: "o-7", amount: 4 }))
        yield* Effect.repeat(checkout.process("o-7"), { until: Option.isSome, times: 2000 })
        assert.strictEqual(saves, 2)
        assert.deepStrictEqual(ran, ["PlaceOrder o-7", "TakePayment o-7"])
        assert.strictEqual((yield* pendingDeadlines).length, 1)
        assert.strictEqual(Option.getOrThrow(yield* checkout.process("o-7")).version, 1)
      }).pipe(Effect.provide(processes), Effect.provide(quiet))
    }).pipe(Effect.provide(stores)))

  it.effect("of two runs of one event that read the same version, one saves; the other fails, retryable, then skips", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const placed = yield* envelopeOf(new OrderPlaced({ orderId: "o-8", amount: 6 }))
      const onPlaced = reactionOf(checkout, "OrderPlaced")
      // The other run, on the same store and bus, between this run's read and its save.
      const exit = yield* Effect.exit(withRunAfterFirstRead(onPlaced.handle(placed), onPlaced.handle(placed)))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ?
        Option.getOrUndefined(
          Exit.causeOption(exit).pipe(
            Option.flatMap((cause) => Option.fromNullable(cause._tag === "Fail" ? cause.error : undefined))
          )
        ) :
        undefined
      assert.instanceOf(error, ProcessManager.ProcessConflict)
      assert.isTrue(onPlaced.retryable!(error))
      yield* onPlaced.handle(placed)
      assert.deepStrictEqual(ran, ["TakePayment o-8"])
      assert.strictEqual(Option.getOrThrow(yield* checkout.process("o-8")).version, 1)
    }).pipe(Effect.provide(stores)))

  it.effect("ignores an event of a process not started, and one with no key", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      yield* reactionOf(checkout, "PaymentReceived").handle(yield* envelopeOf(new PaymentReceived({ orderId: "o-9" })))
      assert.deepStrictEqual([ran, yield* checkout.process("o-9")], [[], Option.none()])
    }).pipe(Effect.provide(stores)))

  it.effect("a stored state its schema no longer reads fails, not retried: a dead letter to redrive", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const store = yield* ProcessManager.Processes
      yield* store.save("checkout", "o-10", {
        state: { status: "lost", amount: 1 },
        done: false,
        version: 1,
        deadlines: []
      }, 0)
      const onPaid = reactionOf(checkout, "PaymentReceived")
      const exit = yield* Effect.exit(onPaid.handle(yield* envelopeOf(new PaymentReceived({ orderId: "o-10" }))))
      assert.isTrue(failedWith(exit, ProcessManager.StateUndecodable))
      assert.isFalse(onPaid.retryable!(new ProcessManager.StateUndecodable({ manager: "m", key: "k", reason: "r" })))
      assert.deepStrictEqual(ran, [])
      // The process's own reader says the same.
      assert.isTrue(Exit.isFailure(yield* Effect.exit(checkout.process("o-10"))))
    }).pipe(Effect.provide(stores)))

  it.scoped("an event that failed is a dead letter; redriven once the cause is fixed, it has its effect once", () =>
    Effect.gen(function*() {
      const { bus, checkout, ran } = makeCheckoutOnBus()
      const store = yield* ProcessManager.Processes
      // A state an earlier version wrote, which the schema does not read.
      const unreadable = { state: { status: "lost", amount: 1 }, done: false, version: 1, applied: [], deadlines: [] }
      yield* store.save("checkout", "o-11", unreadable, 0)
      yield* Reaction.follow("checkout", checkout.reactions, idle)
      yield* bus.dispatch(new ConfirmPayment({ orderId: "o-11" }))
      const letters = yield* Reaction.DeadLetters
      const [letter] = yield* Effect.repeat(letters.list("checkout"), {
        until: (found) => found.length > 0,
        times: 2000
      })
      assert.deepStrictEqual([letter!.reaction, letter!.attempts], ["checkout on PaymentReceived", 1])
      assert.match(letter!.reason, /StateUndecodable/)
      assert.deepStrictEqual(ran, ["ConfirmPayment o-11"])

      // Fixed by hand: the state as the schema reads it.
      yield* store.save("checkout", "o-11", {
        ...unreadable,
        state: { status: "awaiting-payment", amount: 1 },
        version: 2
      }, 1)
      assert.deepStrictEqual(yield* Reaction.redrive("checkout", checkout.reactions), {
        resolved: 1,
        failed: 0,
        unmatched: 0,
        held: 0
      })
      assert.deepStrictEqual(yield* Reaction.redrive("checkout", checkout.reactions), {
        resolved: 0,
        failed: 0,
        unmatched: 0,
        held: 0
      })
      assert.deepStrictEqual(ran, ["ConfirmPayment o-11", "ShipOrder o-11"])
      assert.deepStrictEqual(
        Option.map(yield* checkout.process("o-11"), (process) => [process.state.status, process.done, process.version]),
        Option.some(["shipped", true, 3])
      )
    }).pipe(Effect.provide(stores), Effect.provide(quiet)))

  it.effect("a key that is not 1 to 255 characters fails the event, not retried", () =>
    Effect.gen(function*() {
      const { checkout, ran } = makeCheckoutOnBus()
      const onPlaced = reactionOf(checkout, "OrderPlaced")
      const exit = yield* Effect.exit(onPlaced.handle(yield* envelopeOf(new OrderPlaced({ orderId: "", amount: 1 }))))
      assert.isTrue(failedWith(exit, ProcessManager.InvalidProcess))
      assert.isFalse(onPlaced.retryable!(new ProcessManager.InvalidProcess({ manager: "m", reason: "r" })))
      assert.deepStrictEqual(ran, [])
    }).pipe(Effect.provide(stores)))

  it.effect("the memory store saves on the version read only", () =>
    Effect.gen(function*() {
      const store = yield* ProcessManager.Processes
      const process = (version: number) => ({ state: { v: version }, done: false, version, applied: [], deadlines: [] })
      assert.deepStrictEqual([
        yield* store.save("m", "k", process(1), 0),
        yield* store.save("m", "k", process(1), 0),
        yield* store.save("m", "k", process(2), 1),
        yield* store.save("m", "k", process(2), 1),
        yield* store.save("other", "k", process(1), 0)
      ], [true, false, true, false, true])
      assert.deepStrictEqual(Option.map(yield* store.load("m", "k"), (stored) => stored.state), Option.some({ v: 2 }))
    }).pipe(Effect.provide(ProcessManager.layerMemory)))
})
