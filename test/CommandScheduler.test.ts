import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { Command, CommandBus, CommandError, CommandScheduler, Handler } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import * as Metrics from "./support/Metrics.js"
import { recordingTracer } from "./support/Tracing.js"

class CardDeclined extends Schema.TaggedError<CardDeclined>()("CardDeclined", { orderId: Schema.String }) {}

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Charge extends Command.Class<Charge>()("Charge", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Union(CardDeclined, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"]
}) {}

class Refund extends Command.Class<Refund>()("Refund", {
  payload: { orderId: Schema.String, amount: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never,
  validate: ({ amount }) =>
    amount > 0 ? [] : [new Command.ValidationIssue({ path: ["amount"], message: "a refund is of more than 0" })]
}) {}

const conflict = new CommandError.ConcurrencyConflict({
  aggregateType: "Payment",
  aggregateId: "p",
  expectedVersion: 1
})

/**
 * A bus whose `Remind` reports what it ran, and whose `Charge` declines
 * amounts over 1000 and conflicts while `conflicts` says so.
 */
const makeBus = (ran: Queue.Queue<Command.Any & { readonly at: number }>, conflicts: { remaining: number }) =>
  CommandBus.make([Remind, Charge], {
    Remind: (command) =>
      Effect.flatMap(Clock.currentTimeMillis, (at) => Queue.offer(ran, Object.assign(command, { at }))).pipe(
        Effect.as(Handler.result(undefined))
      ),
    Charge: (command) =>
      Effect.flatMap(Clock.currentTimeMillis, (at) => Queue.offer(ran, Object.assign(command, { at }))).pipe(
        Effect.zipRight<Handler.Result<void>, CardDeclined | CommandError.ConcurrencyConflict, never>(
          command.amount > 1000
            ? Effect.fail(new CardDeclined({ orderId: command.orderId }))
            : conflicts.remaining-- > 0
            ? Effect.fail(conflict)
            : Effect.succeed(Handler.result(undefined))
        )
      )
  })

/** Lets the runner record what it did: a bounded number of turns. */
const settle = Effect.repeatN(Effect.yieldNow(), 200)

const list = (state?: "pending" | "failed") =>
  Effect.flatMap(
    CommandScheduler.ScheduledCommands,
    (store) => store.list(state === undefined ? {} : { state })
  )

// The bus's own stores (its outbox), and the scheduled commands.
const Stores = Layer.merge(InMemory.layer, CommandScheduler.layerMemory)

describe("CommandScheduler", () => {
  it.scoped("refuses a batchSize, concurrency or maxAttempts that is no positive integer, where it is started", () =>
    Effect.gen(function*() {
      const bus = makeBus(yield* Queue.unbounded<Command.Any & { readonly at: number }>(), { remaining: 0 })
      for (const option of ["batchSize", "concurrency", "maxAttempts"] as const) {
        for (const value of [0, -1, 1.5, Number.NaN]) {
          for (
            const [where, attempt] of [
              ["CommandScheduler.start", CommandScheduler.start(bus, { [option]: value })],
              ["CommandScheduler.run", CommandScheduler.run(bus, { [option]: value })],
              ["CommandScheduler.start", Layer.launch(CommandScheduler.layer(bus, { [option]: value }))]
            ] as const
          ) {
            const exit = yield* Effect.exit(attempt as Effect.Effect<unknown>)
            assert.isTrue(Exit.isFailure(exit))
            assert.include(
              String(Exit.isFailure(exit) && exit.cause),
              `${where}: ${option} must be a positive integer, got ${value}`
            )
          }
        }
      }
    }).pipe(Effect.provide(Stores)))

  // A lease of 0 passed before every command's turn: nothing ever ran, and
  // the runner claimed again without pause (on PGlite, the process froze).
  it.scoped("refuses a lease under 1 second, where it is started", () =>
    Effect.gen(function*() {
      const bus = makeBus(yield* Queue.unbounded<Command.Any & { readonly at: number }>(), { remaining: 0 })
      for (const lease of [0, -5, "500 millis"] as const) {
        for (
          const [where, attempt] of [
            ["CommandScheduler.start", CommandScheduler.start(bus, { lease })],
            ["CommandScheduler.run", CommandScheduler.run(bus, { lease })],
            ["CommandScheduler.start", Layer.launch(CommandScheduler.layer(bus, { lease }))]
          ] as const
        ) {
          const exit = yield* Effect.exit(attempt as Effect.Effect<unknown>)
          assert.include(String(Exit.isFailure(exit) && exit.cause), `${where}: lease must be at least 1 second`)
        }
      }
    }).pipe(Effect.provide(Stores)))

  it.scoped("waits after a full batch none of which ran (every lease passed before its turn)", () =>
    Effect.gen(function*() {
      const bus = makeBus(yield* Queue.unbounded<Command.Any & { readonly at: number }>(), { remaining: 0 })
      let claims = 0
      const passing = Layer.effect(
        CommandScheduler.ScheduledCommands,
        Effect.map(CommandScheduler.ScheduledCommands, (store): CommandScheduler.Store => ({
          ...store,
          claim: (limit, lease) => Effect.tap(store.claim(limit, lease), () => Effect.sync(() => claims++)),
          renew: () => Effect.succeed(undefined)
        }))
      ).pipe(Layer.provideMerge(CommandScheduler.layerMemory))
      yield* Effect.gen(function*() {
        yield* CommandScheduler.schedule(new Remind({ orderId: "a" }), { at: new Date(0) })
        yield* CommandScheduler.start(bus, { batchSize: 1, pollInterval: "1 second", lease: "1 second" })
        for (let i = 0; i < 5; i++) {
          yield* TestClock.adjust("1 second")
          yield* settle
        }
      }).pipe(Effect.provide(passing))
      assert.isAtMost(claims, 7)
    }).pipe(Effect.provide(InMemory.layer)))

  it.scoped("dispatches a command when it is due, not before, with its metadata and a key of its own", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const bus = makeBus(ran, { remaining: 0 })
      const command = new Remind({ orderId: "o-1", userId: "alice", causationId: crypto.randomUUID() })
      const id = yield* CommandScheduler.schedule(command, { after: "10 minutes" })
      const [pending] = yield* list()
      assert.deepStrictEqual([pending!.id, pending!.commandType, pending!.state, pending!.attempts], [
        id,
        "Remind",
        "pending",
        0
      ])
      yield* CommandScheduler.start(bus, { pollInterval: "10 seconds" })
      yield* TestClock.adjust("9 minutes")
      assert.strictEqual(yield* Queue.size(ran), 0)
      yield* TestClock.adjust("1 minute")
      const got = yield* Queue.take(ran)
      assert.instanceOf(got, Remind)
      assert.strictEqual(got.at, 10 * 60 * 1000)
      assert.deepStrictEqual(
        [got.commandId, got.correlationId, got.causationId, got.userId, (got as Remind).orderId],
        [command.commandId, command.correlationId, command.causationId, "alice", "o-1"]
      )
      assert.strictEqual(got.idempotencyKey, `scheduled:${id}`)
      yield* settle
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))

  it.scoped("a runner acts only on its own lease: one taken over is not its to complete, nor to run after it passed", () =>
    Effect.gen(function*() {
      const runs: Array<string> = []
      // "slow" outlasts the lease of the batch it was claimed with; "next" waits behind it.
      const bus = CommandBus.make([Remind, Charge], {
        Remind: (command) =>
          Effect.sync(() => runs.push(command.orderId)).pipe(
            Effect.zipRight(command.orderId === "slow" ? Effect.sleep("2 minutes") : Effect.void),
            Effect.as(Handler.result(undefined))
          ),
        Charge: () => Effect.succeed(Handler.result(undefined))
      })
      yield* CommandScheduler.schedule(new Remind({ orderId: "slow" }), { at: new Date(0) })
      yield* CommandScheduler.schedule(new Remind({ orderId: "next" }), { at: new Date(1) })
      const options = { lease: "1 minute", pollInterval: "10 seconds" } as const
      // Two runners on one store: the first claims both, the second takes over
      // what the first still holds once its lease has passed.
      yield* CommandScheduler.start(bus, options)
      yield* settle
      yield* CommandScheduler.start(bus, options)
      for (let i = 0; i < 36; i++) {
        yield* TestClock.adjust("10 seconds")
        yield* settle
      }
      assert.strictEqual(runs.filter((orderId) => orderId === "next").length, 1)
      // "slow" outlasts every lease it gets, so each runner takes it over in
      // turn (why a lease must be longer than any command) and none of them
      // may report it done for another's lease.
      assert.isAbove(runs.filter((orderId) => orderId === "slow").length, 1)
      assert.deepStrictEqual(
        (yield* list()).map((scheduled) => (scheduled.command as { readonly orderId: string }).orderId),
        ["slow"]
      )
    }).pipe(Effect.provide(Stores)))

  it.scoped("the last command of a batch has the whole lease to run in: no other runner runs it meanwhile", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      // Each run takes 4 s; the lease, 10 s, is longer than any one of them.
      const bus = CommandBus.make([Remind, Charge], {
        Remind: (command) =>
          Effect.sync(() => log.push(`start ${command.orderId}`)).pipe(
            Effect.zipRight(Effect.sleep("4 seconds")),
            Effect.zipRight(Effect.sync(() => log.push(`end ${command.orderId}`))),
            Effect.as(Handler.result(undefined))
          ),
        Charge: () => Effect.succeed(Handler.result(undefined))
      })
      const ids: Array<string> = []
      for (const orderId of ["a", "b", "c"]) {
        ids.push(yield* CommandScheduler.schedule(new Remind({ orderId }), { at: new Date(0) }))
      }
      const options = { lease: "10 seconds", pollInterval: "1 second" } as const
      yield* CommandScheduler.start(bus, options)
      yield* settle
      yield* TestClock.adjust("500 millis")
      yield* CommandScheduler.start(bus, options)
      // "c" starts at 8 s, two seconds before its batch's lease ends; at
      // 10.5 s, while it runs, it can be neither claimed nor cancelled.
      for (let i = 0; i < 20; i++) {
        yield* TestClock.adjust("500 millis")
        yield* settle
      }
      assert.isFalse(yield* CommandScheduler.cancel(ids[2]!))
      for (let i = 0; i < 20; i++) {
        yield* TestClock.adjust("500 millis")
        yield* settle
      }
      assert.deepStrictEqual(log, ["start a", "end a", "start b", "end b", "start c", "end c"])
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))

  it.effect("a lease is renewed only while it holds, and only the renewed lease is then the runner's", () =>
    Effect.gen(function*() {
      const store = yield* CommandScheduler.ScheduledCommands
      yield* CommandScheduler.schedule(new Remind({ orderId: "o-1" }), { at: new Date(0) })
      const [claimed] = yield* store.claim(10, Duration.seconds(30))
      yield* TestClock.adjust("20 seconds")
      const renewed = yield* store.renew(claimed!, Duration.seconds(30))
      assert.strictEqual(renewed?.attempts, 1)
      // 40 s after the claim: past the first lease, within the renewed one.
      yield* TestClock.adjust("20 seconds")
      assert.deepStrictEqual(yield* store.claim(10, Duration.seconds(30)), [])
      assert.isUndefined(yield* store.renew(claimed!, Duration.seconds(30)))
      yield* store.complete(claimed!)
      assert.strictEqual((yield* list()).length, 1)
      yield* store.complete(renewed!)
      assert.deepStrictEqual(yield* list(), [])
      // A lease that passed is not renewed.
      yield* CommandScheduler.schedule(new Remind({ orderId: "o-2" }), { at: new Date(0) })
      const [late] = yield* store.claim(10, Duration.seconds(30))
      yield* TestClock.adjust("30 seconds")
      assert.isUndefined(yield* store.renew(late!, Duration.seconds(30)))
    }).pipe(Effect.provide(Stores)))

  it.scoped("keeps the command's own idempotency key, runs at a given time, in a span of its own", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const id = yield* CommandScheduler.schedule(new Remind({ orderId: "o-1", idempotencyKey: "mine" }), {
        at: new Date(5000)
      })
      const { spans, tracer } = yield* recordingTracer
      yield* CommandScheduler.start(makeBus(ran, { remaining: 0 })).pipe(Effect.withTracer(tracer))
      yield* TestClock.adjust("5 seconds")
      const got = yield* Queue.take(ran)
      assert.deepStrictEqual([got.at, got.idempotencyKey], [5000, "mine"])
      yield* settle
      const run = spans.find((span) => span.name === "CommandScheduler.run")
      assert.deepStrictEqual(
        [run?.attributes.get("scheduled.id"), run?.attributes.get("command.type"), run?.status._tag],
        [id, "Remind", "Ended"]
      )
    }).pipe(Effect.provide(Stores)))

  it.scoped("a failure the command declares fails it for good at once; retry runs it again", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const id = yield* CommandScheduler.schedule(new Charge({ orderId: "o-1", amount: 5000 }), { after: 0 })
      yield* CommandScheduler.start(makeBus(ran, { remaining: 0 }), { pollInterval: "10 seconds" })
      yield* Queue.take(ran)
      yield* settle
      const [failed] = yield* list("failed")
      assert.deepStrictEqual([failed!.id, failed!.attempts], [id, 1])
      assert.include(failed!.lastError, "CardDeclined")
      yield* TestClock.adjust("10 minutes")
      assert.strictEqual(yield* Queue.size(ran), 0, "not run again")

      assert.isTrue(yield* CommandScheduler.retry(id))
      assert.isFalse(yield* CommandScheduler.retry(id), "pending, not failed")
      yield* TestClock.adjust("10 seconds")
      assert.strictEqual(((yield* Queue.take(ran)) as unknown as Charge).orderId, "o-1")
    }).pipe(Effect.provide(Stores)))

  // With the default middleware, a retry under the first run's key would
  // replay the recorded failure instead of running.
  it.scoped("retry runs a failed command again on a bus with idempotency: under a key of its own", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const bus = makeBus(ran, { remaining: 0 }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      const id = yield* CommandScheduler.schedule(new Charge({ orderId: "o-1", amount: 5000 }), { after: 0 })
      yield* CommandScheduler.start(bus, { pollInterval: "10 seconds" })
      const first = yield* Queue.take(ran)
      assert.strictEqual(first.idempotencyKey, `scheduled:${id}`)
      yield* settle
      const [failed] = yield* list("failed")
      assert.deepStrictEqual([failed!.id, failed!.retries], [id, 0])

      const store = yield* CommandScheduler.ScheduledCommands
      assert.isTrue(yield* store.retry(id))
      yield* TestClock.adjust("10 seconds")
      const second = yield* Queue.take(ran)
      assert.strictEqual(second.idempotencyKey, `scheduled:${id}:retry-1`)
      yield* settle
      const [again] = yield* list("failed")
      assert.deepStrictEqual([again!.id, again!.attempts, again!.retries], [id, 1, 1])
    }).pipe(Effect.provide(Stores)))

  it.scoped("a failure that may pass runs again after a growing wait, then fails for good after maxAttempts", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const outcomes = Effect.all(
        ["completed", "retrying", "failed"].map((outcome) =>
          Metrics.count("command_bus_scheduled_commands_total", { command: "Charge", outcome })
        )
      )
      const [completed, retrying, failed] = yield* outcomes
      const conflicts = { remaining: 2 }
      yield* CommandScheduler.schedule(new Charge({ orderId: "flaky", amount: 1 }), { after: 0 })
      yield* CommandScheduler.start(makeBus(ran, conflicts), { maxAttempts: 3 })
      yield* TestClock.adjust("10 seconds")
      // Run 1 at 0 s; run 2 one second later; run 3 two seconds after that.
      assert.deepStrictEqual([...yield* Queue.takeAll(ran)].map((command) => command.at), [0, 1000, 3000])
      yield* settle
      assert.deepStrictEqual(yield* list(), [])

      conflicts.remaining = 100
      yield* CommandScheduler.schedule(new Charge({ orderId: "stuck", amount: 1 }), { after: 0 })
      yield* TestClock.adjust("1 minute")
      assert.strictEqual((yield* Queue.takeAll(ran)).length, 3)
      const [stuck] = yield* list("failed")
      assert.deepStrictEqual([(stuck!.command as { orderId: string }).orderId, stuck!.attempts], ["stuck", 3])
      assert.include(stuck!.lastError, "ConcurrencyConflict")
      // flaky: 2 retrying then completed; stuck: 2 retrying then failed.
      assert.deepStrictEqual(yield* outcomes, [completed + 1, retrying + 4, failed + 1])
    }).pipe(Effect.provide(Stores)))

  it.scoped("a command its business rules refuse fails for good at its first run, not after maxAttempts", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const id = yield* CommandScheduler.schedule(new Refund({ orderId: "o-1", amount: 0 }), { after: 0 })
      const bus = CommandBus.make([Refund], {
        Refund: (command) => Effect.as(Queue.offer(ran, Object.assign(command, { at: 0 })), Handler.result(undefined))
      }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      yield* CommandScheduler.start(bus, { pollInterval: "1 second" })
      yield* TestClock.adjust("10 minutes")
      const [failed, ...rest] = yield* list()
      assert.deepStrictEqual(rest, [])
      assert.deepStrictEqual([failed!.id, failed!.state, failed!.attempts], [id, "failed", 1])
      assert.include(failed!.lastError, "CommandValidationError")
      assert.strictEqual(yield* Queue.size(ran), 0, "never ran")
    }).pipe(Effect.provide(Stores)))

  it.scoped("a cancelled command never runs; a command the runner's bus does not handle is left to another runner", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const id = yield* CommandScheduler.schedule(new Remind({ orderId: "o-1" }), { after: "1 minute" })
      assert.isTrue(yield* CommandScheduler.cancel(id))
      assert.isFalse(yield* CommandScheduler.cancel(id))
      const other = yield* CommandScheduler.schedule(new Remind({ orderId: "o-2" }), { after: 0 })
      const chargesOnly = CommandBus.make([Charge], { Charge: () => Effect.succeed(Handler.result(undefined)) })
      yield* CommandScheduler.start(chargesOnly)
      yield* TestClock.adjust("2 minutes")
      const [left, ...rest] = yield* list()
      assert.deepStrictEqual(rest, [])
      assert.deepStrictEqual([left!.id, left!.state, left!.attempts], [other, "pending", 0], "never claimed")
      assert.strictEqual(yield* Queue.size(ran), 0)
    }).pipe(Effect.provide(Stores)))

  it.scoped("runners of two buses on one store: each command runs on the bus that handles it", () =>
    Effect.gen(function*() {
      const ran: Array<string> = []
      const remind = CommandBus.make([Remind], {
        Remind: (command) => Effect.sync(() => (ran.push(`Remind ${command.orderId}`), Handler.result(undefined)))
      })
      const charge = CommandBus.make([Charge], {
        Charge: (command) => Effect.sync(() => (ran.push(`Charge ${command.orderId}`), Handler.result(undefined)))
      })
      for (const orderId of ["o-1", "o-2", "o-3"]) {
        yield* CommandScheduler.schedule(new Remind({ orderId }), { after: "1 minute" })
        yield* CommandScheduler.schedule(new Charge({ orderId, amount: 1 }), { after: "1 minute" })
      }
      yield* CommandScheduler.start(remind, { pollInterval: "10 seconds", batchSize: 2 })
      yield* CommandScheduler.start(charge, { pollInterval: "10 seconds", batchSize: 2 })
      yield* TestClock.adjust("2 minutes")
      assert.deepStrictEqual(yield* list(), [])
      assert.deepStrictEqual(ran.sort(), [
        "Charge o-1",
        "Charge o-2",
        "Charge o-3",
        "Remind o-1",
        "Remind o-2",
        "Remind o-3"
      ])
    }).pipe(Effect.provide(Stores)))

  it.scoped("on a store that hands out every type (written before claim took types), an unhandled command fails for good", () =>
    Effect.gen(function*() {
      const store = yield* CommandScheduler.ScheduledCommands
      const older: CommandScheduler.Store = { ...store, claim: (limit, lease) => store.claim(limit, lease) }
      const other = yield* CommandScheduler.schedule(new Remind({ orderId: "o-2" }), { after: 0 })
      const chargesOnly = CommandBus.make([Charge], { Charge: () => Effect.succeed(Handler.result(undefined)) })
      yield* CommandScheduler.start(chargesOnly).pipe(Effect.provideService(CommandScheduler.ScheduledCommands, older))
      yield* TestClock.adjust("2 minutes")
      const [failed, ...rest] = yield* list()
      assert.deepStrictEqual(rest, [])
      assert.deepStrictEqual([failed!.id, failed!.state], [other, "failed"])
      assert.include(failed!.lastError, "UnknownCommand")
    }).pipe(Effect.provide(Stores)))

  it.scoped("a command a runner is running cannot be cancelled: too late, its own outcome stands", () =>
    Effect.gen(function*() {
      const finished: Array<string> = []
      const slow = CommandBus.make([Remind, Charge], {
        Remind: (command) =>
          Effect.sleep("10 seconds").pipe(
            Effect.zipRight(Effect.sync(() => finished.push(command.orderId))),
            Effect.as(Handler.result(undefined))
          ),
        Charge: () => Effect.succeed(Handler.result(undefined))
      })
      const id = yield* CommandScheduler.schedule(new Remind({ orderId: "o-1" }), { after: 0 })
      yield* CommandScheduler.start(slow)
      yield* settle
      // Running: cancel says so, rather than report a drop the run then ignores.
      assert.isFalse(yield* CommandScheduler.cancel(id))
      yield* TestClock.adjust("10 seconds")
      yield* settle
      assert.deepStrictEqual(finished, ["o-1"])
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))

  it.effect("a leased command is not handed out again until its lease has passed", () =>
    Effect.gen(function*() {
      const store = yield* CommandScheduler.ScheduledCommands
      yield* CommandScheduler.schedule(new Remind({ orderId: "late" }), { after: "2 seconds" })
      yield* CommandScheduler.schedule(new Remind({ orderId: "early" }), { after: "1 second" })
      yield* TestClock.adjust("2 seconds")
      const claimed = yield* store.claim(10, Duration.seconds(30))
      assert.deepStrictEqual(
        claimed.map((due) => [(due.command as { orderId: string }).orderId, due.attempts]),
        [["early", 1], ["late", 1]]
      )
      assert.deepStrictEqual(yield* store.claim(10, Duration.seconds(30)), [])
      yield* TestClock.adjust("30 seconds")
      assert.deepStrictEqual((yield* store.claim(1, Duration.seconds(30))).map((due) => due.attempts), [2])
    }).pipe(Effect.provide(Stores)))

  it.effect("a runner whose lease was taken over, failed and retried (attempts back to 1) is ignored", () =>
    Effect.gen(function*() {
      const store = yield* CommandScheduler.ScheduledCommands
      const id = yield* CommandScheduler.schedule(new Remind({ orderId: "o-1" }), { after: "1 second" })
      yield* TestClock.adjust("1 second")
      const [first] = yield* store.claim(10, Duration.seconds(30))
      yield* TestClock.adjust("31 seconds")
      const [second] = yield* store.claim(10, Duration.seconds(30))
      yield* store.fail(second!, "gave up")
      assert.isTrue(yield* store.retry(id))
      const [third] = yield* store.claim(10, Duration.seconds(30))
      assert.deepStrictEqual([first!.attempts, second!.attempts, third!.attempts], [1, 2, 1])
      // The first runner wakes up and reports: the third one's lease stands.
      yield* store.complete(first!)
      yield* store.fail(first!, "stale")
      yield* store.retryAfter(first!, Duration.zero, "stale")
      assert.deepStrictEqual((yield* list()).map((scheduled) => [scheduled.id, scheduled.state, scheduled.lastError]), [
        [id, "pending", "gave up"]
      ])
      yield* store.complete(third!)
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))
})

