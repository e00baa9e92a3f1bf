/**
 * A process manager deployed as a user would, on a real database (PGlite, or
 * the server in `DATABASE_URL`): a bus with the default middleware on the SQL
 * stores, whose handlers write in their dispatch's transaction; the process
 * followed by two followers of one name, one stopped mid-command; its
 * deadlines run by a real scheduler's runner. Each command's effect is
 * counted by the rows its committed transactions wrote, so a handler run
 * twice and rolled back once counts once.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import {
  Command,
  CommandBus,
  CommandScheduler,
  DomainEvent,
  Handler,
  Idempotency,
  Middleware,
  ProcessManager,
  Reaction
} from "../../src/index.js"
import {
  type CheckoutCommand,
  CheckoutCommands,
  type CheckoutState,
  ConfirmPayment,
  makeCheckout,
  OrderPlaced,
  PaymentReceived,
  PaymentTimedOut,
  PlaceOrder
} from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"
import { makeBus as makeFulfilmentBus, makeFulfilment, OrderSubmitted } from "../support/Fulfilment.js"
import { followedStores, until } from "../support/ProcessManagerSql.js"

const Shared = followedStores("100 millis")

const effectsTable = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.zipRight(
    sql`CREATE TABLE IF NOT EXISTS e2e_effects (command text NOT NULL, order_id text NOT NULL)`,
    sql`TRUNCATE e2e_effects`
  ))

/** The committed effects, as `<command> <order>` with how many times, sorted. */
const effects = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(
    sql<{ readonly effect: string; readonly times: string | number }>`
      SELECT command || ' ' || order_id AS effect, count(*) AS times FROM e2e_effects
      GROUP BY 1 ORDER BY 1`.withoutTransform,
    (rows) => Object.fromEntries(rows.map((row) => [row.effect, Number(row.times)]))
  ))

/**
 * A gate on one command's first run: `entered` once it reaches the gate,
 * where it waits for `release`.
 */
interface Gate {
  readonly entered: Deferred.Deferred<void>
  readonly release: Deferred.Deferred<void>
}

const gate = Effect.zipWith(Deferred.make<void>(), Deferred.make<void>(), (entered, release): Gate => ({
  entered,
  release
}))

/**
 * Gates by `<command> <order>`: `inside` its handler, its effect written in
 * its transaction but not committed; `before` its transaction begins, its
 * idempotency key claimed (the embedded database runs one transaction at a
 * time, so a gate inside one would hold every other dispatch back).
 */
interface Gates {
  readonly inside: Map<string, Gate>
  readonly before: Map<string, Gate>
}

const newGates = (): Gates => ({ inside: new Map(), before: new Map() })

const passing = (gates: Map<string, Gate>, command: { readonly _tag: string; readonly orderId?: unknown }) =>
  Effect.suspend(() => {
    const name = `${command._tag} ${String(command.orderId)}`
    const held = gates.get(name)
    if (held === undefined) return Effect.void
    gates.delete(name)
    return Effect.zipRight(Deferred.succeed(held.entered, void 0), Deferred.await(held.release))
  })

