/**
 * Process managers on a real database (PGlite, or the server in
 * `DATABASE_URL`): the checkout process followed from the event log, its
 * processes in `processes`, its deadline in `scheduled_commands`, run by a
 * real scheduler on the real clock; redelivery and crashes at each point
 * send nothing twice; of two saves on one version, one writes.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { CommandError, CommandScheduler, ProcessManager, Reaction } from "../../src/index.js"
import { ConfirmPayment, makeCheckoutOnBus, PlaceOrder } from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"
import { followedStores, untilWithin } from "../support/ProcessManagerSql.js"

const Shared = followedStores("200 millis")

const until = untilWithin(15)

const pendingKeys = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    Effect.map(
      sql<{ readonly key: string | null; readonly command_type: string }>`
        SELECT key, command_type FROM scheduled_commands WHERE state = 'pending' ORDER BY key`.withoutTransform,
      (rows) => rows.map((row) => `${row.command_type} ${row.key}`)
    )
)

const following = { pollInterval: "200 millis", retry: Schedule.recurs(3) } as const

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `ProcessManager (${TestDatabase.kind})`,
  (it) => {
    it.scoped("pays, sets the deadline; the payment cancels it, ships and ends; a replay sends nothing twice", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, checkout, ran } = makeCheckoutOnBus()
        const followUntil = (position: number) =>
          Effect.scoped(Effect.gen(function*() {
            yield* Reaction.follow("checkout", checkout.reactions, following)
            const checkpoints = yield* Reaction.Checkpoints
            yield* until(`checkpoint ${position}`, Effect.map(checkpoints.load("checkout"), (at) => at >= position))
          }))

        yield* bus.dispatch(new PlaceOrder({ orderId: "o-1", amount: 5 }))
        yield* followUntil(1)
        expect(ran).toEqual(["PlaceOrder o-1", "TakePayment o-1"])
        expect(yield* pendingKeys).toEqual([`ExpirePayment ${checkout.deadlineKey("o-1", "payment")}`])
        const waiting = Option.getOrThrow(yield* checkout.process("o-1"))
        expect([waiting.state, waiting.done, waiting.version, waiting.deadlines]).toEqual([
          { status: "awaiting-payment", amount: 5 },
          false,
          1,
          ["payment"]
        ])

        yield* bus.dispatch(new ConfirmPayment({ orderId: "o-1" }))
        yield* followUntil(2)
        expect(ran).toEqual(["PlaceOrder o-1", "TakePayment o-1", "ConfirmPayment o-1", "ShipOrder o-1"])
        expect(yield* pendingKeys).toEqual([])
        const shipped = Option.getOrThrow(yield* checkout.process("o-1"))
        expect([shipped.state, shipped.done, shipped.version]).toEqual([{ status: "shipped", amount: 5 }, true, 2])

        // Every event again, from the start.
        yield* Reaction.replay("checkout")
        yield* followUntil(2)
        expect(ran).toEqual(["PlaceOrder o-1", "TakePayment o-1", "ConfirmPayment o-1", "ShipOrder o-1"])
        expect(Option.getOrThrow(yield* checkout.process("o-1")).version).toBe(2)
      }))

    it.scoped("the deadline fires when no payment came, on the scheduler's runner: cancelled, and the process ends", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, checkout, ran } = makeCheckoutOnBus("1 second")
        yield* Reaction.follow("checkout", checkout.reactions, following)
        yield* CommandScheduler.forBus(bus).start({ pollInterval: "100 millis" })
        yield* bus.dispatch(new PlaceOrder({ orderId: "o-2", amount: 7 }))
        yield* until(
          "the process cancelled",
          Effect.map(checkout.process("o-2"), (process) => Option.exists(process, (p) => p.done))
        )
        expect(ran).toEqual(["PlaceOrder o-2", "TakePayment o-2", "ExpirePayment o-2", "CancelOrder o-2"])
        expect(Option.map(yield* checkout.process("o-2"), (process) => process.state)).toEqual(
          Option.some({ status: "cancelled", amount: 7 })
        )
        expect(yield* pendingKeys).toEqual([])
      }))

    it.scoped("a crash between the state's save and the checkpoint's: the event runs again and sends nothing", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, checkout, ran } = makeCheckoutOnBus()
        const inner = yield* Reaction.Checkpoints
        const processes = yield* ProcessManager.Processes
        let saves = 0
        let loads = 0
        yield* Effect.gen(function*() {
          yield* Reaction.follow("checkout", checkout.reactions, following)
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-3", amount: 3 }))
          yield* until("checkpoint 1", Effect.map(inner.load("checkout"), (at) => at >= 1))
        }).pipe(
          Effect.provideService(Reaction.Checkpoints, {
            ...inner,
            // The first save after the process was saved fails, as a crash before it would leave it.
            save: (name, position) =>
              ++saves === 1
                ? Effect.fail(new CommandError.StoreUnavailable({ store: "checkpoints", reason: "crashed" }))
                : inner.save(name, position)
          }),
          Effect.provideService(ProcessManager.Processes, {
            ...processes,
            load: (manager, key, eventId) =>
              Effect.zipRight(Effect.sync(() => loads++), processes.load(manager, key, eventId))
          })
        )
        expect(loads).toBe(2)
        expect(ran).toEqual(["PlaceOrder o-3", "TakePayment o-3"])
        expect((yield* pendingKeys).length).toBe(1)
        expect(Option.getOrThrow(yield* checkout.process("o-3")).version).toBe(1)
      }))

    it.scoped("a crash between the commands and the state's save: run again, the commands replay their outcome", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, checkout, ran } = makeCheckoutOnBus()
        const processes = yield* ProcessManager.Processes
        let saves = 0
        yield* Effect.gen(function*() {
          yield* Reaction.follow("checkout", checkout.reactions, following)
          yield* bus.dispatch(new PlaceOrder({ orderId: "o-4", amount: 4 }))
          yield* until("the process saved", Effect.map(checkout.process("o-4"), Option.isSome))
        }).pipe(
          Effect.provideService(ProcessManager.Processes, {
            ...processes,
            // The saves of the state (not the claims that come before the commands).
            save: (manager, key, process, expected, claimed) =>
              process.applying === undefined && ++saves === 1
                ? Effect.fail(new CommandError.StoreUnavailable({ store: "processes", reason: "crashed" }))
                : processes.save(manager, key, process, expected, claimed)
          })
        )
        expect(saves).toBe(2)
        expect(ran).toEqual(["PlaceOrder o-4", "TakePayment o-4"])
        expect((yield* pendingKeys).length).toBe(1)
      }))

    it.effect("saves on the version read only: of two saves on one version, racing, one writes", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* ProcessManager.Processes
        const process = (version: number, state: unknown) => ({ state, done: false, version, deadlines: ["d"] })
        // Each racer ends the run of an event of its own: only the winner's is kept as applied.
        const first = yield* Effect.all(
          Array.from({ length: 4 }, (_, i) => store.save("m", "k", process(1, { by: i }), 0, undefined, `e1-${i}`)),
          { concurrency: "unbounded" }
        )
        expect(first.filter(Boolean).length).toBe(1)
        const second = yield* Effect.all(
          Array.from(
            { length: 4 },
            (_, i) => store.save("m", "k", process(2, { by: i, text: "é\u{1F600}" }), 1, undefined, `e2-${i}`)
          ),
          { concurrency: "unbounded" }
        )
        expect(second.filter(Boolean).length).toBe(1)
        expect(yield* store.save("m", "k", process(2, {}), 1, undefined, "e-late")).toBe(false)
        const applied = (eventId: string) =>
          Effect.map(store.load("m", "k", eventId), (stored) => Option.getOrThrow(stored).applied)
        const appliedOf = (prefix: string) =>
          Effect.forEach(Array.from({ length: 4 }, (_, i) => `${prefix}-${i}`), applied)
        expect(yield* appliedOf("e1")).toEqual(first)
        expect(yield* appliedOf("e2")).toEqual(second)
        expect(yield* applied("e-late")).toBe(false)
        const stored = Option.getOrThrow(yield* store.load("m", "k"))
        expect([stored.version, stored.applied, stored.deadlines, stored.done]).toEqual([2, false, ["d"], false])
        expect(stored.state).toEqual({ by: second.indexOf(true), text: "é\u{1F600}" })
        expect(yield* store.load("m", "other")).toEqual(Option.none())
        // Another process's events are its own.
        expect(yield* store.load("m", "other", `e1-${first.indexOf(true)}`)).toEqual(Option.none())
        yield* store.save("m", "other", process(1, {}), 0, undefined, "x")
        expect(Option.getOrThrow(yield* store.load("m", "other", `e1-${first.indexOf(true)}`)).applied).toBe(false)
      }))
  }
)
