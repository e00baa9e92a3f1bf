/**
 * A small checkout process for the process manager's tests: an order placed
 * is paid for, with a deadline; paid in time, it ships; not, it is
 * cancelled. The bus's handlers record what they ran, and raise the events
 * the process reacts to. Beside it, what those tests share to run a
 * process manager's reactions by hand.
 */
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import {
  Command,
  CommandBus,
  CommandScheduler,
  DomainEvent,
  Handler,
  Idempotency,
  ProcessManager,
  Reaction
} from "../../src/index.js"
import { InMemory } from "../../src/testing/index.js"

export class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

export class PaymentReceived extends DomainEvent.Class<PaymentReceived>()("PaymentReceived", {
  orderId: Schema.String
}) {}

export class PaymentTimedOut extends DomainEvent.Class<PaymentTimedOut>()("PaymentTimedOut", {
  orderId: Schema.String
}) {}

export class PlaceOrder extends Command.Class<PlaceOrder>()("PlaceOrder", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ConfirmPayment extends Command.Class<ConfirmPayment>()("ConfirmPayment", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class TakePayment extends Command.Class<TakePayment>()("TakePayment", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ExpirePayment extends Command.Class<ExpirePayment>()("ExpirePayment", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class ShipOrder extends Command.Class<ShipOrder>()("ShipOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class CancelOrder extends Command.Class<CancelOrder>()("CancelOrder", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export const CheckoutCommands = [
  PlaceOrder,
  ConfirmPayment,
  TakePayment,
  ExpirePayment,
  ShipOrder,
  CancelOrder
] as const

/** A command of the checkout's. */
export type CheckoutCommand = InstanceType<typeof CheckoutCommands[number]>

/** A bus for the checkout's commands, whatever its handlers and middleware (as `makeBus`'s). */
export type CheckoutBus<H, E, R> = CommandBus.CommandBus<CheckoutCommand, H, E, R>

const raise = (orderId: string, event: DomainEvent.Any) =>
  Effect.succeed(Handler.result(undefined, [
    DomainEvent.draft({ aggregateType: "Order", aggregateId: orderId, aggregateVersion: 1 }, event)
  ]))

/** The bus, with the idempotency middleware; `ran` gets `<tag> <orderId>` for each handler run. */
export const makeBus = (ran: Array<string>) => {
  const record = (command: { readonly _tag: string; readonly orderId: string }) =>
    Effect.sync(() => ran.push(`${command._tag} ${command.orderId}`))
  return CommandBus.make(CheckoutCommands, {
    PlaceOrder: (command) => Effect.zipRight(record(command), raise(command.orderId, new OrderPlaced(command))),
    ConfirmPayment: (command) =>
      Effect.zipRight(record(command), raise(command.orderId, new PaymentReceived({ orderId: command.orderId }))),
    TakePayment: (command) => Effect.as(record(command), Handler.result(undefined)),
    ExpirePayment: (command) =>
      Effect.zipRight(record(command), raise(command.orderId, new PaymentTimedOut({ orderId: command.orderId }))),
    ShipOrder: (command) => Effect.as(record(command), Handler.result(undefined)),
    CancelOrder: (command) => Effect.as(record(command), Handler.result(undefined))
  }).pipe(CommandBus.withMiddleware(Idempotency.middleware()))
}

export const CheckoutState = Schema.Struct({
  status: Schema.Literal("new", "awaiting-payment", "shipped", "cancelled"),
  amount: Schema.Int
})

/** A new bus, its checkout process (see `makeCheckout`), and the list of what the bus's handlers ran. */
export const makeCheckoutOnBus = (deadline?: Duration.DurationInput) => {
  const ran: Array<string> = []
  const bus = makeBus(ran)
  return { ran, bus, checkout: makeCheckout(bus, deadline) }
}

// A process manager over the checkout's state and events, keyed by order, started by an order placed.
const overOrders = <H, E, R>(name: string, bus: CheckoutBus<H, E, R>) =>
  ProcessManager.make({
    name,
    bus,
    state: CheckoutState,
    initialState: { status: "new", amount: 0 },
    events: [OrderPlaced, PaymentReceived, PaymentTimedOut],
    key: (event) => event.orderId,
    startedBy: ["OrderPlaced"]
  })

/** The checkout process over `bus`: pay within `deadline` of the order, or it is cancelled. */
export const makeCheckout = <H, E, R>(bus: CheckoutBus<H, E, R>, deadline: Duration.DurationInput = "30 minutes") =>
  overOrders("checkout", bus).on({
    OrderPlaced: (state, event) => ({
      state: { ...state, status: "awaiting-payment", amount: event.amount },
      send: [new TakePayment({ orderId: event.orderId, amount: event.amount })],
      schedule: [{ name: "payment", after: deadline, command: new ExpirePayment({ orderId: event.orderId }) }]
    }),
    PaymentReceived: (state, event) => ({
      state: { ...state, status: "shipped" },
      send: [new ShipOrder({ orderId: event.orderId })],
      cancel: ["payment"],
      done: true
    }),
    PaymentTimedOut: (state, event) => ({
      state: { ...state, status: "cancelled" },
      send: [new CancelOrder({ orderId: event.orderId })],
      done: true
    })
  })

/**
 * "reminders" over `bus`: a payment timed out sets a reminder in an hour
 * (and leaves the process running); a payment received ends the process.
 */
export const makeReminders = (bus: ReturnType<typeof makeBus>) =>
  overOrders("reminders", bus).on({
    OrderPlaced: (state) => ({ state: { ...state, status: "awaiting-payment" } }),
    PaymentTimedOut: (state, event) => ({
      state,
      schedule: [{ name: "remind", after: "1 hour", command: new ExpirePayment({ orderId: event.orderId }) }]
    }),
    PaymentReceived: (state) => ({ state: { ...state, status: "shipped" }, done: true })
  })

/** The in-memory stores a process manager runs on, with a follower and a scheduler. */
export const memoryStores = Layer.mergeAll(
  InMemory.layer,
  Reaction.layerCheckpointsMemory,
  Reaction.layerDeadLettersMemory,
  CommandScheduler.layerMemory,
  ProcessManager.layerMemory
)

/** `event` as the log holds it: raised by a command of its own, on the order its `orderId` names. */
export const envelopeOf = (event: DomainEvent.Any & { readonly orderId: string }) =>
  Effect.map(
    DomainEvent.stamp({ commandId: randomUUID(), correlationId: randomUUID(), timestamp: DateTime.unsafeNow() }, [
      DomainEvent.draft({ aggregateType: "Order", aggregateId: event.orderId, aggregateVersion: 1 }, event)
    ]),
    (stamped) => stamped[0]!
  )

/** The reaction of `manager` to events of `type`. */
export const reactionOf = <M extends ProcessManager.Any>(manager: M, type: string): M["reactions"][number] =>
  manager.reactions.find((reaction) => reaction.eventType === type)!

/** The scheduler's pending commands: the deadlines still set. */
export const pendingDeadlines = Effect.flatMap(
  CommandScheduler.ScheduledCommands,
  (store) => store.list({ state: "pending" })
)

/**
 * Runs `first` with `second` run whole (a failure of it a defect) between
 * `first`'s first read of a process and the rest of it: two runs of one
 * process at once, `second` the one that saves first.
 */
export const withRunAfterFirstRead = <A, E, R, A2, E2, R2>(
  first: Effect.Effect<A, E, R>,
  second: Effect.Effect<A2, E2, R2>
) =>
  Effect.gen(function*() {
    const context = yield* Effect.context<R2>()
    const inner = yield* ProcessManager.Processes
    let raced = false
    return yield* Effect.provideService(first, ProcessManager.Processes, {
      ...inner,
      load: (manager, key) =>
        Effect.tap(inner.load(manager, key), () => {
          if (raced) return Effect.void
          raced = true
          return Effect.provide(Effect.orDie(second), context)
        })
    })
  })

/** `withRunAfterFirstRead`, with `first` retried on its conflict as `follow` would: the exit of `first`. */
export const interleaved = <A, E, R, A2, E2, R2>(first: Effect.Effect<A, E, R>, second: Effect.Effect<A2, E2, R2>) =>
  Effect.exit(withRunAfterFirstRead(Effect.retry(first, { times: 3 }), second))

/**
 * Starts `manager`'s process of `first`'s order (an order placed), then runs
 * the events `first` and `second` at once (see `interleaved`): the exit of
 * `first`'s run.
 */
export const placedThenAtOnce = (
  manager: ProcessManager.Any,
  first: DomainEvent.Any & { readonly orderId: string },
  second: DomainEvent.Any & { readonly orderId: string }
) =>
  Effect.gen(function*() {
    yield* reactionOf(manager, "OrderPlaced").handle(
      yield* envelopeOf(new OrderPlaced({ orderId: first.orderId, amount: 5 }))
    )
    const firstEnvelope = yield* envelopeOf(first)
    const secondEnvelope = yield* envelopeOf(second)
    return yield* interleaved(
      reactionOf(manager, first._tag).handle(firstEnvelope),
      reactionOf(manager, second._tag).handle(secondEnvelope)
    )
  })

/** Whether `exit` failed with an error of class `error` (a typed failure, not a defect). */
export const failedWith = (exit: Exit.Exit<unknown, unknown>, error: abstract new(...args: any) => unknown) =>
  Exit.isFailure(exit) && Exit.causeOption(exit).pipe(
    Option.exists((cause) => cause._tag === "Fail" && cause.error instanceof error)
  )

/**
 * Runs `event` (the run of one process's event) on a store that prunes
 * once, by `options`, right after that run claims its process, before its
 * commands go; what that prune returned.
 */
export const pruningOnClaim = <E, R>(
  event: Effect.Effect<unknown, E, R>,
  checkout: {
    readonly prune: (options: ProcessManager.PruneOptions) => Effect.Effect<number, unknown, ProcessManager.Processes>
  },
  options: ProcessManager.PruneOptions
) =>
  Effect.gen(function*() {
    const inner = yield* ProcessManager.Processes
    let pruned: number | undefined
    yield* Effect.provideService(event, ProcessManager.Processes, {
      ...inner,
      save: (manager, key, process, expected, claimed, applied) =>
        Effect.tap(
          inner.save(manager, key, process, expected, claimed, applied),
          () =>
            process.applying === undefined || pruned !== undefined
              ? Effect.void
              : Effect.map(
                Effect.provideService(Effect.orDie(checkout.prune(options)), ProcessManager.Processes, inner),
                (count) => void (pruned = count)
              )
        )
    })
    return pruned
  })

/** `manager` handles an `OrderPlaced` of `orderId`, as its follower would. */
export const started = (manager: ProcessManager.Any, orderId: string) =>
  Effect.flatMap(
    envelopeOf(new OrderPlaced({ orderId, amount: 5 })),
    (envelope) => reactionOf(manager, "OrderPlaced").handle(envelope)
  )

/** `manager` handles a `PaymentReceived` of `orderId`, as its follower would. */
export const paid = (manager: ProcessManager.Any, orderId: string) =>
  Effect.flatMap(
    envelopeOf(new PaymentReceived({ orderId })),
    (envelope) => reactionOf(manager, "PaymentReceived").handle(envelope)
  )
