/**
 * Process managers' claims on a real database (PGlite, or the server in
 * `DATABASE_URL`): a run of an event claims its process before it sends
 * anything, so that of two runs of different events of one process at once
 * (a redrive beside the follower, leases that overlapped) the one that
 * loses has sent nothing and decides again on the winner's state; a first
 * event that fails leaves no started process behind.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { CommandScheduler, ProcessManager } from "../../src/index.js"
import { SqlProcesses, SqlScheduledCommands, SqlStores } from "../../src/sql/index.js"
import {
  envelopeOf,
  makeBus,
  makeCheckoutOnBus,
  makeReminders,
  OrderPlaced,
  PaymentReceived,
  PaymentTimedOut,
  pendingDeadlines,
  placedThenAtOnce,
  reactionOf
} from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"

const Shared = Layer.mergeAll(SqlStores.layer(), SqlScheduledCommands.layer, SqlProcesses.layer).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
)

const pendingKeys = Effect.map(pendingDeadlines, (pending) => pending.map((command) => command.key))

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `ProcessManager claims (${TestDatabase.kind})`,
  (it) => {
    it.effect("a payment and a timeout at once: the order is shipped or cancelled, not both", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { checkout, ran } = makeCheckoutOnBus()
        const exit = yield* placedThenAtOnce(
          checkout,
          new PaymentReceived({ orderId: "o-1" }),
          new PaymentTimedOut({ orderId: "o-1" })
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        const process = Option.getOrThrow(yield* checkout.process("o-1"))
        expect([process.state.status, process.done, process.version]).toEqual(["cancelled", true, 2])
        expect(ran).toEqual(["TakePayment o-1", "CancelOrder o-1"])
        expect(yield* pendingKeys).toEqual([])
      }))

    it.effect("a deadline set by a run beside one that ends the process is cancelled with the others", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const manager = makeReminders(makeBus([]))
        const exit = yield* placedThenAtOnce(
          manager,
          new PaymentTimedOut({ orderId: "o-2" }),
          new PaymentReceived({ orderId: "o-2" })
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        const process = Option.getOrThrow(yield* manager.process("o-2"))
        expect([process.done, process.deadlines]).toEqual([true, []])
        expect(yield* pendingKeys).toEqual([])
      }))

    it.effect("a first event that fails gives its claim up: no process, and the next one starts it", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { checkout, ran } = makeCheckoutOnBus()
        const onPlaced = reactionOf(checkout, "OrderPlaced")
        const store = yield* ProcessManager.Processes
        const placed = yield* envelopeOf(new OrderPlaced({ orderId: "o-3", amount: 5 }))
        // Its deadline cannot be scheduled: the scheduler's store is down.
        const down = yield* Effect.exit(
          onPlaced.handle(placed).pipe(
            Effect.provideService(CommandScheduler.ScheduledCommands, {
              ...(yield* CommandScheduler.ScheduledCommands),
              addKeyed: () => Effect.dieMessage("down")
            })
          )
        )
        expect(Exit.isFailure(down)).toBe(true)
        const claim = Option.getOrThrow(yield* store.load("checkout", "o-3"))
        expect([claim.version, claim.applying]).toEqual([0, undefined])
        expect(yield* checkout.process("o-3")).toEqual(Option.none())
        // An event that does not start a process is still ignored.
        yield* reactionOf(checkout, "PaymentReceived").handle(
          yield* envelopeOf(new PaymentReceived({ orderId: "o-3" }))
        )
        expect(yield* checkout.process("o-3")).toEqual(Option.none())
        yield* onPlaced.handle(placed)
        const started = Option.getOrThrow(yield* checkout.process("o-3"))
        expect([started.state.status, started.version, started.deadlines]).toEqual(["awaiting-payment", 1, ["payment"]])
        expect(ran).toEqual(["TakePayment o-3"])
      }))

    it.effect("the store writes on the version and the claim read only", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* ProcessManager.Processes
        const at = (version: number, applying?: string) => ({
          state: { v: version },
          done: false,
          version,
          deadlines: [],
          ...(applying === undefined ? {} : { applying })
        })
        expect([
          yield* store.save("m", "k", at(0, "e1"), 0),
          yield* store.save("m", "k", at(0, "e2"), 0),
          yield* store.save("m", "k", at(1), 0),
          yield* store.save("m", "k", at(1), 0, "e2"),
          yield* store.save("m", "k", at(1), 0, "e1"),
          yield* store.save("m", "k", at(1, "e2"), 1, "e1"),
          yield* store.save("m", "k", at(1, "e2"), 1)
        ]).toEqual([true, false, false, false, true, false, true])
        const stored = Option.getOrThrow(yield* store.load("m", "k"))
        expect([stored.version, stored.applying]).toEqual([1, "e2"])
      }))
  }
)
