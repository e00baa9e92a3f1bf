import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import { createHash } from "node:crypto"
import {
  Command,
  CommandBus,
  CommandError,
  DomainEvent,
  EventPublisher,
  Handler,
  Idempotency,
  Outbox,
  Reaction
} from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import * as Metrics from "./support/Metrics.js"
import { recordingTracer } from "./support/Tracing.js"

// -----------------------------------------------------------------------------
// a small process: an order placed is paid for
// -----------------------------------------------------------------------------

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", {
  orderId: Schema.String,
  amount: Schema.Int
}) {}

class PaymentTaken extends DomainEvent.Class<PaymentTaken>()("PaymentTaken", { orderId: Schema.String }) {}

class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}

class PlaceOrder extends Command.Class<PlaceOrder>()("PlaceOrder", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class TakePayment extends Command.Class<TakePayment>()("TakePayment", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ orderId: Schema.String }),
  failure: CardDeclined
}) {}

const makeBus = (payments: Queue.Queue<TakePayment>) =>
  CommandBus.make([PlaceOrder, TakePayment], {
    PlaceOrder: (command) =>
      Effect.succeed(Handler.result(undefined, [
        DomainEvent.draft(
          { aggregateType: "Order", aggregateId: command.orderId, aggregateVersion: 1 },
          new OrderPlaced({ orderId: command.orderId, amount: command.amount })
        )
      ])),
    TakePayment: (command) =>
      Effect.zipRight(
        Queue.offer(payments, command),
        command.amount > 1000
          ? Effect.fail(new CardDeclined({ orderId: command.orderId }))
          : Effect.succeed(Handler.result({ orderId: command.orderId }, [
            DomainEvent.draft(
              { aggregateType: "Payment", aggregateId: command.orderId, aggregateVersion: 1 },
              new PaymentTaken({ orderId: command.orderId })
            )
          ]))
      )
  }).pipe(CommandBus.withMiddleware(Idempotency.middleware()))

const envelopeOf = (type: string, payload: unknown) =>
  new DomainEvent.Envelope({
    eventId: crypto.randomUUID(),
    type,
    aggregateType: "Order",
    aggregateId: "o-1",
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: crypto.randomUUID(),
    causationId: crypto.randomUUID(),
    payload
  })

const publish = (...envelopes: ReadonlyArray<DomainEvent.Envelope>) =>
  Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.publish(envelopes))

/** Log lines as `message` / annotations, for the assertions. */
const capturedLogs = () => {
  const lines: Array<{ readonly message: string; readonly annotations: Record<string, unknown> }> = []
  const logger = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ annotations, message }) =>
      lines.push({
        message: String(Array.isArray(message) ? message[0] : message),
        annotations: Object.fromEntries(annotations)
      })
    )
  )
  return { lines, logger }
}