describe("CommandScheduler keys", () => {
  const orderIdOf = (scheduled: CommandScheduler.ScheduledCommand) =>
    (scheduled.command as { readonly orderId: string }).orderId

  it.scoped("one command pending under a key: replace puts the new one in its place (a debounce), keep leaves it", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const key = "payment-reminder:o-1"
      const first = yield* CommandScheduler.schedule(new Remind({ orderId: "first" }), { after: "10 minutes" }, { key })
      const second = yield* CommandScheduler.schedule(new Remind({ orderId: "second" }), { after: "20 minutes" }, {
        key,
        onConflict: "replace"
      })
      assert.notStrictEqual(second, first)
      const kept = yield* CommandScheduler.schedule(new Remind({ orderId: "third" }), { after: "1 minute" }, {
        key,
        onConflict: "keep"
      })
      assert.strictEqual(kept, second)
      // Another key, and no key, are apart.
      yield* CommandScheduler.schedule(new Remind({ orderId: "other" }), { after: "30 minutes" }, { key: "other" })
      yield* CommandScheduler.schedule(new Remind({ orderId: "plain" }), { after: "40 minutes" })
      assert.deepStrictEqual(
        (yield* list()).map((scheduled) => [scheduled.id === second, orderIdOf(scheduled), scheduled.key]),
        [[true, "second", key], [false, "other", "other"], [false, "plain", undefined]]
      )
      assert.isFalse(yield* CommandScheduler.cancel(first), "replaced: gone")

      yield* CommandScheduler.start(makeBus(ran, { remaining: 0 }), { pollInterval: "1 minute" })
      yield* TestClock.adjust("15 minutes")
      assert.strictEqual(yield* Queue.size(ran), 0, "not at the first one's time")
      yield* TestClock.adjust("5 minutes")
      const got = yield* Queue.take(ran)
      assert.deepStrictEqual([(got as unknown as Remind).orderId, got.at, got.idempotencyKey], [
        "second",
        20 * 60 * 1000,
        `scheduled:${second}`
      ])
      yield* settle
      // Run and gone: the key is free again.
      const next = yield* CommandScheduler.schedule(new Remind({ orderId: "next" }), { after: "1 hour" }, {
        key,
        onConflict: "keep"
      })
      assert.notStrictEqual(next, second)
    }).pipe(Effect.provide(Stores)))

  it.scoped("a failed command does not hold its key; retried while another holds it, it runs under none", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const key = "charge:o-1"
      const declined = yield* CommandScheduler.schedule(new Charge({ orderId: "o-1", amount: 5000 }), { after: 0 }, {
        key
      })
      yield* CommandScheduler.start(makeBus(ran, { remaining: 0 }), { pollInterval: "10 seconds" })
      yield* Queue.take(ran)
      yield* settle
      const [failed] = yield* list("failed")
      assert.deepStrictEqual([failed!.id, failed!.key], [declined, key])
      assert.isFalse(yield* CommandScheduler.cancelKey(key), "a failed one is not pending")
      // With its key free, a retried one keeps it (and fails again).
      assert.isTrue(yield* CommandScheduler.retry(declined))
      assert.deepStrictEqual((yield* list()).map((scheduled) => [scheduled.id, scheduled.key]), [[declined, key]])
      yield* TestClock.adjust("10 seconds")
      yield* Queue.take(ran)
      yield* settle
      assert.deepStrictEqual((yield* list("failed")).map((scheduled) => [scheduled.id, scheduled.key]), [[
        declined,
        key
      ]])

      const again = yield* CommandScheduler.schedule(new Charge({ orderId: "o-1", amount: 10 }), { after: "1 hour" }, {
        key,
        onConflict: "keep"
      })
      assert.notStrictEqual(again, declined)
      assert.isTrue(yield* CommandScheduler.retry(declined))
      assert.deepStrictEqual(
        (yield* list("pending")).map((scheduled) => [scheduled.id, scheduled.key]),
        [[declined, undefined], [again, key]]
      )
    }).pipe(Effect.provide(Stores)))

  it.scoped("a command a runner is running under a key: not cancelled, kept by keep; replaced, it is not run again after a failure", () =>
    Effect.gen(function*() {
      const runs: Array<string> = []
      const conflicts = { remaining: 1 }
      // "slow" takes 10 s, then fails once with a failure that may pass.
      const bus = CommandBus.make([Remind, Charge], {
        Remind: (command) => Effect.sync(() => runs.push(command.orderId)).pipe(Effect.as(Handler.result(undefined))),
        Charge: (command) =>
          Effect.sync(() => runs.push(command.orderId)).pipe(
            Effect.zipRight(Effect.sleep("10 seconds")),
            Effect.zipRight(
              conflicts.remaining-- > 0 ? Effect.fail(conflict) : Effect.succeed(Handler.result(undefined))
            )
          )
      })
      const key = "payment:o-1"
      const slow = yield* CommandScheduler.schedule(new Charge({ orderId: "slow", amount: 1 }), { after: 0 }, { key })
      yield* CommandScheduler.start(bus, { pollInterval: "1 second" })
      yield* settle
      assert.deepStrictEqual(runs, ["slow"])
      assert.isFalse(yield* CommandScheduler.cancelKey(key), "running: too late")
      assert.strictEqual(
        yield* CommandScheduler.schedule(new Remind({ orderId: "kept?" }), { after: 0 }, { key, onConflict: "keep" }),
        slow
      )
      const next = yield* CommandScheduler.schedule(new Remind({ orderId: "next" }), { after: "1 minute" }, { key })
      assert.deepStrictEqual(
        (yield* list()).map((scheduled) => [scheduled.id, scheduled.key]),
        [[slow, undefined], [next, key]]
      )
      // "slow" fails (a conflict, which a retry might pass): replaced, it is
      // not run again (a debounce fires once), but kept as failed, saying why.
      for (let i = 0; i < 30; i++) {
        yield* TestClock.adjust("1 second")
        yield* settle
      }
      assert.deepStrictEqual(runs, ["slow"])
      const [failed, ...others] = yield* list("failed")
      assert.deepStrictEqual([failed?.id, others], [slow, []])
      assert.match(failed!.lastError!, /^Superseded: a command scheduled under its key replaced it while it ran/)
      assert.deepStrictEqual((yield* list("pending")).map((scheduled) => scheduled.id), [next])
      yield* TestClock.adjust("40 seconds")
      yield* settle
      assert.deepStrictEqual(runs, ["slow", "next"])
      // An operator's retry runs it all the same.
      assert.isTrue(yield* CommandScheduler.retry(slow))
      for (let i = 0; i < 15; i++) {
        yield* TestClock.adjust("1 second")
        yield* settle
      }
      assert.deepStrictEqual(runs, ["slow", "next", "slow"])
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))

  it.effect("a key that is not 1 to 255 characters of text is refused as a defect; cancelKey finds nothing under it", () =>
    Effect.gen(function*() {
      const longest = "\u{1F600}".repeat(255) // 255 characters, 510 UTF-16 units
      assert.isString(yield* CommandScheduler.schedule(new Remind({ orderId: "o" }), { after: 0 }, { key: longest }))
      assert.isTrue(yield* CommandScheduler.cancelKey(longest))
      for (const [key, length] of [["", 0], ["k".repeat(256), 256], ["a\u0000b", 3], ["a\uD800b", 3]] as const) {
        const exit = yield* Effect.exit(CommandScheduler.schedule(new Remind({ orderId: "o" }), { after: 0 }, { key }))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
        assert.include(
          String(Exit.isFailure(exit) && exit.cause),
          `CommandScheduler.schedule: a key must be 1 to 255 characters of text without NUL characters or unpaired surrogates, got ${length} characters`
        )
        assert.isFalse(yield* CommandScheduler.cancelKey(key))
      }
      assert.deepStrictEqual(yield* list(), [])
    }).pipe(Effect.provide(Stores)))

  it.effect("a store without addKeyed and cancelKey keeps commands without a key, and dies on one", () =>
    Effect.gen(function*() {
      const withoutKeys = Layer.effect(
        CommandScheduler.ScheduledCommands,
        Effect.map(CommandScheduler.ScheduledCommands, ({ addKeyed: _, cancelKey: __, ...store }) => store)
      ).pipe(Layer.provide(CommandScheduler.layerMemory))
      yield* Effect.gen(function*() {
        assert.isString(yield* CommandScheduler.schedule(new Remind({ orderId: "o" }), { after: 0 }))
        for (
          const [where, attempt] of [
            [
              "CommandScheduler.schedule",
              CommandScheduler.schedule(new Remind({ orderId: "o" }), { after: 0 }, { key: "k" })
            ],
            ["CommandScheduler.cancelKey", CommandScheduler.cancelKey("k")]
          ] as const
        ) {
          const exit = yield* Effect.exit(
            attempt as Effect.Effect<unknown, unknown, CommandScheduler.ScheduledCommands>
          )
          assert.include(
            String(Exit.isFailure(exit) && exit.cause),
            `${where}: the ScheduledCommands store keeps no keys (it has no addKeyed and cancelKey)`
          )
        }
        assert.strictEqual((yield* list()).length, 1)
      }).pipe(Effect.provide(withoutKeys))
    }))
})

