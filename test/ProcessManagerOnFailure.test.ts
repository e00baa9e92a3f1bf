/**
 * A process manager's failure handlers: a command sent that fails with a
 * failure it declares runs its handler's decision (a compensation) in place
 * of the rest of the event's, rather than failing the event; redelivered,
 * both are sent again as no-ops; a command with no handler, or one of the
 * compensation's, still fails the event.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Command, CommandBus, ProcessManager } from "../src/index.js"
import { ProcessManagerSpecification } from "../src/testing/index.js"
import { envelopeOf, failedWith, memoryStores as stores, pendingDeadlines, reactionOf } from "./support/Checkout.js"
import type { FulfilmentState } from "./support/Fulfilment.js"
import {
  CardDeclined,
  makeBus,
  makeFulfilment,
  OrderSubmitted,
  OutOfStock,
  RejectOrder,
  ReserveStock
} from "./support/Fulfilment.js"

// A command whose tag is also the name of a method every object has.
class ToString extends Command.Class<ToString>()("toString", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: CardDeclined
}) {}

/** The run of an order of `quantity` submitted, by `manager`: the event's envelope and the run's exit. */
const submitted = (manager: ReturnType<typeof makeFulfilment>, orderId: string, quantity: number) =>
  Effect.flatMap(
    envelopeOf(new OrderSubmitted({ orderId, quantity })),
    (envelope) =>
      Effect.map(Effect.exit(reactionOf(manager, "OrderSubmitted").handle(envelope)), (exit) => ({ envelope, exit }))
  )