describe("Reaction", () => {
  it.scoped("runs the reactions of each event published, decoded, in publish order, and no others", () =>
    Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const reactions = [
        Reaction.make(OrderPlaced, (event, envelope) => {
          assert.instanceOf(event, OrderPlaced)
          return Queue.offer(seen, `placed ${event.orderId} ${event.amount} v${envelope.aggregateVersion}`)
        }),
        Reaction.make(OrderPlaced, (event) => Queue.offer(seen, `again ${event.orderId}`), { name: "second" }),
        Reaction.make(PaymentTaken, (event) => Queue.offer(seen, `paid ${event.orderId}`))
      ]
      yield* Reaction.start(reactions)
      const bus = makeBus(yield* Queue.unbounded<TakePayment>())
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-1", amount: 5 }))
      yield* publish(envelopeOf("SomethingElse", { x: 1 }))
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-2", amount: 7 }))
      const got = []
      for (let i = 0; i < 4; i++) got.push(yield* Queue.take(seen))
      assert.deepStrictEqual(got, ["placed o-1 5 v1", "again o-1", "placed o-2 7 v1", "again o-2"])
      assert.strictEqual(yield* Queue.size(seen), 0)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("dispatch: the follow-up command carries the event's correlation, and a redelivery runs it once", () =>
    Effect.gen(function*() {
      const payments = yield* Queue.unbounded<TakePayment>()
      const bus = makeBus(payments)
      const outcomes = yield* Queue.unbounded<string>()
      yield* Reaction.start([
        Reaction.dispatch(
          OrderPlaced,
          bus,
          (event, followUp) => new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }),
          { name: "pay" }
        ),
        // Runs after the payment reaction of the same event.
        Reaction.make(OrderPlaced, (event) => Queue.offer(outcomes, event.orderId))
      ])
      const placed = envelopeOf("OrderPlaced", { orderId: "o-9", amount: 40 })
      // The relay publishing it again after a crash.
      yield* publish(placed, placed)
      assert.deepStrictEqual([yield* Queue.take(outcomes), yield* Queue.take(outcomes)], ["o-9", "o-9"])

      const paid = yield* Queue.takeAll(payments)
      assert.strictEqual(paid.length, 1, "the handler ran once")
      const [payment] = paid
      assert.strictEqual(payment!.correlationId, placed.correlationId)
      assert.strictEqual(payment!.causationId, placed.eventId)
      assert.strictEqual(payment!.idempotencyKey, `pay:${placed.eventId}`)
      assert.strictEqual(payment!.amount, 40)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("dispatch: a name too long for a key keys by its digest, and still runs the command once per event", () =>
    Effect.gen(function*() {
      const payments = yield* Queue.unbounded<TakePayment>()
      const bus = makeBus(payments)
      const name = `billing/${"x".repeat(240)}`
      const done = yield* Queue.unbounded<string>()
      yield* Reaction.start([
        Reaction.dispatch(OrderPlaced, bus, (event, followUp) => new TakePayment({ ...event, ...followUp }), { name }),
        Reaction.make(OrderPlaced, (event) => Queue.offer(done, event.orderId), { name: "done" })
      ])
      const placed = envelopeOf("OrderPlaced", { orderId: "o-long", amount: 40 })
      yield* publish(placed, placed)
      assert.deepStrictEqual([yield* Queue.take(done), yield* Queue.take(done)], ["o-long", "o-long"])
      const paid = yield* Queue.takeAll(payments)
      assert.strictEqual(paid.length, 1, "the handler ran once")
      const digest = createHash("sha256").update(name).digest("hex")
      assert.strictEqual([...paid][0]!.idempotencyKey, `sha256-${digest}:${placed.eventId}`)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("dispatch: a failure the command declares is its outcome: not retried, kept as a dead letter at once", () =>
    Effect.gen(function*() {
      const payments = yield* Queue.unbounded<TakePayment>()
      const bus = makeBus(payments)
      const pay = Reaction.dispatch(
        OrderPlaced,
        bus,
        (event, followUp) => new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }),
        { name: "pay" }
      )
      const seen = yield* Queue.unbounded<string>()
      const outbox = yield* Outbox.Outbox
      // Default retry (exponential from 100 ms): a retry would wait on the
      // test clock, which does not move here.
      yield* Reaction.follow("payments", [pay, Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId))])
      const declined = envelopeOf("OrderPlaced", { orderId: "o-big", amount: 5000 })
      yield* outbox.append([declined, envelopeOf("OrderPlaced", { orderId: "o-small", amount: 5 })])
      assert.deepStrictEqual([yield* Queue.take(seen), yield* Queue.take(seen)], ["o-big", "o-small"])
      assert.deepStrictEqual([...yield* Queue.takeAll(payments)].map((payment) => payment.orderId), [
        "o-big",
        "o-small"
      ])
      const [letter, ...others] = yield* Effect.flatMap(Reaction.DeadLetters, (letters) => letters.list("payments"))
      assert.deepStrictEqual(others, [])
      assert.deepStrictEqual([letter!.reaction, letter!.event.eventId, letter!.attempts], ["pay", declined.eventId, 1])
      assert.match(letter!.reason, /CardDeclined/)
      // An error the bus adds (not the command's) is still retried.
      assert.isTrue(pay.retryable!(new CommandError.StoreUnavailable({ store: "s", reason: "r" })))
      assert.isFalse(pay.retryable!(new CardDeclined({ orderId: "o" })))
      // Nor are refusals no rerun changes, though the command does not declare them: its business rules, its key.
      assert.isFalse(pay.retryable!(
        new CommandError.CommandValidationError({
          commandType: "TakePayment",
          issues: [new Command.ValidationIssue({ path: ["amount"], message: "too much" })]
        })
      ))
      assert.isFalse(pay.retryable!(new Idempotency.IdempotencyKeyMismatch({ idempotencyKey: "k" })))
      assert.isFalse(pay.retryable!(new CommandError.Forbidden({ reason: "requires role admin" })))
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.effect("dispatch: a failure is judged by the command that failed, not by another command of the bus", () =>
    Effect.gen(function*() {
      // One tag, retryable for one command and an outcome of the other.
      class Settle extends Command.Class<Settle>()("Settle", {
        payload: { orderId: Schema.String },
        success: Schema.Void,
        failure: CommandError.ConcurrencyConflict,
        retryable: ["ConcurrencyConflict"]
      }) {}
      class Audit extends Command.Class<Audit>()("Audit", {
        payload: { orderId: Schema.String },
        success: Schema.Void,
        failure: CommandError.ConcurrencyConflict
      }) {}
      const conflict = (orderId: string) =>
        Effect.fail(
          new CommandError.ConcurrencyConflict({ aggregateType: "Order", aggregateId: orderId, expectedVersion: 1 })
        )
      const bus = CommandBus.make([Settle, Audit], {
        Settle: (command) => conflict(command.orderId),
        Audit: (command) => conflict(command.orderId)
      })
      const settle = Reaction.dispatch(
        OrderPlaced,
        bus,
        (event, followUp) => new Settle({ orderId: event.orderId, ...followUp }),
        { name: "settle" }
      )
      const audit = Reaction.dispatch(
        OrderPlaced,
        bus,
        (event, followUp) => new Audit({ orderId: event.orderId, ...followUp }),
        { name: "audit" }
      )
      const placed = envelopeOf("OrderPlaced", { orderId: "o-1", amount: 5 })
      assert.isTrue(settle.retryable!(yield* Effect.flip(settle.handle(placed))), "Settle marks it retryable")
      assert.isFalse(audit.retryable!(yield* Effect.flip(audit.handle(placed))), "Audit's outcome")
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("dispatch: a key left in flight by a crashed run is waited out, then the command runs, not a dead letter", () =>
    Effect.gen(function*() {
      const payments = yield* Queue.unbounded<TakePayment>()
      const pay = Reaction.dispatch(
        OrderPlaced,
        makeBus(payments),
        (event, followUp) => new TakePayment({ orderId: event.orderId, amount: event.amount, ...followUp }),
        { name: "pay" }
      )
      const placed = envelopeOf("OrderPlaced", { orderId: "o-1", amount: 5 })
      // A process that crashed while running this event's payment left its claim.
      const store = yield* Idempotency.IdempotencyStore
      yield* store.claim({
        scope: "",
        key: `pay:${placed.eventId}`,
        fingerprint: yield* Command.fingerprint(TakePayment, new TakePayment({ orderId: "o-1", amount: 5 })),
        commandType: "TakePayment",
        lease: Duration.minutes(1),
        retention: Duration.hours(24)
      })
      yield* Reaction.follow("payments", [pay])
      yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.append([placed]))
      yield* TestClock.adjust("30 seconds")
      assert.strictEqual(yield* Queue.size(payments), 0, "in flight: not run yet")
      yield* TestClock.adjust("40 seconds")
      assert.strictEqual((yield* Queue.take(payments)).orderId, "o-1")
      assert.deepStrictEqual(yield* Effect.flatMap(Reaction.DeadLetters, (letters) => letters.list("payments")), [])
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("a failing reaction is retried on its schedule, then logged; the next event still runs", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      const attempts = new Map<string, number>()
      const done = yield* Queue.unbounded<string>()
      const reaction = Reaction.make(OrderPlaced, (event) =>
        Effect.suspend(() => {
          const attempt = (attempts.get(event.orderId) ?? 0) + 1
          attempts.set(event.orderId, attempt)
          // "flaky" succeeds on its third attempt; "broken" never does.
          if (event.orderId === "broken" || attempt < 3) {
            return Effect.fail(new CardDeclined({ orderId: event.orderId }))
          }
          return Queue.offer(done, event.orderId)
        }), { name: "charge" })
      const schedule = Schedule.spaced("1 second").pipe(Schedule.intersect(Schedule.recurs(3)))
      const runner = yield* Reaction.start([reaction], { retry: schedule }).pipe(Effect.provide(logger))
      const broken = envelopeOf("OrderPlaced", { orderId: "broken", amount: 1 })
      yield* publish(broken, envelopeOf("OrderPlaced", { orderId: "flaky", amount: 1 }))
      // The broken event: 1 run + 3 retries, a second apart.
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual(attempts.get("broken"), 4)
      // Given up on, it leaves the stream to the flaky one, whose first
      // attempt fails at once; its third, 2 seconds later, succeeds.
      assert.strictEqual(attempts.get("flaky"), 1)
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual(yield* Queue.take(done), "flaky")
      assert.strictEqual(attempts.get("flaky"), 3)

      const failed = lines.filter((line) => line.message === "reaction.failed")
      assert.strictEqual(failed.length, 1)
      assert.deepInclude(failed[0]!.annotations, {
        reaction: "charge",
        eventType: "OrderPlaced",
        eventId: broken.eventId,
        correlationId: broken.correlationId
      })
      assert.isNull(runner.unsafePoll(), "still running")
      yield* Fiber.interrupt(runner)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("onFailure is told of each reaction that failed after its retries; its own failure stops nothing", () =>
    Effect.gen(function*() {
      const told: Array<string> = []
      const done = yield* Queue.unbounded<string>()
      const reaction = Reaction.make(OrderPlaced, (event) =>
        event.orderId === "broken"
          ? Effect.fail(new CardDeclined({ orderId: event.orderId }))
          : Queue.offer(done, event.orderId), { name: "charge" })
      const { logger } = capturedLogs()
      yield* Reaction.start([reaction], {
        retry: Schedule.recurs(1),
        onFailure: ({ cause, event, reaction }) =>
          Effect.suspend(() => {
            told.push(
              `${reaction} ${event.eventId} ${
                (Option.getOrUndefined(Cause.failureOption(cause)) as { _tag?: string } | undefined)?._tag
              }`
            )
            return told.length === 1 ? Effect.dieMessage("the alert failed too") : Effect.void
          })
      }).pipe(Effect.provide(logger))
      const first = envelopeOf("OrderPlaced", { orderId: "broken", amount: 1 })
      const second = envelopeOf("OrderPlaced", { orderId: "broken", amount: 2 })
      yield* publish(first, second, envelopeOf("OrderPlaced", { orderId: "fine", amount: 3 }))
      assert.strictEqual(yield* Queue.take(done), "fine")
      assert.deepStrictEqual(told, [`charge ${first.eventId} CardDeclined`, `charge ${second.eventId} CardDeclined`])
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("a payload its schema does not decode is logged as undecodable, not retried, and skipped", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      let runs = 0
      const done = yield* Queue.unbounded<string>()
      // `run` in a fiber of its own: subscribed once that fiber has started.
      yield* Effect.forkScoped(
        Reaction.run([
          Reaction.make(
            OrderPlaced,
            (event) => Effect.zipRight(Effect.sync(() => runs++), Queue.offer(done, event.orderId))
          )
        ]).pipe(Effect.provide(logger))
      )
      yield* Effect.yieldNow()
      const bad = envelopeOf("OrderPlaced", { orderId: 5, amount: "many" })
      yield* publish(bad, envelopeOf("OrderPlaced", { orderId: "fine", amount: 1 }))
      assert.strictEqual(yield* Queue.take(done), "fine")
      assert.strictEqual(runs, 1)
      const undecodable = lines.filter((line) => line.message === "reaction.undecodable")
      assert.strictEqual(undecodable.length, 1)
      assert.strictEqual(undecodable[0]!.annotations.eventId, bad.eventId)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("follow: a batchSize that is no positive integer is refused when it starts, naming the option", () =>
    Effect.gen(function*() {
      for (const batchSize of [0, -1, 1.5, Number.NaN]) {
        const exit = yield* Effect.exit(Reaction.follow("orders", [], { batchSize }))
        assert.isTrue(Exit.isFailure(exit))
        assert.include(
          String(Exit.isFailure(exit) && exit.cause),
          "Reaction.follow: batchSize must be a positive integer"
        )
      }
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("follow: a lease under 1 second is refused when it starts", () =>
    Effect.gen(function*() {
      for (const lease of [0, "999 millis"] as const) {
        const exit = yield* Effect.exit(Reaction.follow("orders", [], { lease }))
        assert.include(String(Exit.isFailure(exit) && exit.cause), "Reaction.follow: lease must be at least 1 second")
      }
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.effect("the memory checkpoints lease a name as the SQL ones do: by owner, until it lapses or is released", () =>
    Effect.gen(function*() {
      const checkpoints = yield* Reaction.Checkpoints
      const claim = (owner: string) => checkpoints.claim!("n", owner, Duration.seconds(10))
      assert.deepStrictEqual([yield* claim("a"), yield* claim("a"), yield* claim("b")], [true, true, false])
      yield* TestClock.adjust("10 seconds")
      assert.deepStrictEqual([yield* claim("b"), yield* claim("a")], [true, false])
      yield* checkpoints.release!("n", "a")
      assert.isFalse(yield* claim("a"))
      yield* checkpoints.release!("n", "b")
      assert.isTrue(yield* claim("a"))
    }).pipe(Effect.provide(Reaction.layerCheckpointsMemory)))

  it.scoped("start, follow and redrive refuse two reactions of one name, which would share keys and dead letters", () =>
    Effect.gen(function*() {
      const payments = yield* Queue.unbounded<TakePayment>()
      const bus = makeBus(payments)
      // Both unnamed: both `on OrderPlaced`.
      const pay = Reaction.dispatch(OrderPlaced, bus, (event, followUp) => new TakePayment({ ...event, ...followUp }))
      const log = Reaction.make(OrderPlaced, () => Effect.void)
      for (
        const [where, attempt] of [
          ["Reaction.start", Reaction.start([pay, log])],
          ["Reaction.follow", Reaction.follow("orders", [pay, log])],
          ["Reaction.redrive", Reaction.redrive("orders", [pay, log])]
        ] as const
      ) {
        const exit = yield* Effect.exit(attempt as Effect.Effect<unknown, unknown>)
        assert.isTrue(Exit.isFailure(exit))
        assert.include(String(Exit.isFailure(exit) && exit.cause), `${where}: two reactions are named "on OrderPlaced"`)
      }
      // Named apart, they run side by side.
      yield* Reaction.start([pay, Reaction.make(OrderPlaced, () => Effect.void, { name: "log" })])
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.effect("redrive: letters of reactions not given do not count against the limit; the redrive reads past them", () =>
    Effect.gen(function*() {
      const deadLetters = yield* Reaction.DeadLetters
      for (let n = 1; n <= 12; n++) {
        yield* deadLetters.add({
          follower: "payments",
          reaction: n <= 8 ? "ship" : "pay",
          position: n,
          event: envelopeOf("OrderPlaced", { orderId: `o-${n}`, amount: 1 }),
          reason: "down"
        })
      }
      const paid: Array<string> = []
      const pay = Reaction.make(OrderPlaced, (event) => Effect.sync(() => void paid.push(event.orderId)), {
        name: "pay"
      })
      assert.deepStrictEqual(yield* Reaction.redrive("payments", [pay], { limit: 3 }), {
        resolved: 3,
        failed: 0,
        unmatched: 8,
        held: 0
      })
      assert.deepStrictEqual(paid, ["o-9", "o-10", "o-11"])
      assert.deepStrictEqual(yield* Reaction.redrive("payments", [pay], { limit: 3 }), {
        resolved: 1,
        failed: 0,
        unmatched: 8,
        held: 0
      })
      assert.deepStrictEqual((yield* deadLetters.list("payments")).map((letter) => letter.reaction), [
        ...new Array<string>(8).fill("ship")
      ])
    }).pipe(Effect.provide(Reaction.layerDeadLettersMemory)))

  it.effect("redrive reads each letter once, in pages from the last one looked at, past any number not run", () =>
    Effect.gen(function*() {
      const memory = yield* Reaction.DeadLetters
      let rows = 0
      const counting: Reaction.DeadLetterStore = {
        ...memory,
        list: (follower, options) => Effect.tap(memory.list(follower, options), (page) => void (rows += page.length))
      }
      for (let n = 1; n <= 1000; n++) {
        yield* memory.add({
          follower: "f",
          reaction: n === 1000 ? "mine" : "other",
          position: n,
          event: envelopeOf("OrderPlaced", { orderId: `o-${n}`, amount: 1 }),
          reason: "down"
        })
      }
      const mine = Reaction.make(OrderPlaced, () => Effect.void, { name: "mine" })
      const redriven = yield* Reaction.redrive("f", [mine], { limit: 1 }).pipe(
        Effect.provideService(Reaction.DeadLetters, counting)
      )
      assert.deepStrictEqual(redriven, { resolved: 1, failed: 0, unmatched: 999, held: 0 })
      assert.isAtMost(rows, 1000)
      // A store that does not page (one ignoring `after`) ends the redrive rather than loop.
      const notPaging: Reaction.DeadLetterStore = {
        ...memory,
        list: (follower, options) =>
          memory.list(follower, { ...(options?.limit === undefined ? {} : { limit: options.limit }) })
      }
      const once = yield* Reaction.redrive("f", [mine], { limit: 1 }).pipe(
        Effect.provideService(Reaction.DeadLetters, notPaging)
      )
      assert.deepStrictEqual(once, { resolved: 0, failed: 0, unmatched: 100, held: 0 })
    }).pipe(Effect.provide(Reaction.layerDeadLettersMemory)))

  it.scoped("follow: catches up on the log from its checkpoint, then follows; a restart does not run events again", () =>
    Effect.gen(function*() {
      const bus = makeBus(yield* Queue.unbounded<TakePayment>())
      const seen = yield* Queue.unbounded<string>()
      const reactions = [Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId))]
      // Appended to the log before any follower runs.
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-1", amount: 1 }))
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-2", amount: 1 }))

      const first = yield* Scope.make()
      yield* Reaction.follow("orders", reactions, { batchSize: 1 }).pipe(Scope.extend(first))
      assert.deepStrictEqual([yield* Queue.take(seen), yield* Queue.take(seen)], ["o-1", "o-2"])
      yield* bus.dispatch(new PlaceOrder({ orderId: "o-3", amount: 1 }))
      assert.strictEqual(yield* Queue.take(seen), "o-3")
      const checkpoints = yield* Reaction.Checkpoints
      assert.strictEqual(yield* checkpoints.load("orders"), 3)
      yield* Scope.close(first, Exit.void)

      yield* bus.dispatch(new PlaceOrder({ orderId: "o-4", amount: 1 }))
      yield* Reaction.follow("orders", reactions)
      assert.strictEqual(yield* Queue.take(seen), "o-4")
      assert.strictEqual(yield* checkpoints.load("orders"), 4)
      assert.strictEqual(yield* Queue.size(seen), 0)
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("follow: a reaction that still fails becomes a dead letter and the follower goes on; redrive runs it again", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      const seen = yield* Queue.unbounded<string>()
      let declining = true
      let runs = 0
      const charge = Reaction.make(
        OrderPlaced,
        (event) =>
          Effect.suspend((): Effect.Effect<unknown, CardDeclined> => {
            runs++
            return declining && event.amount > 1000
              ? Effect.fail(new CardDeclined({ orderId: event.orderId }))
              : Queue.offer(seen, event.orderId)
          }),
        { name: "charge" }
      )
      const big = envelopeOf("OrderPlaced", { orderId: "o-big", amount: 5000 })
      const broken = envelopeOf("OrderPlaced", { orderId: 5, amount: "many" })
      const outbox = yield* Outbox.Outbox
      yield* outbox.append([big, broken, envelopeOf("OrderPlaced", { orderId: "o-after", amount: 1 })])
      const { spans, tracer } = yield* recordingTracer
      yield* Reaction.follow("payments", [charge], { retry: Schedule.recurs(2) }).pipe(
        Effect.provide(logger),
        Effect.withTracer(tracer)
      )
      assert.strictEqual(yield* Queue.take(seen), "o-after")
      assert.strictEqual(runs, 3 + 1, "the declined one tried three times, the undecodable one never reached it")
      // The checkpoint moved past the failures: it is saved before the next event runs.
      yield* outbox.append([envelopeOf("OrderPlaced", { orderId: "o-next", amount: 1 })])
      assert.strictEqual(yield* Queue.take(seen), "o-next")
      assert.isAtLeast(yield* Effect.flatMap(Reaction.Checkpoints, (checkpoints) => checkpoints.load("payments")), 3)

      const deadLetters = yield* Reaction.DeadLetters
      const letters = yield* deadLetters.list("payments")
      assert.deepStrictEqual(
        letters.map((letter) => [letter.position, letter.reaction, letter.event.eventId, letter.attempts]),
        [[1, "charge", big.eventId, 1], [2, "charge", broken.eventId, 1]]
      )
      assert.match(letters[0]!.reason, /CardDeclined/)
      assert.match(letters[1]!.reason, /^Undecodable: /)
      assert.deepStrictEqual(letters[0]!.event, big)
      assert.deepStrictEqual(yield* deadLetters.list("someone-else"), [])
      // One span per reaction to an event, its retries included, failed or not.
      const reacted = spans.filter((span) => span.name === "Reaction charge")
      const outcomes = reacted.map((span) => span.status._tag === "Ended" ? span.status.exit._tag : "open")
      assert.deepStrictEqual(outcomes, ["Failure", "Failure", "Success", "Success"])
      assert.deepStrictEqual(reacted.slice(0, 2).map((span) => span.attributes.get("event.id")), [
        big.eventId,
        broken.eventId
      ])
      assert.deepStrictEqual(
        lines.filter((line) => line.message.startsWith("reaction.")).map((line) => [
          line.message,
          line.annotations.eventId
        ]),
        [["reaction.failed", big.eventId], ["reaction.undecodable", broken.eventId]]
      )

      // The cause fixed, a redrive runs the declined one; the undecodable one fails again.
      declining = false
      assert.deepStrictEqual(yield* Reaction.redrive("payments", [charge]), {
        resolved: 1,
        failed: 1,
        unmatched: 0,
        held: 0
      })
      assert.strictEqual(yield* Queue.take(seen), "o-big")
      const left = yield* deadLetters.list("payments")
      assert.deepStrictEqual(left.map((letter) => [letter.event.eventId, letter.attempts]), [[broken.eventId, 2]])
      assert.isTrue(DateTime.greaterThanOrEqualTo(left[0]!.lastFailedAt, left[0]!.firstFailedAt))
      // A letter whose reaction is not given is left alone; removing drops it.
      assert.deepStrictEqual(yield* Reaction.redrive("payments", []), {
        resolved: 0,
        failed: 0,
        unmatched: 1,
        held: 0
      })
      yield* deadLetters.remove("payments", "charge", broken.eventId)
      assert.deepStrictEqual(yield* deadLetters.list("payments"), [])
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("follow with aggregate sequencing: an aggregate's later events wait behind its dead letter, in order", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      const seen = yield* Queue.unbounded<string>()
      const all = yield* Queue.unbounded<string>()
      let failing = new Set(["a-1"])
      const ship = Reaction.make(
        OrderPlaced,
        (event) =>
          failing.has(event.orderId)
            ? Effect.fail(new CardDeclined({ orderId: event.orderId }))
            : Queue.offer(seen, event.orderId),
        { name: "ship" }
      )
      // Another reaction to the same events has sequences of its own.
      const audit = Reaction.make(OrderPlaced, (event) => Queue.offer(all, event.orderId), { name: "audit" })
      const on = (aggregateId: string, orderId: string) =>
        new DomainEvent.Envelope({ ...envelopeOf("OrderPlaced", { orderId, amount: 1 }), aggregateId })
      const events = [on("A", "a-1"), on("A", "a-2"), on("B", "b-1"), on("A", "a-3")]
      const outbox = yield* Outbox.Outbox
      yield* outbox.append(events)
      yield* Reaction.follow("shipping", [ship, audit], { retry: Schedule.recurs(0), sequencing: "aggregate" }).pipe(
        Effect.provide(logger)
      )
      assert.strictEqual(yield* Queue.take(seen), "b-1")
      assert.deepStrictEqual([...yield* Queue.takeN(all, 4)], ["a-1", "a-2", "b-1", "a-3"])
      // Once b-1 ran, the later a-3 follows; one more event on B shows a-3 is behind us.
      yield* outbox.append([on("B", "b-2")])
      assert.strictEqual(yield* Queue.take(seen), "b-2")
      const deadLetters = yield* Reaction.DeadLetters
      const letters = yield* deadLetters.list("shipping")
      assert.deepStrictEqual(
        letters.map((letter) => [letter.reaction, letter.position, letter.reason.split(":")[0]]),
        [["ship", 1, "CardDeclined"], ["ship", 2, "Parked"], ["ship", 4, "Parked"]]
      )
      assert.deepStrictEqual(yield* deadLetters.sequences("shipping"), [
        { reaction: "ship", aggregateType: "Order", aggregateId: "A", position: 1 }
      ])
      assert.strictEqual(lines.filter((line) => line.message === "reaction.parked").length, 2)
      const runs = (outcome: string) => Metrics.count("command_bus_reactions_total", { reaction: "ship", outcome })
      assert.deepStrictEqual([yield* runs("success"), yield* runs("failed"), yield* runs("parked")], [2, 1, 2])
      assert.strictEqual(
        yield* Metrics.count("command_bus_reaction_dead_letters_total", { follower: "shipping", reaction: "ship" }),
        3
      )

      // Still failing: the first stays, and holds the rest back without running them.
      const redrive = Reaction.redrive("shipping", [ship], { sequencing: "aggregate", retry: Schedule.recurs(0) })
      assert.deepStrictEqual(yield* redrive, { resolved: 0, failed: 1, unmatched: 0, held: 2 })
      assert.strictEqual(yield* Queue.size(seen), 0)
      // Fixed: all three run, in the aggregate's order.
      failing = new Set()
      assert.deepStrictEqual(yield* redrive, { resolved: 3, failed: 0, unmatched: 0, held: 0 })
      assert.deepStrictEqual([yield* runs("success"), yield* runs("failed"), yield* runs("parked")], [5, 2, 2])
      assert.deepStrictEqual([...yield* Queue.takeAll(seen)], ["a-1", "a-2", "a-3"])
      assert.deepStrictEqual(yield* deadLetters.sequences("shipping"), [])
      // Unblocked, the follower runs the aggregate's new events again.
      yield* outbox.append([on("A", "a-4")])
      assert.strictEqual(yield* Queue.take(seen), "a-4")
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("follow: while failures cannot be recorded, the checkpoint stays before them and the event runs again", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      let down = true
      const attempts = yield* Queue.unbounded<number>()
      const recorded = yield* Queue.unbounded<string>()
      const store = Layer.succeed(Reaction.DeadLetters, {
        add: (failure) =>
          down
            ? Effect.fail(new CommandError.StoreUnavailable({ store: "dead letters", reason: "down" }))
            : Queue.offer(recorded, failure.event.eventId),
        list: () => Effect.succeed([]),
        remove: () => Effect.void,
        sequences: () => Effect.succeed([])
      })
      let runs = 0
      const declineAll = Reaction.make(
        OrderPlaced,
        (event) =>
          Effect.zipRight(
            Queue.offer(attempts, ++runs),
            Effect.fail(new CardDeclined({ orderId: event.orderId }))
          )
      )
      const failing = envelopeOf("OrderPlaced", { orderId: "o-1", amount: 1 })
      const outbox = yield* Outbox.Outbox
      const checkpoints = yield* Reaction.Checkpoints
      yield* Reaction.follow("f", [declineAll], { retry: Schedule.recurs(0) }).pipe(
        Effect.provide([store, logger])
      )
      yield* outbox.append([failing])
      assert.strictEqual(yield* Queue.take(attempts), 1)
      // Woken again (the store still down): the event runs again, the checkpoint has not moved.
      yield* publish(envelopeOf("Unrelated", {}))
      assert.strictEqual(yield* Queue.take(attempts), 2)
      assert.strictEqual(yield* checkpoints.load("f"), 0)
      down = false
      yield* publish(envelopeOf("Unrelated", {}))
      assert.strictEqual(yield* Queue.take(attempts), 3)
      assert.strictEqual(yield* Queue.take(recorded), failing.eventId)
      assert.isAtLeast(lines.filter((line) => line.message === "reaction.store-unavailable").length, 2)
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory])))

  it.scoped("replay: a follower runs again over the log from the position it is reset to", () =>
    Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const reactions = [Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId))]
      const outbox = yield* Outbox.Outbox
      yield* outbox.append(["o-1", "o-2", "o-3"].map((orderId) => envelopeOf("OrderPlaced", { orderId, amount: 1 })))
      const first = yield* Scope.make()
      yield* Reaction.follow("projection", reactions).pipe(Scope.extend(first))
      assert.deepStrictEqual([...yield* Queue.takeN(seen, 3)], ["o-1", "o-2", "o-3"])
      yield* Scope.close(first, Exit.void)

      const checkpoints = yield* Reaction.Checkpoints
      yield* Reaction.replay("projection", { after: 1 })
      assert.strictEqual(yield* checkpoints.load("projection"), 1)
      yield* Reaction.follow("projection", reactions)
      assert.deepStrictEqual([...yield* Queue.takeN(seen, 2)], ["o-2", "o-3"])
      yield* Reaction.replay("elsewhere")
      assert.strictEqual(yield* checkpoints.load("elsewhere"), 0)
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("replay: an after that is no position (negative, fractional) is refused, and the follower still runs", () =>
    Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const checkpoints = yield* Reaction.Checkpoints
      yield* checkpoints.save("projection", 1)
      for (const after of [-1, 1.5, Number.NaN]) {
        const exit = yield* Effect.exit(Reaction.replay("projection", { after }))
        assert.include(
          String(Exit.isFailure(exit) && exit.cause),
          "Reaction.replay: after must be a non-negative integer"
        )
      }
      // A checkpoint set to -1 once left its follower failing every read of the log, unseen by the caller.
      assert.strictEqual(yield* checkpoints.load("projection"), 1)
      const outbox = yield* Outbox.Outbox
      yield* outbox.append(["o-1", "o-2"].map((orderId) => envelopeOf("OrderPlaced", { orderId, amount: 1 })))
      yield* Reaction.follow("projection", [Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId))])
      assert.strictEqual(yield* Queue.take(seen), "o-2")
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it.scoped("upcast: an event stored by an earlier schema is rewritten before it is decoded", () =>
    Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      // Version 1 of OrderPlaced called the amount "total".
      const stored = envelopeOf("OrderPlaced", { orderId: "o-old", total: 42 })
      const upcast = (payload: unknown) => {
        const { total, ...rest } = payload as { readonly total?: unknown }
        return total === undefined ? payload : { ...rest, amount: total }
      }
      const { lines, logger } = capturedLogs()
      yield* Reaction.start([
        Reaction.make(OrderPlaced, (event) => Queue.offer(seen, `${event.orderId} ${event.amount}`), { upcast }),
        Reaction.make(OrderPlaced, () => Effect.void, { name: "no upcast" })
      ]).pipe(Effect.provide(logger))
      yield* publish(stored, envelopeOf("OrderPlaced", { orderId: "o-new", amount: 7 }))
      assert.deepStrictEqual([...yield* Queue.takeN(seen, 2)], ["o-old 42", "o-new 7"])
      assert.deepStrictEqual(
        lines.filter((line) => line.message === "reaction.undecodable").map((line) => line.annotations.reaction),
        ["no upcast"]
      )
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("follow: a store that dies (a refused statement, not an outage) is logged as an error; the follower goes on", () =>
    Effect.gen(function*() {
      const { lines, logger } = capturedLogs()
      const seen = yield* Queue.unbounded<string>()
      let deaths = 1
      const dyingOnce = Layer.effect(
        Reaction.Checkpoints,
        Effect.map(Reaction.Checkpoints, (checkpoints) => ({
          ...checkpoints,
          load: (name: string) =>
            deaths-- > 0 ? Effect.dieMessage("22021: invalid byte sequence") : checkpoints.load(name)
        }))
      ).pipe(Layer.provide(Reaction.layerCheckpointsMemory))
      yield* Reaction.follow("dying", [Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId))]).pipe(
        Effect.provide([dyingOnce, logger])
      )
      yield* Effect.flatMap(
        Outbox.Outbox,
        (outbox) => outbox.append([envelopeOf("OrderPlaced", { orderId: "o-1", amount: 1 })])
      )
      // A defect once ended the follower's fiber, unseen; now it waits and reads again.
      assert.strictEqual(yield* Queue.take(seen), "o-1")
      assert.deepStrictEqual(lines.filter((line) => line.message === "reaction.store-failed").length, 1)
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerDeadLettersMemory])))

  it.scoped("upcast: one that throws leaves its event an undecodable dead letter, and the follower goes on", () =>
    Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const upcast = (payload: unknown) => {
        if ((payload as { readonly orderId?: unknown }).orderId === "o-odd") throw new Error("an unexpected shape")
        return payload
      }
      const outbox = yield* Outbox.Outbox
      yield* outbox.append([
        envelopeOf("OrderPlaced", { orderId: "o-odd", amount: 1 }),
        envelopeOf("OrderPlaced", { orderId: "o-next", amount: 2 })
      ])
      yield* Reaction.follow("upcasting", [
        Reaction.make(OrderPlaced, (event) => Queue.offer(seen, event.orderId), { name: "upcasting", upcast })
      ])
      assert.strictEqual(yield* Queue.take(seen), "o-next")
      const [letter, ...others] = yield* Effect.flatMap(Reaction.DeadLetters, (letters) => letters.list("upcasting"))
      assert.deepStrictEqual(others, [])
      assert.strictEqual(letter?.reason, "Undecodable: its upcast threw: an unexpected shape")
    }).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))

  it("Command.causedBy: a command's follow-up keeps its correlation and names it as the cause", () => {
    const first = new PlaceOrder({ orderId: "o-1", amount: 1 })
    const next = new TakePayment({ orderId: "o-1", amount: 1, ...Command.causedBy(first) })
    assert.strictEqual(next.correlationId, first.correlationId)
    assert.strictEqual(next.causationId, first.commandId)
    assert.notStrictEqual(next.commandId, first.commandId)
  })
})
