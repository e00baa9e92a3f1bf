/**
 * Process managers' claims on a real database (PGlite, or the server in
 * `DATABASE_URL`): a run of an event claims its process before it sends
 * anything, so that of two runs of different events of one process at once
 * (a redrive beside the follower, leases that overlapped) the one that
 * loses has sent nothing and decides again on the winner's state; a first
 * event that fails leaves no started process behind.
 */
import { expect, layer } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { randomUUID } from "node:crypto"
import { CommandScheduler, DomainEvent, ProcessManager } from "../../src/index.js"
import { SqlProcesses, SqlScheduledCommands, SqlStores } from "../../src/sql/index.js"
import {
  CheckoutState,
  ExpirePayment,
  makeBus,
  makeCheckout,
  OrderPlaced,
  PaymentReceived,
  PaymentTimedOut
} from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"

const Shared = Layer.mergeAll(SqlStores.layer(), SqlScheduledCommands.layer, SqlProcesses.layer).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
)

const envelopeOf = (event: DomainEvent.Any & { readonly orderId: string }) =>
  Effect.map(
    DomainEvent.stamp({ commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() }, [
      DomainEvent.draft({ aggregateType: "Order", aggregateId: event.orderId, aggregateVersion: 1 }, event)
    ]),
    (stamped) => stamped[0]!
  )

const pendingKeys = Effect.map(
  Effect.flatMap(CommandScheduler.ScheduledCommands, (store) => store.list({ state: "pending" })),
  (pending) => pending.map((command) => command.key)
)

// Runs `first`, with `second` run whole between `first`'s read of the
// process and the rest of it; `first` retried as `follow` would.
const interleaved = <A, E, R, A2, E2, R2>(first: Effect.Effect<A, E, R>, second: Effect.Effect<A2, E2, R2>) =>
  Effect.gen(function*() {
    const context = yield* Effect.context<R2>()
    const inner = yield* ProcessManager.Processes
    let raced = false
    return yield* Effect.exit(Effect.retry(first, { times: 3 })).pipe(
      Effect.provideService(ProcessManager.Processes, {
        ...inner,
        load: (manager, key) =>
          Effect.tap(inner.load(manager, key), () => {
            if (raced) return Effect.void
            raced = true
            return Effect.provide(Effect.orDie(second), context)
          })
      })
    )
  })

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `ProcessManager claims (${TestDatabase.kind})`,
  (it) => {
    it.effect("a payment and a timeout at once: the order is shipped or cancelled, not both", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const ran: Array<string> = []
        const checkout = makeCheckout(makeBus(ran))
        const on = (type: string) => checkout.reactions.find((reaction) => reaction.eventType === type)!
        yield* on("OrderPlaced").handle(yield* envelopeOf(new OrderPlaced({ orderId: "o-1", amount: 5 })))
        const paid = yield* envelopeOf(new PaymentReceived({ orderId: "o-1" }))
        const timedOut = yield* envelopeOf(new PaymentTimedOut({ orderId: "o-1" }))
        const exit = yield* interleaved(on("PaymentReceived").handle(paid), on("PaymentTimedOut").handle(timedOut))
        expect(Exit.isSuccess(exit)).toBe(true)
        const process = Option.getOrThrow(yield* checkout.process("o-1"))
        expect([process.state.status, process.done, process.version]).toEqual(["cancelled", true, 2])
        expect(ran).toEqual(["TakePayment o-1", "CancelOrder o-1"])
        expect(yield* pendingKeys).toEqual([])
      }))

    it.effect("a deadline set by a run beside one that ends the process is cancelled with the others", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const ran: Array<string> = []
        const manager = ProcessManager.make({
          name: "reminders",
          bus: makeBus(ran),
          state: CheckoutState,
          initialState: { status: "new", amount: 0 },
          events: [OrderPlaced, PaymentReceived, PaymentTimedOut],
          key: (event) => event.orderId,
          startedBy: ["OrderPlaced"]
        }).on({
          OrderPlaced: (state) => ({ state: { ...state, status: "awaiting-payment" } }),
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
        expect(Exit.isSuccess(exit)).toBe(true)
        const process = Option.getOrThrow(yield* manager.process("o-2"))
        expect([process.done, process.deadlines]).toEqual([true, []])
        expect(yield* pendingKeys).toEqual([])
      }))

    it.effect("a first event that fails gives its claim up: no process, and the next one starts it", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const ran: Array<string> = []
        const checkout = makeCheckout(makeBus(ran))
        const onPlaced = checkout.reactions.find((reaction) => reaction.eventType === "OrderPlaced")!
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
        yield* checkout.reactions.find((reaction) => reaction.eventType === "PaymentReceived")!.handle(
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
          applied: [],
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