describe("CommandScheduler.make and forBus", () => {
  type Bus = ReturnType<typeof makeBus>

  // What the typed scheduler and its runner are given, and the untyped
  // functions alike: the same scenario runs on each, and leaves the same trace.
  interface Api {
    readonly schedule: (
      command: Remind | Charge,
      when: CommandScheduler.When,
      options?: CommandScheduler.ScheduleOptions
    ) => Effect.Effect<string, CommandError.StoreUnavailable, CommandScheduler.ScheduledCommands>
    readonly cancel: typeof CommandScheduler.cancel
    readonly cancelKey: typeof CommandScheduler.cancelKey
    readonly retry: typeof CommandScheduler.retry
    readonly start: (
      options: CommandScheduler.RunOptions
    ) => ReturnType<typeof CommandScheduler.start<any, any, any, any>>
  }

  const scenario = (api: (bus: Bus) => Api) =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const { cancel, cancelKey, retry, schedule, start } = api(makeBus(ran, { remaining: 0 }))
      // Each scenario at its own time: the TestClock goes on from the last one.
      const began = yield* Clock.currentTimeMillis
      const names = new Map<string, string>()
      const named = (id: string, name: string) => {
        names.set(id, name)
        return id
      }
      const trace: Array<unknown> = []
      const ids = (text: string | undefined) =>
        [...names].reduce((renamed, [id, name]) => renamed?.replaceAll(id, name), text)

      const late = named(yield* schedule(new Remind({ orderId: "late" }), { after: "10 minutes" }), "late")
      const keyed = named(
        yield* schedule(new Remind({ orderId: "keyed" }), { after: "5 minutes" }, { key: "k" }),
        "keyed"
      )
      trace.push(
        ids(
          yield* schedule(new Remind({ orderId: "kept out" }), { after: "1 minute" }, { key: "k", onConflict: "keep" })
        )
      )
      const declined = named(
        yield* schedule(new Charge({ orderId: "declined", amount: 5000 }), { at: new Date(0) }),
        "declined"
      )
      named(yield* schedule(new Remind({ orderId: "by key" }), { after: "1 minute" }, { key: "gone" }), "by key")
      trace.push(yield* cancelKey("gone"), yield* cancelKey("gone"))
      const cancelled = named(yield* schedule(new Remind({ orderId: "cancelled" }), { after: "1 hour" }), "cancelled")
      trace.push(yield* cancel(cancelled), yield* cancel(cancelled))

      yield* start({ pollInterval: "1 minute" })
      yield* TestClock.adjust("11 minutes")
      yield* settle
      const runs = [...yield* Queue.takeAll(ran)]
      trace.push(
        runs.map((got) => [got._tag, (got as unknown as Remind).orderId, got.at - began, ids(got.idempotencyKey)])
      )
      const scheduled = () =>
        Effect.map(
          list(),
          (all) =>
            all.map((
              entry
            ) => [ids(entry.id), entry.commandType, entry.state, entry.attempts, entry.retries, entry.key])
        )
      trace.push(yield* scheduled())
      trace.push(yield* retry(declined), yield* retry(late), yield* retry(keyed))
      yield* TestClock.adjust("1 minute")
      yield* settle
      trace.push([...yield* Queue.takeAll(ran)].map((got) => ids(got.idempotencyKey)))
      trace.push(yield* scheduled())
      return trace
    }).pipe(Effect.provide(Stores), Effect.scoped)

  it.effect("the scheduler of a bus and that of its classes do what the module's functions do", () =>
    Effect.gen(function*() {
      const untyped = yield* scenario((bus) => ({
        schedule: CommandScheduler.schedule,
        cancel: CommandScheduler.cancel,
        cancelKey: CommandScheduler.cancelKey,
        retry: CommandScheduler.retry,
        start: (options) => CommandScheduler.start(bus, options)
      }))
      assert.deepStrictEqual(untyped, [
        "keyed",
        true,
        false,
        true,
        false,
        [
          ["Charge", "declined", 0, "scheduled:declined"],
          ["Remind", "keyed", 5 * 60 * 1000, "scheduled:keyed"],
          ["Remind", "late", 10 * 60 * 1000, "scheduled:late"]
        ],
        [["declined", "Charge", "failed", 1, 0, undefined]],
        true,
        false,
        false,
        ["scheduled:declined:retry-1"],
        [["declined", "Charge", "failed", 1, 1, undefined]]
      ])

      const ofBus = yield* scenario((bus) => {
        const scheduler = CommandScheduler.forBus(bus)
        return { ...scheduler, start: scheduler.start }
      })
      assert.deepStrictEqual(ofBus, untyped)

      const ofClasses = yield* scenario((bus) => {
        const scheduler = CommandScheduler.make([Remind, Charge])
        return { ...scheduler, start: (options) => scheduler.start(bus, options) }
      })
      assert.deepStrictEqual(ofClasses, untyped)
    }))

  it.scoped("a typed runner refuses the options the module's runner refuses, naming the same function", () =>
    Effect.gen(function*() {
      const bus = makeBus(yield* Queue.unbounded<Command.Any & { readonly at: number }>(), { remaining: 0 })
      const ofBus = CommandScheduler.forBus(bus)
      const ofClasses = CommandScheduler.make([Remind, Charge])
      for (
        const [where, attempt] of [
          ["CommandScheduler.run", ofBus.run({ batchSize: 0 })],
          ["CommandScheduler.start", ofBus.start({ batchSize: 0 })],
          ["CommandScheduler.start", Layer.launch(ofBus.layer({ batchSize: 0 }))],
          ["CommandScheduler.run", ofClasses.run(bus, { batchSize: 0 })],
          ["CommandScheduler.start", ofClasses.start(bus, { batchSize: 0 })],
          ["CommandScheduler.start", Layer.launch(ofClasses.layer(bus, { batchSize: 0 }))]
        ] as const
      ) {
        const exit = yield* Effect.exit(attempt as Effect.Effect<unknown>)
        assert.include(
          String(Exit.isFailure(exit) && exit.cause),
          `${where}: batchSize must be a positive integer, got 0`
        )
      }
    }).pipe(Effect.provide(Stores)))

  it.scoped("a typed runner's layer runs due commands through its bus", () =>
    Effect.gen(function*() {
      const ran = yield* Queue.unbounded<Command.Any & { readonly at: number }>()
      const bus = makeBus(ran, { remaining: 0 })
      const scheduler = CommandScheduler.make([Remind])
      const id = yield* scheduler.schedule(new Remind({ orderId: "o-1" }), { after: "1 minute" })
      yield* Layer.build(scheduler.layer(bus, { pollInterval: "10 seconds" }))
      yield* TestClock.adjust("1 minute")
      const got = yield* Queue.take(ran)
      assert.deepStrictEqual([(got as unknown as Remind).orderId, got.idempotencyKey], ["o-1", `scheduled:${id}`])
    }).pipe(Effect.provide(Stores)))
})