describe("ProcessManager onFailure", () => {
  it.effect("a command's declared failure runs its handler's decision in place of the rest of the event's", () =>
    Effect.gen(function*() {
      const { bus, keys, ran } = makeBus(3)
      const handled: Array<readonly [string, number, number]> = []
      const fulfilment = makeFulfilment(bus, { handled })
      const { envelope, exit } = yield* submitted(fulfilment, "o-1", 5)
      assert.isTrue(Exit.isSuccess(exit), "the event's run succeeds")
      // The charge after the reservation is not sent, the decision's deadline not set; the rejection is,
      // under a key of its own.
      assert.deepStrictEqual(ran, ["ReserveStock o-1", "RejectOrder o-1"])
      assert.deepStrictEqual(keys, [`fulfilment:${envelope.eventId}:0`, `fulfilment:${envelope.eventId}:f0:0`])
      // The handler got the state the event's decision left, and the failed command.
      assert.deepStrictEqual(handled, [["reserved", 0, 5]])
      assert.deepStrictEqual(yield* pendingDeadlines, [])
      const process = Option.getOrThrow(yield* fulfilment.process("o-1"))
      assert.deepStrictEqual([process.state, process.done, process.version], [
        { status: "rejected", reason: "OutOfStock" },
        true,
        1
      ])
    }).pipe(Effect.provide(stores)))

  it.effect("a compensation that keeps the event's decision's rest sets its deadline, under a key of its own", () =>
    Effect.gen(function*() {
      const { bus, keys, ran } = makeBus(0)
      const fulfilment = makeFulfilment(bus, { keepRest: true })
      const { envelope, exit } = yield* submitted(fulfilment, "o-8", 1)
      assert.isTrue(Exit.isSuccess(exit))
      assert.deepStrictEqual(ran, ["ReserveStock o-8", "RejectOrder o-8"])
      assert.deepStrictEqual(keys, [`fulfilment:${envelope.eventId}:0`, `fulfilment:${envelope.eventId}:f0:0`])
      const [deadline, ...others] = yield* pendingDeadlines
      assert.deepStrictEqual(others, [])
      assert.deepStrictEqual([deadline?.key, (deadline?.command as { idempotencyKey?: string }).idempotencyKey], [
        fulfilment.deadlineKey("o-8", "expiry"),
        `fulfilment:${envelope.eventId}:f0:d0`
      ])
      const process = Option.getOrThrow(yield* fulfilment.process("o-8"))
      assert.deepStrictEqual([process.state, process.done, process.deadlines], [
        { status: "rejected", reason: "OutOfStock" },
        false,
        ["expiry"]
      ])
    }).pipe(Effect.provide(stores)))

  it.effect("a command that succeeds leaves the event's decision as it was", () =>
    Effect.gen(function*() {
      const { bus, ran } = makeBus(10)
      const fulfilment = makeFulfilment(bus)
      const { exit } = yield* submitted(fulfilment, "o-2", 5)
      assert.isTrue(Exit.isSuccess(exit))
      assert.deepStrictEqual(ran, ["ReserveStock o-2", "ChargeCard o-2"])
      const [deadline] = yield* pendingDeadlines
      assert.strictEqual(deadline?.key, fulfilment.deadlineKey("o-2", "expiry"))
      const process = Option.getOrThrow(yield* fulfilment.process("o-2"))
      assert.deepStrictEqual([process.state, process.done], [{ status: "reserved" }, false])
    }).pipe(Effect.provide(stores)))

  it.effect("redelivered after its state failed to save, the compensation is sent again under its key, a no-op", () =>
    Effect.gen(function*() {
      const { bus, ran } = makeBus(0)
      const fulfilment = makeFulfilment(bus)
      const inner = yield* ProcessManager.Processes
      let failSave = true
      // The final save (the one naming its event applied) fails once, as a crash before it would leave things.
      const crashing: ProcessManager.ProcessStore = {
        ...inner,
        save: (manager, key, process, expected, claimed, applied) =>
          applied !== undefined && process.version > expected && failSave
            ? Effect.sync(() => {
              failSave = false
            }).pipe(Effect.zipRight(Effect.dieMessage("crashed before the save")))
            : inner.save(manager, key, process, expected, claimed, applied)
      }
      const envelope = yield* envelopeOf(new OrderSubmitted({ orderId: "o-3", quantity: 1 }))
      const handle = reactionOf(fulfilment, "OrderSubmitted").handle(envelope)
      const first = yield* Effect.exit(Effect.provideService(handle, ProcessManager.Processes, crashing))
      assert.isTrue(Exit.isFailure(first))
      yield* handle
      // Each handler ran once: the redelivery's reservation replayed its failure, its rejection its success.
      assert.deepStrictEqual(ran, ["ReserveStock o-3", "RejectOrder o-3"])
      const process = Option.getOrThrow(yield* fulfilment.process("o-3"))
      assert.deepStrictEqual([process.state, process.done], [{ status: "rejected", reason: "OutOfStock" }, true])
    }).pipe(Effect.provide(stores)))

  it.effect("a command with no failure handler still fails the event, and the state is not saved", () =>
    Effect.gen(function*() {
      const { bus, ran } = makeBus(10, ["o-4"])
      const fulfilment = makeFulfilment(bus)
      const { exit } = yield* submitted(fulfilment, "o-4", 1)
      assert.isTrue(failedWith(exit, CardDeclined))
      assert.deepStrictEqual(ran, ["ReserveStock o-4", "ChargeCard o-4"])
      assert.isTrue(Option.isNone(yield* fulfilment.process("o-4")))
    }).pipe(Effect.provide(stores)))

  it.effect("a compensation's command that fails so fails the event: no handler runs for it", () =>
    Effect.gen(function*() {
      const { bus, ran } = makeBus(0, ["o-5"])
      const fulfilment = makeFulfilment(bus)
      const { exit } = yield* submitted(fulfilment, "o-5", 1)
      assert.isTrue(failedWith(exit, CardDeclined))
      assert.deepStrictEqual(ran, ["ReserveStock o-5", "RejectOrder o-5"])
      assert.isTrue(Option.isNone(yield* fulfilment.process("o-5")))
    }).pipe(Effect.provide(stores)))

  it.effect("a compensation whose state does not encode is refused before its commands go", () =>
    Effect.gen(function*() {
      const { bus, ran } = makeBus(0)
      const fulfilment = makeFulfilment(bus, {
        rejection: () => ({ status: "nonsense" }) as unknown as typeof FulfilmentState.Type
      })
      const { exit } = yield* submitted(fulfilment, "o-6", 1)
      assert.isTrue(failedWith(exit, ProcessManager.InvalidProcess))
      assert.deepStrictEqual(ran, ["ReserveStock o-6"])
      // The claim is given up: the process's next event is not held behind it.
      const stored = yield* Effect.flatMap(ProcessManager.Processes, (store) => store.load("fulfilment", "o-6"))
      assert.isUndefined(Option.getOrThrow(stored).applying)
    }).pipe(Effect.provide(stores)))

  it.effect("in a specification, an answered failure shows the compensation's commands and state", () =>
    Effect.gen(function*() {
      const spec = ProcessManagerSpecification.make({
        manager: makeFulfilment(makeBus(0).bus),
        respond: { ReserveStock: (command) => Effect.fail(new OutOfStock({ orderId: command.orderId })) }
      })
      yield* spec.when(new OrderSubmitted({ orderId: "o-7", quantity: 2 })).then({
        commands: [
          new ReserveStock({ orderId: "o-7", quantity: 2 }),
          new RejectOrder({ orderId: "o-7", reason: "OutOfStock" })
        ],
        deadlines: [],
        state: { status: "rejected", reason: "OutOfStock" },
        done: true
      })
    }))

  it.effect("a command tagged as an object's method, with no failure handler, fails its event with its own failure", () =>
    Effect.gen(function*() {
      const bus = CommandBus.make([ToString], {
        toString: (command) => Effect.fail(new CardDeclined({ orderId: command.orderId }))
      })
      // No handler of its own: Object's `toString` must not be taken for one.
      const manager = ProcessManager.make({
        name: "methods",
        bus,
        state: Schema.Struct({ sent: Schema.Boolean }),
        initialState: { sent: false },
        events: [OrderSubmitted],
        key: (event) => event.orderId
      }).on({
        OrderSubmitted: (_, event) => ({ state: { sent: true }, send: [new ToString({ orderId: event.orderId })] })
      })
      const envelope = yield* envelopeOf(new OrderSubmitted({ orderId: "o-8", quantity: 1 }))
      const exit = yield* Effect.exit(reactionOf(manager, "OrderSubmitted").handle(envelope))
      assert.isTrue(failedWith(exit, CardDeclined))
    }).pipe(Effect.provide(stores)))
})