/** The checkout's bus on the SQL stores, with idempotency, a timeout and a transaction per dispatch. */
const makeBus = (gates: Gates) => {
  const effect = (command: { readonly _tag: string; readonly orderId: string }) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO e2e_effects VALUES (${command._tag}, ${command.orderId})`.pipe(Effect.orDie)
      yield* passing(gates.inside, command)
    })
  const raise = (orderId: string, event: DomainEvent.Any) =>
    Handler.result(undefined, [
      DomainEvent.draft({ aggregateType: "Order", aggregateId: orderId, aggregateVersion: 1 }, event)
    ])
  return CommandBus.make(CheckoutCommands, {
    PlaceOrder: (command) => Effect.succeed(raise(command.orderId, new OrderPlaced(command))),
    ConfirmPayment: (command) =>
      Effect.succeed(raise(command.orderId, new PaymentReceived({ orderId: command.orderId }))),
    TakePayment: (command) => Effect.as(effect(command), Handler.result(undefined)),
    ExpirePayment: (command) =>
      Effect.as(effect(command), raise(command.orderId, new PaymentTimedOut({ orderId: command.orderId }))),
    ShipOrder: (command) => Effect.as(effect(command), Handler.result(undefined)),
    CancelOrder: (command) => Effect.as(effect(command), Handler.result(undefined))
  }).pipe(CommandBus.withMiddleware(
    Idempotency.middleware(),
    Middleware.timeout("30 seconds"),
    Middleware.make("gate", (self, dispatch) => Effect.zipRight(passing(gates.before, dispatch.command), self)),
    Middleware.transaction
  ))
}

const following = {
  pollInterval: "100 millis",
  lease: "1 second",
  retry: Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(5)))
} as const

const statusOf = (
  checkout: ProcessManager.ProcessManager<typeof CheckoutState.Type, CheckoutCommand, unknown, unknown>,
  orderId: string
) => Effect.map(checkout.process(orderId), Option.map((process) => [process.state.status, process.done] as const))

/** Until the follower's checkpoint reaches the last event of the log. */
const caughtUp = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const checkpoints = yield* Reaction.Checkpoints
  yield* until(
    "the follower at the end of the log",
    Effect.gen(function*() {
      const [last] = yield* sql<{ readonly position: string | number | null }>`
        SELECT max(position) AS position FROM outbox`.withoutTransform
      return (yield* checkpoints.load("checkout")) >= Number(last?.position ?? 0)
    })
  )
})

const pendingDeadlines = Effect.flatMap(
  CommandScheduler.ScheduledCommands,
  (store) => Effect.map(store.list({ state: "pending" }), (pending) => pending.map((command) => command.commandType))
)

/**
 * On an empty database, the checkout with a 1 second deadline, followed, its
 * deadlines run, its bus's `command` held at a gate before its transaction.
 */
const checkoutHeldBefore = (command: string) =>
  Effect.gen(function*() {
    yield* TestDatabase.truncateAll
    yield* effectsTable
    const gates = newGates()
    const held = yield* gate
    gates.before.set(command, held)
    const bus = makeBus(gates)
    const checkout = makeCheckout(bus, "1 second")
    yield* Reaction.follow("checkout", checkout.reactions, following)
    yield* CommandScheduler.forBus(bus).start({ pollInterval: "100 millis" })
    return { bus, checkout, held }
  })

const deadLetters = Effect.flatMap(Reaction.DeadLetters, (letters) => letters.list("checkout"))

class SubmitOrder extends Command.Class<SubmitOrder>()("SubmitOrder", {
  payload: { orderId: Schema.String, quantity: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

/** Where orders are submitted: its events are the fulfilment's. */
const orders = CommandBus.make([SubmitOrder], {
  SubmitOrder: (command) =>
    Effect.succeed(Handler.result(undefined, [
      DomainEvent.draft(
        { aggregateType: "Order", aggregateId: command.orderId, aggregateVersion: 1 },
        new OrderSubmitted({ orderId: command.orderId, quantity: command.quantity })
      )
    ]))
})

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `ProcessManager end to end (${TestDatabase.kind})`,
  (it) => {
    it.scoped(
      "two followers of one name, the active one stopped mid-command, and a runner: each order's effects once",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          yield* effectsTable
          const gates = newGates()
          const paying = yield* gate
          gates.inside.set("TakePayment o-2", paying)
          const bus = makeBus(gates)
          const checkout = makeCheckout(bus, "2 seconds")
          yield* CommandScheduler.forBus(bus).start({ pollInterval: "100 millis" })

          const first = yield* Scope.make()
          yield* Scope.extend(Reaction.follow("checkout", checkout.reactions, following), first)
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-1", amount: 1 }))
          yield* bus.dispatch(new ConfirmPayment({ orderId: "o-1" }))
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-2", amount: 2 }))
          yield* bus.dispatch(new ConfirmPayment({ orderId: "o-2" }))
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-3", amount: 3 }))
          // The first follower is inside o-2's payment, its effect written, not committed.
          yield* Deferred.await(paying.entered).pipe(Effect.timeout("20 seconds"))
          const second = yield* Scope.make()
          yield* Scope.extend(Reaction.follow("checkout", checkout.reactions, following), second)
          // Stopped mid-command: the second takes over where it stopped.
          yield* Scope.close(first, Exit.void)
          yield* until(
            "o-2 shipped",
            Effect.map(statusOf(checkout, "o-2"), Option.exists(([status]) => status === "shipped"))
          )
          // The first again, beside the second, for the rest.
          const again = yield* Scope.make()
          yield* Scope.extend(Reaction.follow("checkout", checkout.reactions, following), again)
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-4", amount: 4 }))
          yield* bus.dispatch(new ConfirmPayment({ orderId: "o-4" }))
          yield* until(
            "o-3 cancelled by its deadline",
            Effect.map(statusOf(checkout, "o-3"), Option.exists(([, done]) => done))
          )
          yield* until(
            "o-4 shipped",
            Effect.map(statusOf(checkout, "o-4"), Option.exists(([, done]) => done))
          )
          yield* caughtUp

          expect(yield* Effect.forEach(["o-1", "o-2", "o-3", "o-4"], (order) => statusOf(checkout, order))).toEqual([
            Option.some(["shipped", true]),
            Option.some(["shipped", true]),
            Option.some(["cancelled", true]),
            Option.some(["shipped", true])
          ])
          const done = yield* effects
          // A paid order's deadline may have fired late (the README says so), but cancels nothing.
          for (const paid of ["o-1", "o-2", "o-4"]) delete done[`ExpirePayment ${paid}`]
          expect(done).toEqual({
            "CancelOrder o-3": 1,
            "ExpirePayment o-3": 1,
            "ShipOrder o-1": 1,
            "ShipOrder o-2": 1,
            "ShipOrder o-4": 1,
            "TakePayment o-1": 1,
            "TakePayment o-2": 1,
            "TakePayment o-3": 1,
            "TakePayment o-4": 1
          })
          expect(yield* pendingDeadlines).toEqual([])
          expect(yield* deadLetters).toEqual([])
          yield* Scope.close(second, Exit.void)
          yield* Scope.close(again, Exit.void)
        })
    )

    it.scoped("a deadline that fires while the payment is being processed: shipped once, not cancelled", () =>
      Effect.gen(function*() {
        const { bus, checkout, held: shipping } = yield* checkoutHeldBefore("ShipOrder o-5")
        yield* bus.dispatch(new PlaceOrder({ orderId: "o-5", amount: 5 }))
        yield* bus.dispatch(new ConfirmPayment({ orderId: "o-5" }))
        yield* Deferred.await(shipping.entered).pipe(Effect.timeout("20 seconds"))
        // The deadline comes due and runs while the payment's run is inside ShipOrder.
        yield* until("the deadline ran", Effect.map(effects, (done) => done["ExpirePayment o-5"] === 1))
        yield* Deferred.succeed(shipping.release, void 0)
        yield* until("o-5 done", Effect.map(statusOf(checkout, "o-5"), Option.exists(([, done]) => done)))
        yield* caughtUp

        expect(yield* statusOf(checkout, "o-5")).toEqual(Option.some(["shipped", true]))
        expect(yield* effects).toEqual({ "ExpirePayment o-5": 1, "ShipOrder o-5": 1, "TakePayment o-5": 1 })
        expect(yield* pendingDeadlines).toEqual([])
        expect(yield* deadLetters).toEqual([])
      }))

    it.scoped("a payment while its deadline's command runs: done, the deadline runs out, nothing is cancelled", () =>
      Effect.gen(function*() {
        const { bus, checkout, held: expiring } = yield* checkoutHeldBefore("ExpirePayment o-6")
        yield* bus.dispatch(new PlaceOrder({ orderId: "o-6", amount: 6 }))
        yield* Deferred.await(expiring.entered).pipe(Effect.timeout("20 seconds"))
        yield* bus.dispatch(new ConfirmPayment({ orderId: "o-6" }))
        yield* until("o-6 done", Effect.map(statusOf(checkout, "o-6"), Option.exists(([, done]) => done)))
        yield* Deferred.succeed(expiring.release, void 0)
        yield* until("the deadline's run recorded", Effect.map(pendingDeadlines, (pending) => pending.length === 0))
        yield* caughtUp

        expect(yield* statusOf(checkout, "o-6")).toEqual(Option.some(["shipped", true]))
        expect(yield* effects).toEqual({ "ExpirePayment o-6": 1, "ShipOrder o-6": 1, "TakePayment o-6": 1 })
        expect(yield* Effect.map(checkout.process("o-6"), Option.map((process) => process.deadlines)))
          .toEqual(Option.some([]))
        expect(yield* deadLetters).toEqual([])
      }))

    it.scoped(
      "out of stock is compensated, a declined card is a dead letter, redriven once a failure handler is deployed; pruned",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          const { bus, ran } = makeFulfilmentBus(5, ["o-2"])
          const fulfilment = makeFulfilment(bus)
          const scope = yield* Scope.make()
          yield* Scope.extend(Reaction.follow("fulfilment", fulfilment.reactions, following), scope)
          yield* orders.dispatch(new SubmitOrder({ orderId: "o-1", quantity: 2 }))
          yield* orders.dispatch(new SubmitOrder({ orderId: "o-2", quantity: 1 }))
          yield* orders.dispatch(new SubmitOrder({ orderId: "o-3", quantity: 9 }))
          const letters = yield* Reaction.DeadLetters
          yield* until("o-2 a dead letter", Effect.map(letters.list("fulfilment"), (found) => found.length === 1))
          yield* until("o-3 rejected", Effect.map(fulfilment.process("o-3"), Option.exists((p) => p.done)))
          // The follower stopped, the fix deployed (a card declined rejects the
          // order too, in place of the dead letter it was): the letter redriven
          // by the fixed process.
          yield* Scope.close(scope, Exit.void)
          const fixed = makeFulfilment(bus, { rejectDeclined: true })
          const redriven = yield* Reaction.redrive("fulfilment", fixed.reactions, following)
          expect(redriven).toEqual({ resolved: 1, failed: 0, unmatched: 0, held: 0 })
          yield* Reaction.follow("fulfilment", fixed.reactions, following)

          const processes = yield* Effect.forEach(["o-1", "o-2", "o-3"], (order) =>
            Effect.map(fulfilment.process(order), Option.map((p) => [p.state, p.done, p.deadlines] as const)))
          expect(processes).toEqual([
            Option.some([{ status: "reserved" }, false, ["expiry"]]),
            Option.some([{ status: "rejected", reason: "CardDeclined" }, true, []]),
            Option.some([{ status: "rejected", reason: "OutOfStock" }, true, []])
          ])
          // The declined charge ran once: the redrive replayed its failure.
          expect([...ran].sort()).toEqual([
            "ChargeCard o-1",
            "ChargeCard o-2",
            "RejectOrder o-3",
            "ReserveStock o-1",
            "ReserveStock o-2",
            "ReserveStock o-3"
          ])
          expect(yield* letters.list("fulfilment")).toEqual([])
          const pending = yield* Effect.flatMap(CommandScheduler.ScheduledCommands, (store) =>
            store.list({ state: "pending" }))
          expect(pending.map((command) =>
            command.key
          )).toEqual([fulfilment.deadlineKey("o-1", "expiry")])

          // The finished ones pruned in the background; the one under way kept.
          yield* ProcessManager.pruneEvery(fixed, { olderThan: "0 millis", interval: "100 millis" })
          yield* until(
            "o-2 and o-3 pruned",
            Effect.map(
              Effect.all([fixed.process("o-2"), fixed.process("o-3")]),
              (found) =>
                found.every(Option.isNone)
            )
          )
          expect(Option.map(yield* fixed.process("o-1"), (p) => p.state)).toEqual(Option.some({ status: "reserved" }))
        })
    )
  }
)
