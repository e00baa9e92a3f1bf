import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import type * as Tracer from "effect/Tracer"
import {
  Command,
  CommandBus,
  CommandError,
  CurrentUser,
  DomainEvent,
  EventPublisher,
  Handler,
  Idempotency,
  Middleware,
  Outbox,
  UnitOfWork
} from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { read } from "./support/Metrics.js"
import { parentId, recordingTracer } from "./support/Tracing.js"

// -----------------------------------------------------------------------------
// a small domain: accounts
// -----------------------------------------------------------------------------

class AccountClosed extends Schema.TaggedError<AccountClosed>()("AccountClosed", { accountId: Schema.String }) {}

class Deposited extends DomainEvent.Class<Deposited>()("Deposited", {
  accountId: Schema.String,
  amount: Schema.Int
}) {}

class Deposit extends Command.Class<Deposit>()("Deposit", {
  payload: { accountId: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ balance: Schema.Int }),
  failure: Schema.Union(AccountClosed, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"],
  validate: ({ accountId, amount }) => {
    const issues: Array<Command.ValidationIssue> = []
    if (!accountId.startsWith("acc-")) {
      issues.push(new Command.ValidationIssue({ path: ["accountId"], message: "An account id starts with acc-" }))
    }
    if (amount < 1 || amount > 1000) {
      issues.push(new Command.ValidationIssue({ path: ["amount"], message: "An amount is 1 to 1000" }))
    }
    return issues
  }
}) {}

class CloseAccount extends Command.Class<CloseAccount>()("CloseAccount", {
  payload: { accountId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never,
  requiredRole: "admin"
}) {}

const accountId = "acc-1"

const conflict = new CommandError.ConcurrencyConflict({
  aggregateType: "Account",
  aggregateId: accountId,
  expectedVersion: 1
})

const deposited = (command: Deposit) =>
  Handler.result({ balance: command.amount }, [
    DomainEvent.draft(
      { aggregateType: "Account", aggregateId: command.accountId, aggregateVersion: 2 },
      new Deposited({ accountId: command.accountId, amount: command.amount })
    )
  ])

/**
 * A bus over `Deposit` and `CloseAccount`; `runs` counts handler runs. By
 * default a deposit succeeds with one event and a close succeeds at once.
 */
const makeBus = (handlers: {
  readonly deposit?: Handler.Handler<Deposit>
  readonly close?: Handler.Handler<CloseAccount>
} = {}) => {
  const runs = { deposit: 0, close: 0 }
  const deposit = handlers.deposit ?? ((command: Deposit) => Effect.succeed(deposited(command)))
  const close = handlers.close ?? (() => Effect.succeed(Handler.result(undefined)))
  const bus = CommandBus.make([Deposit, CloseAccount], {
    Deposit: (command) => Effect.suspend(() => (runs.deposit++, deposit(command))),
    CloseAccount: (command) => Effect.suspend(() => (runs.close++, close(command)))
  })
  return { bus, runs }
}

const readOutbox = Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 1000 }))

const subscribe = Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)

const alice: CurrentUser.Principal = { userId: "alice", roles: [] }
const bob: CurrentUser.Principal = { userId: "bob", roles: [] }
const admin: CurrentUser.Principal = { userId: "root", roles: ["admin"] }

/**
 * A dispatch made inside a handler, in `world` (the stores of the dispatch
 * around it); its failures are defects of that handler.
 */
const dispatchedIn = <R>(world: Context.Context<R>, dispatched: Effect.Effect<unknown, unknown, R>) =>
  Effect.orDie(Effect.provide(dispatched, world))

/** Runs `self` in a fork, moves the `TestClock` by `duration`, and awaits its exit. */
const afterAdjusting = <A, E, R>(self: Effect.Effect<A, E, R>, duration: Duration.DurationInput) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(self)
    yield* TestClock.adjust(duration)
    return yield* Fiber.await(fiber)
  })

describe("Middleware", () => {
  // ---------------------------------------------------------------------------
  describe("validation", () => {
    it.effect("fails with CommandValidationError listing every issue, without running the handler", () =>
      Effect.gen(function*() {
        const { bus, runs } = makeBus()
        const validated = bus.pipe(CommandBus.withMiddleware(Middleware.validation))
        const error = yield* Effect.flip(validated.dispatch(new Deposit({ accountId: "x-1", amount: 0 })))
        assert.instanceOf(error, CommandError.CommandValidationError)
        if (!(error instanceof CommandError.CommandValidationError)) return
        assert.strictEqual(error.commandType, "Deposit")
        assert.deepStrictEqual(error.issues.map((issue) => issue.path), [["accountId"], ["amount"]])
        assert.strictEqual(error.message, "accountId: An account id starts with acc-; amount: An amount is 1 to 1000")
        assert.strictEqual(runs.deposit, 0)
        assert.strictEqual((yield* readOutbox).length, 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("reports a single issue alone", () =>
      Effect.gen(function*() {
        const { bus } = makeBus()
        const validated = bus.pipe(CommandBus.withMiddleware(Middleware.validation))
        const error = yield* Effect.flip(validated.dispatch(new Deposit({ accountId, amount: 1001 })))
        assert.strictEqual(error._tag, "CommandValidationError")
        if (error._tag !== "CommandValidationError") return
        assert.deepStrictEqual(error.issues.map((issue) => issue.path), [["amount"]])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("runs the handler when the command is valid, or declares no rules", () =>
      Effect.gen(function*() {
        const { bus, runs } = makeBus()
        const validated = bus.pipe(CommandBus.withMiddleware(Middleware.validation))
        assert.deepStrictEqual(yield* validated.dispatch(new Deposit({ accountId, amount: 1000 })), { balance: 1000 })
        yield* validated.dispatch(new CloseAccount({ accountId: "anything" }))
        assert.deepStrictEqual(runs, { deposit: 1, close: 1 })
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("authorization", () => {
    const authorized = () => {
      const { bus, runs } = makeBus()
      return { bus: bus.pipe(CommandBus.withMiddleware(Middleware.authorization)), runs }
    }

    it.effect("refuses a command that requires a role to an anonymous caller", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        const error = yield* Effect.flip(bus.dispatch(new CloseAccount({ accountId })))
        assert.instanceOf(error, CommandError.Forbidden)
        assert.include(error.message, "\"admin\"")
        assert.strictEqual(runs.close, 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("refuses a command that requires a role to a user without it", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        const error = yield* Effect.flip(bus.dispatch(new CloseAccount({ accountId })).pipe(CurrentUser.as(alice)))
        assert.instanceOf(error, CommandError.Forbidden)
        assert.strictEqual(runs.close, 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("runs a command that requires a role for a user with it", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        yield* bus.dispatch(new CloseAccount({ accountId, userId: admin.userId })).pipe(CurrentUser.as(admin))
        assert.strictEqual(runs.close, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("refuses a command whose userId is not the authenticated user's", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        const error = yield* Effect.flip(
          bus.dispatch(new Deposit({ accountId, amount: 1, userId: "alice" })).pipe(CurrentUser.as(bob))
        )
        assert.deepStrictEqual(
          error,
          new CommandError.Forbidden({ reason: "The command's userId is not the authenticated user" })
        )
        // Even an admin may not speak for another user.
        const asAdmin = yield* Effect.flip(
          bus.dispatch(new CloseAccount({ accountId, userId: "alice" })).pipe(CurrentUser.as(admin))
        )
        assert.instanceOf(asAdmin, CommandError.Forbidden)
        assert.deepStrictEqual(runs, { deposit: 0, close: 0 })
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("runs a command whose userId is the authenticated user's, or that names no user", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        yield* bus.dispatch(new Deposit({ accountId, amount: 1, userId: "alice" })).pipe(CurrentUser.as(alice))
        yield* bus.dispatch(new Deposit({ accountId, amount: 1 })).pipe(CurrentUser.as(bob))
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("lets an anonymous caller run a command that requires no role", () =>
      Effect.gen(function*() {
        const { bus, runs } = authorized()
        assert.deepStrictEqual(yield* bus.dispatch(new Deposit({ accountId, amount: 3 })), { balance: 3 })
        assert.strictEqual(runs.deposit, 1)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("logging", () => {
    interface Captured {
      readonly message: string
      readonly level: string
      readonly annotations: Readonly<Record<string, unknown>>
    }

    const capture = () => {
      const logs: Array<Captured> = []
      const logger = Logger.make(({ annotations, logLevel, message }) => {
        logs.push({
          message: Array.isArray(message) ? message.join(" ") : String(message),
          level: logLevel.label,
          annotations: Object.fromEntries(annotations)
        })
      })
      return { logs, layer: Logger.replace(Logger.defaultLogger, logger) }
    }

    const identity = (command: Command.Any) => ({
      commandType: command._tag,
      commandId: command.commandId,
      correlationId: command.correlationId
    })

    it.effect("logs command.started and command.completed with events, attempts and duration", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus({
          deposit: (command) => Effect.as(Effect.sleep("250 millis"), deposited(command))
        })
        const logged = bus.pipe(CommandBus.withMiddleware(Middleware.logging()))
        const command = new Deposit({ accountId, amount: 5 })
        const exit = yield* afterAdjusting(
          logged.dispatch(command).pipe(Logger.withMinimumLogLevel(LogLevel.Debug)),
          "250 millis"
        )
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(logs, [
          { message: "command.started", level: "DEBUG", annotations: identity(command) },
          {
            message: "command.completed",
            level: "INFO",
            annotations: { ...identity(command), events: 1, attempts: 1, replayed: false, durationMs: 250 }
          }
        ])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })

    it.effect("logs command.failed with the error's tag", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus({
          deposit: (command) => Effect.fail(new AccountClosed({ accountId: command.accountId }))
        })
        const command = new Deposit({ accountId, amount: 5 })
        yield* Effect.exit(bus.pipe(CommandBus.withMiddleware(Middleware.logging())).dispatch(command))
        assert.deepStrictEqual(logs, [
          {
            message: "command.failed",
            level: "WARN",
            annotations: { ...identity(command), error: "AccountClosed", attempts: 1, durationMs: 0 }
          }
        ])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })

    it.effect("logs a defect as such, and an interruption not at all", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus({
          deposit: (command) => command.amount === 1 ? Effect.die("boom") : Effect.interrupt
        })
        const logged = bus.pipe(CommandBus.withMiddleware(Middleware.logging()))
        yield* Effect.exit(logged.dispatch(new Deposit({ accountId, amount: 1 })))
        yield* Effect.exit(logged.dispatch(new Deposit({ accountId, amount: 2 })))
        assert.deepStrictEqual(logs.map((log) => [log.message, log.annotations["error"]]), [[
          "command.failed",
          "defect"
        ]])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })

    it.effect("annotates the handler's own logs when the minimum level is above every dispatch log's", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus({
          deposit: (command) => Effect.as(Effect.logError("deposit.refused-by-bank"), deposited(command))
        })
        const command = new Deposit({ accountId, amount: 5 })
        // LOG_LEVEL=error: started, completed and failed are all below it, the handler's error is not.
        yield* bus.pipe(CommandBus.withMiddleware(Middleware.logging())).dispatch(command).pipe(
          Logger.withMinimumLogLevel(LogLevel.Error)
        )
        assert.deepStrictEqual(logs, [
          { message: "deposit.refused-by-bank", level: "ERROR", annotations: identity(command) }
        ])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })

    it.effect("honours the levels it is given", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus()
        const logged = bus.pipe(
          CommandBus.withMiddleware(Middleware.logging({ started: LogLevel.Info, completed: LogLevel.Debug }))
        )
        yield* logged.dispatch(new Deposit({ accountId, amount: 1 }))
        assert.deepStrictEqual(logs.map((log) => [log.message, log.level]), [["command.started", "INFO"]])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })

    it.effect("builds nothing, not even a clock read, when every level is below the minimum", () => {
      const { layer, logs } = capture()
      return Effect.gen(function*() {
        const { bus } = makeBus()
        const logged = bus.pipe(CommandBus.withMiddleware(Middleware.logging()))
        const reads = { count: 0 }
        const clock = yield* Effect.clock
        const counting: Clock.Clock = {
          [Clock.ClockTypeId]: Clock.ClockTypeId,
          unsafeCurrentTimeMillis: () => (reads.count++, clock.unsafeCurrentTimeMillis()),
          unsafeCurrentTimeNanos: () => (reads.count++, clock.unsafeCurrentTimeNanos()),
          currentTimeMillis: Effect.suspend(() => (reads.count++, clock.currentTimeMillis)),
          currentTimeNanos: Effect.suspend(() => (reads.count++, clock.currentTimeNanos)),
          sleep: (duration) => clock.sleep(duration)
        }
        // CloseAccount raises no event, so nothing else reads the clock.
        const close = logged.dispatch(new CloseAccount({ accountId })).pipe(Effect.withClock(counting))
        yield* close.pipe(Logger.withMinimumLogLevel(LogLevel.Error))
        assert.strictEqual(reads.count, 0)
        assert.deepStrictEqual(logs, [])
        // The same dispatch at a level that logs does read the clock: the count above is meaningful.
        yield* close.pipe(Logger.withMinimumLogLevel(LogLevel.Info))
        assert.isAbove(reads.count, 0)
        assert.deepStrictEqual(logs.map((log) => log.message), ["command.completed"])
      }).pipe(Effect.provide(Layer.merge(InMemory.layer, layer)))
    })
  })

  // ---------------------------------------------------------------------------
  describe("tracing", () => {
    const traced = () =>
      makeBus({
        deposit: Effect.fn("Accounts.deposit")(function*(command: Deposit) {
          yield* Effect.void.pipe(Effect.withSpan("Accounts.load"))
          if (command.amount === 13) return yield* new AccountClosed({ accountId: command.accountId })
          return deposited(command)
        })
      }).bus.pipe(CommandBus.withMiddleware(Middleware.tracing))

    it.effect("wraps a dispatch in a span named after the command, with the handler's spans as children", () =>
      Effect.gen(function*() {
        const { spans, tracer } = yield* recordingTracer
        const command = new Deposit({ accountId, amount: 5 })
        yield* traced().dispatch(command).pipe(Effect.withTracer(tracer))
        assert.deepStrictEqual(spans.map((span) => span.name), [
          "CommandBus.dispatch Deposit",
          "Accounts.deposit",
          "Accounts.load"
        ])
        const [dispatch, handler, load] = spans as [Tracer.Span, Tracer.Span, Tracer.Span]
        assert.isTrue(Option.isNone(dispatch.parent))
        assert.strictEqual(parentId(handler), dispatch.spanId)
        assert.strictEqual(parentId(load), handler.spanId)
        assert.strictEqual(handler.traceId, dispatch.traceId)
        assert.strictEqual(dispatch.attributes.get("command.type"), "Deposit")
        assert.strictEqual(dispatch.attributes.get("command.id"), command.commandId)
        assert.strictEqual(dispatch.attributes.get("command.correlation_id"), command.correlationId)
        assert.isFalse(dispatch.attributes.has("command.error"))
        assert.strictEqual(dispatch.status._tag, "Ended")
        if (dispatch.status._tag === "Ended") assert.isTrue(Exit.isSuccess(dispatch.status.exit))
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("records the error's tag on a failed dispatch's span", () =>
      Effect.gen(function*() {
        const { spans, tracer } = yield* recordingTracer
        yield* Effect.exit(traced().dispatch(new Deposit({ accountId, amount: 13 })).pipe(Effect.withTracer(tracer)))
        const dispatch = spans.find((span) => span.name === "CommandBus.dispatch Deposit")
        assert.isDefined(dispatch)
        assert.strictEqual(dispatch!.attributes.get("command.error"), "AccountClosed")
        assert.strictEqual(dispatch!.status._tag, "Ended")
        if (dispatch!.status._tag === "Ended") assert.isTrue(Exit.isFailure(dispatch!.status.exit))
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("nests the dispatch span under the caller's span", () =>
      Effect.gen(function*() {
        const { spans, tracer } = yield* recordingTracer
        yield* traced().dispatch(new Deposit({ accountId, amount: 5 })).pipe(
          Effect.withSpan("http.request"),
          Effect.withTracer(tracer)
        )
        const request = spans.find((span) => span.name === "http.request")!
        const dispatch = spans.find((span) => span.name === "CommandBus.dispatch Deposit")!
        assert.strictEqual(parentId(dispatch), request.spanId)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("metrics", () => {
    const total = (command: string, outcome: string) =>
      Effect.map(read("command_bus_commands_total", { command, outcome }), (state) => state.count)
    const duration = (command: string) => read("command_bus_dispatch_duration_seconds", { command })

    const measured = () =>
      makeBus({
        deposit: (command) => {
          switch (command.amount) {
            case 13:
              return Effect.fail(new AccountClosed({ accountId: command.accountId }))
            case 66:
              return Effect.die("boom")
            case 99:
              return Effect.interrupt
            default:
              return Effect.as(Effect.sleep(Duration.millis(command.amount)), deposited(command))
          }
        }
      }).bus.pipe(CommandBus.withMiddleware(Middleware.metrics))

    it.effect("counts dispatches by command and outcome", () =>
      Effect.gen(function*() {
        const outcomes = ["success", "AccountClosed", "defect", "interrupted"] as const
        const before = yield* Effect.forEach(outcomes, (outcome) => total("Deposit", outcome))
        const bus = measured()
        for (const amount of [0, 0, 13, 66, 99]) {
          yield* Effect.exit(bus.dispatch(new Deposit({ accountId, amount })))
        }
        const after = yield* Effect.forEach(outcomes, (outcome) => total("Deposit", outcome))
        assert.deepStrictEqual(after.map((count, i) => count - before[i]!), [2, 1, 1, 1])
        assert.strictEqual(yield* total("CloseAccount", "success"), 0)
      }).pipe(Effect.provide(InMemory.layer)))

    // A declared failure that cannot be recorded (NaN is not JSON) ends the dispatch with the
    // failure and a defect: every typed catch (`catchAll`) fails again with the defect, so the caller
    // sees a defect, and so must the count.
    it.effect("counts a dispatch whose cause holds a defect beside a failure as a defect", () =>
      Effect.gen(function*() {
        class Overdrawn extends Schema.TaggedError<Overdrawn>()("Overdrawn", { by: Schema.Number }) {}
        class Withdraw extends Command.Class<Withdraw>()("Withdraw", {
          payload: { amount: Schema.Int },
          success: Schema.Void,
          failure: Overdrawn
        }) {}
        const bus = CommandBus.make([Withdraw], {
          Withdraw: () => Effect.fail(new Overdrawn({ by: Number.NaN }))
        }).pipe(CommandBus.withMiddleware(Middleware.metrics, Idempotency.middleware(), Middleware.transaction))
        const outcomes = ["defect", "Overdrawn"] as const
        const before = yield* Effect.forEach(outcomes, (outcome) => total("Withdraw", outcome))
        const recovered = yield* Effect.exit(
          bus.dispatch(new Withdraw({ amount: 1, idempotencyKey: "withdraw-1" })).pipe(
            Effect.catchAll(() => Effect.void)
          )
        )
        assert.isTrue(Exit.isFailure(recovered) && Cause.isDie(recovered.cause))
        const after = yield* Effect.forEach(outcomes, (outcome) => total("Withdraw", outcome))
        assert.deepStrictEqual(after.map((count, i) => count - before[i]!), [1, 0])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("records each dispatch's duration in seconds in the histogram", () =>
      Effect.gen(function*() {
        const before = yield* duration("Deposit")
        const exit = yield* afterAdjusting(measured().dispatch(new Deposit({ accountId, amount: 750 })), "750 millis")
        assert.isTrue(Exit.isSuccess(exit))
        yield* Effect.exit(measured().dispatch(new Deposit({ accountId, amount: 13 })))
        const after = yield* duration("Deposit")
        assert.strictEqual(after.count - before.count, 2)
        assert.closeTo(after.sum - before.sum, 0.75, 1e-9)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("counts retries by command and error", () =>
      Effect.gen(function*() {
        const retries = () =>
          Effect.map(
            read("command_bus_retries_total", { command: "Deposit", error: "ConcurrencyConflict" }),
            (s) => s.count
          )
        const before = yield* retries()
        let runs = 0
        const bus = makeBus({
          deposit: (command) => ++runs <= 2 ? Effect.fail(conflict) : Effect.succeed(deposited(command))
        }).bus.pipe(CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(5) })))
        yield* bus.dispatch(new Deposit({ accountId, amount: 1 }))
        assert.strictEqual((yield* retries()) - before, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    // The default retry schedule is jittered; its delays are rounded to whole milliseconds, since a
    // fractional one leaves the TestClock at an instant where `Clock.currentTimeNanos` (read by this
    // middleware when the dispatch ends) throws a RangeError.
    it.effect("survives a jittered retry under the TestClock", () =>
      Effect.gen(function*() {
        let runs = 0
        const bus = makeBus({
          deposit: (command) => ++runs === 1 ? Effect.fail(conflict) : Effect.succeed(deposited(command))
        }).bus.pipe(CommandBus.withMiddleware(Middleware.metrics, Middleware.retry()))
        // This jitter makes the retry sleep 8.21046 ms; 8.21046 * 1e6 is 8210459.999999999 in floating point.
        const dispatch = bus.dispatch(new Deposit({ accountId, amount: 1 })).pipe(Effect.withRandomFixed([0.052615]))
        const exit = yield* afterAdjusting(dispatch, "1 second")
        assert.strictEqual(runs, 2)
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 1 }))
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("the default retry schedule", () => {
    // When each attempt starts, under the TestClock, with the random numbers fixed.
    const attemptTimes = (random: number) =>
      Effect.gen(function*() {
        const times: Array<number> = []
        const bus = makeBus({
          deposit: (command) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              times.push(now)
              return times.length <= 4 ? Effect.fail(conflict) : Effect.succeed(deposited(command))
            })
        }).bus.pipe(CommandBus.withMiddleware(Middleware.retry()))
        const start = yield* Clock.currentTimeMillis
        const dispatch = bus.dispatch(new Deposit({ accountId, amount: 1 })).pipe(Effect.withRandomFixed([random]))
        assert.deepStrictEqual(yield* afterAdjusting(dispatch, "1 second"), Exit.succeed({ balance: 1 }))
        return times.map((time) => time - start)
      })

    it.effect("waits exponentially from 10 ms, each delay jittered by up to a fifth either way", () =>
      Effect.gen(function*() {
        // The least and the most jitter: 0.8 and 1.2 times 10, 20, 40 and 80 ms.
        assert.deepStrictEqual(yield* attemptTimes(0), [0, 8, 24, 56, 120])
        assert.deepStrictEqual(yield* attemptTimes(0.9999), [0, 12, 36, 84, 180])
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("retry", () => {
    const failing = (times: number, error: AccountClosed | CommandError.ConcurrencyConflict = conflict) => {
      const attempts: Array<number> = []
      const { bus, runs } = makeBus({
        deposit: (command) => runs.deposit <= times ? Effect.fail(error) : Effect.succeed(deposited(command))
      })
      const spy = Middleware.make(
        "spy",
        (self, dispatch) => Effect.ensuring(self, Effect.sync(() => attempts.push(dispatch.attempts)))
      )
      return { bus, runs, attempts, spy }
    }

    it.effect("re-runs a handler failing with a retryable error until it succeeds", () =>
      Effect.gen(function*() {
        const { attempts, bus, runs, spy } = failing(2)
        const retried = bus.pipe(CommandBus.withMiddleware(spy, Middleware.retry()))
        const exit = yield* afterAdjusting(retried.dispatch(new Deposit({ accountId, amount: 4 })), "1 second")
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 4 }))
        assert.strictEqual(runs.deposit, 3)
        assert.deepStrictEqual(attempts, [3])
        // One attempt's events only.
        assert.strictEqual((yield* readOutbox).length, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("keeps no before-commit hook of a failed attempt: each attempt's are its own", () =>
      Effect.gen(function*() {
        const { bus } = failing(2)
        const hooks: Array<string> = []
        const outer = Middleware.make("outer", (self, dispatch) =>
          Effect.suspend(() => {
            dispatch.beforeCommit.push(() => Effect.sync(() => void hooks.push("outer")))
            return self
          }))
        const inner = Middleware.make("inner", (self, dispatch) =>
          Effect.suspend(() => {
            dispatch.beforeCommit.push(() => Effect.sync(() => void hooks.push(`inner ${dispatch.attempts}`)))
            return self
          }))
        const retried = bus.pipe(CommandBus.withMiddleware(outer, Middleware.retry(), inner))
        const exit = yield* afterAdjusting(retried.dispatch(new Deposit({ accountId, amount: 4 })), "1 second")
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 4 }))
        assert.deepStrictEqual(hooks, ["outer", "inner 3"])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("fails at once on an error that is not retryable", () =>
      Effect.gen(function*() {
        const { bus, runs } = failing(Number.MAX_SAFE_INTEGER, new AccountClosed({ accountId }))
        const retried = bus.pipe(CommandBus.withMiddleware(Middleware.retry()))
        const exit = yield* afterAdjusting(retried.dispatch(new Deposit({ accountId, amount: 4 })), "1 minute")
        assert.deepStrictEqual(exit, Exit.fail(new AccountClosed({ accountId })))
        assert.strictEqual(runs.deposit, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("waits for the schedule between runs and stops after its 4 retries", () =>
      Effect.gen(function*() {
        const { bus, runs } = failing(Number.MAX_SAFE_INTEGER)
        const retried = bus.pipe(CommandBus.withMiddleware(Middleware.retry()))
        const fiber = yield* Effect.fork(retried.dispatch(new Deposit({ accountId, amount: 4 })))
        yield* TestClock.adjust(Duration.zero)
        assert.strictEqual(runs.deposit, 1)
        yield* TestClock.adjust("1 minute")
        assert.deepStrictEqual(yield* Fiber.await(fiber), Exit.fail(conflict))
        assert.strictEqual(runs.deposit, 5)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("follows a custom schedule", () =>
      Effect.gen(function*() {
        const { bus, runs } = failing(Number.MAX_SAFE_INTEGER)
        const schedule = Schedule.spaced("1 second").pipe(Schedule.intersect(Schedule.recurs(2)))
        const retried = bus.pipe(CommandBus.withMiddleware(Middleware.retry({ schedule })))
        const fiber = yield* Effect.fork(retried.dispatch(new Deposit({ accountId, amount: 4 })))
        yield* TestClock.adjust("999 millis")
        assert.strictEqual(runs.deposit, 1)
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(runs.deposit, 2)
        yield* TestClock.adjust("1 second")
        assert.strictEqual(runs.deposit, 3)
        yield* TestClock.adjust("1 hour")
        assert.deepStrictEqual(yield* Fiber.await(fiber), Exit.fail(conflict))
        assert.strictEqual(runs.deposit, 3)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("does not retry a command that declares nothing retryable", () =>
      Effect.gen(function*() {
        const { bus, runs } = makeBus({ close: () => Effect.die("boom") })
        const retried = bus.pipe(CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(3) })))
        yield* Effect.exit(retried.dispatch(new CloseAccount({ accountId })))
        assert.strictEqual(runs.close, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("follows a command's own schedule where perCommand names its tag", () =>
      Effect.gen(function*() {
        const { bus, runs } = makeBus({ deposit: () => Effect.fail(conflict) })
        const withSchedules = (perCommand: Record<string, Schedule.Schedule<unknown, unknown>>) =>
          bus.pipe(CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(3), perCommand })))
        yield* Effect.exit(
          withSchedules({ Deposit: Schedule.recurs(1) }).dispatch(new Deposit({ accountId, amount: 1 }))
        )
        assert.strictEqual(runs.deposit, 2)
        yield* Effect.exit(withSchedules({ Other: Schedule.recurs(1) }).dispatch(new Deposit({ accountId, amount: 1 })))
        assert.strictEqual(runs.deposit, 2 + 4)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("timeout", () => {
    const slow = () => {
      const probe = { interrupted: false, completed: false }
      const { bus, runs } = makeBus({
        deposit: (command) =>
          Effect.sleep(Duration.seconds(command.amount)).pipe(
            Effect.zipRight(Effect.sync(() => (probe.completed = true))),
            Effect.onInterrupt(() => Effect.sync(() => (probe.interrupted = true))),
            Effect.as(deposited(command))
          ),
        close: () => Effect.as(Effect.sleep("3 seconds"), Handler.result(undefined))
      })
      return { bus, runs, probe }
    }

    it.scoped("interrupts a handler past the deadline, fails with CommandTimeout, and publishes nothing", () =>
      Effect.gen(function*() {
        const subscription = yield* subscribe
        const { bus, probe } = slow()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second")))
        const exit = yield* afterAdjusting(timed.dispatch(new Deposit({ accountId, amount: 2 })), "1 second")
        assert.deepStrictEqual(
          exit,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        assert.isTrue(probe.interrupted)
        assert.isFalse(probe.completed)
        // Nothing happens later either: the handler is gone, not left running.
        yield* TestClock.adjust("10 seconds")
        assert.isFalse(probe.completed)
        assert.strictEqual((yield* readOutbox).length, 0)
        assert.strictEqual(yield* Queue.size(subscription), 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("lets a handler that finishes in time succeed", () =>
      Effect.gen(function*() {
        const { bus, probe } = slow()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("3 seconds")))
        const exit = yield* afterAdjusting(timed.dispatch(new Deposit({ accountId, amount: 2 })), "2 seconds")
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 2 }))
        assert.isTrue(probe.completed)
        assert.strictEqual((yield* readOutbox).length, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("applies a per-command deadline over the default", () =>
      Effect.gen(function*() {
        const { bus, runs } = slow()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second", { CloseAccount: "5 seconds" })))
        // CloseAccount takes 3 seconds: past the default, within its own deadline.
        const closed = yield* afterAdjusting(timed.dispatch(new CloseAccount({ accountId })), "3 seconds")
        assert.isTrue(Exit.isSuccess(closed))
        assert.strictEqual(runs.close, 1)
        const deposit = yield* afterAdjusting(timed.dispatch(new Deposit({ accountId, amount: 3 })), "3 seconds")
        assert.deepStrictEqual(
          deposit,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        const tight = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 minute", { CloseAccount: "2 seconds" })))
        const late = yield* afterAdjusting(tight.dispatch(new CloseAccount({ accountId })), "3 seconds")
        assert.deepStrictEqual(
          late,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "CloseAccount", timeoutMillis: 2000 }))
        )
      }).pipe(Effect.provide(InMemory.layer)))

    /** A unit of work whose commit takes `commitTakes` and, as a commit in flight, cannot be interrupted. */
    const slowCommit = (commitTakes: Duration.DurationInput) => {
      const log: Array<string> = []
      const unitOfWork: UnitOfWork.Service = {
        transactional: (self) =>
          Effect.uninterruptibleMask((restore) =>
            Effect.flatMap(Effect.exit(restore(self)), (exit) =>
              Exit.isSuccess(exit)
                ? Effect.sleep(commitTakes).pipe(
                  Effect.zipRight(Effect.sync(() => log.push("commit"))),
                  Effect.as(exit.value)
                )
                : Effect.zipRight(Effect.sync(() => log.push("rollback")), exit))
          )
      }
      return { log, layer: Layer.succeed(UnitOfWork.UnitOfWork, unitOfWork) }
    }

    it.effect("lets a dispatch whose deadline passes during its commit end as the commit does", () => {
      const commit = slowCommit("2 seconds")
      return Effect.gen(function*() {
        const { bus, runs } = makeBus()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second"), Middleware.transaction))
        const exit = yield* afterAdjusting(timed.dispatch(new Deposit({ accountId, amount: 5 })), "2 seconds")
        // It committed: a timeout would have the caller retry work that is done.
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 5 }))
        assert.deepStrictEqual(commit.log, ["commit"])
        assert.strictEqual(runs.deposit, 1)
        // Before its commit begins, the deadline still interrupts it.
        const { bus: slow } = makeBus({
          deposit: (command) => Effect.as(Effect.sleep("2 seconds"), deposited(command))
        })
        const late = slow.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second"), Middleware.transaction))
        assert.deepStrictEqual(
          yield* afterAdjusting(late.dispatch(new Deposit({ accountId, amount: 5 })), "5 seconds"),
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        assert.deepStrictEqual(commit.log, ["commit", "rollback"])
      }).pipe(Effect.provide(commit.layer), Effect.provide(InMemory.layer))
    })

    it.live("does the same on the live clock", () => {
      const commit = slowCommit("60 millis")
      return Effect.gen(function*() {
        const { bus } = makeBus()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("10 millis"), Middleware.transaction))
        assert.deepStrictEqual(
          yield* Effect.exit(timed.dispatch(new Deposit({ accountId, amount: 4 }))),
          Exit.succeed({ balance: 4 })
        )
        assert.deepStrictEqual(commit.log, ["commit"])
      }).pipe(Effect.provide(commit.layer), Effect.provide(InMemory.layer))
    })

    it.live("a Cutoff in scope passes a waiting dispatch's deadline now, and hears of a dispatch that reached its commit", () =>
      Effect.gen(function*() {
        const registered = new Set<() => boolean>()
        let committed = 0
        const cutoff: Middleware.Cutoff = {
          register: (cut) => {
            registered.add(cut)
            return () => registered.delete(cut)
          },
          committed: () => {
            committed++
          }
        }
        const withCutoff = <A, E, R>(self: Effect.Effect<A, E, R>) =>
          Effect.provideService(self, Middleware.CurrentCutoff, cutoff)
        const stack = [Middleware.timeout("1 hour"), Middleware.transaction] as const

        const { bus: waiting } = makeBus({
          deposit: (command) => Effect.as(Effect.sleep("1 hour"), deposited(command))
        })
        const fiber = yield* Effect.fork(
          withCutoff(waiting.pipe(CommandBus.withMiddleware(...stack)).dispatch(new Deposit({ accountId, amount: 1 })))
        )
        for (let i = 0; i < 200 && registered.size === 0; i++) yield* Effect.sleep("5 millis")
        assert.deepStrictEqual([...registered].map((cut) => cut()), [true])
        const exit = yield* Fiber.await(fiber)
        assert.isTrue(Exit.isFailure(exit) && Cause.isFailType(exit.cause))
        const error = Exit.isFailure(exit) && Cause.isFailType(exit.cause) ? exit.cause.error : undefined
        assert.instanceOf(error, CommandError.CommandTimeout)
        // The time it had before the cut, not the hour its deadline would have given.
        assert.isTrue(error.timeoutMillis >= 0 && error.timeoutMillis < 60_000, `${error.timeoutMillis}`)
        assert.deepStrictEqual([registered.size, committed], [0, 0])
        assert.strictEqual((yield* readOutbox).length, 0)

        const { bus: quick } = makeBus({
          deposit: (command) => Effect.as(Effect.sleep("5 millis"), deposited(command))
        })
        assert.deepStrictEqual(
          yield* withCutoff(
            quick.pipe(CommandBus.withMiddleware(...stack)).dispatch(new Deposit({ accountId, amount: 2 }))
          ),
          { balance: 2 }
        )
        assert.deepStrictEqual([registered.size, committed], [0, 1])
      }).pipe(Effect.provide(InMemory.layer)))

    it.scoped("reports the outcome of a dispatch its caller made uninterruptible, past the deadline", () =>
      Effect.gen(function*() {
        const subscription = yield* subscribe
        const { bus, probe } = slow()
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second")))
        const exit = yield* afterAdjusting(
          Effect.uninterruptible(timed.dispatch(new Deposit({ accountId, amount: 2 }))),
          "2 seconds"
        )
        // The handler could not be interrupted, finished and published its event.
        assert.deepStrictEqual(exit, Exit.succeed({ balance: 2 }))
        assert.isTrue(probe.completed)
        assert.strictEqual(yield* Queue.size(subscription), 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.scoped("interrupts a handler at the first point it can be, past the deadline", () =>
      Effect.gen(function*() {
        const subscription = yield* subscribe
        const probe = { completed: false }
        const { bus } = makeBus({
          deposit: (command) =>
            Effect.uninterruptible(Effect.sleep("2 seconds")).pipe(
              Effect.zipRight(Effect.sleep("1 second")),
              Effect.zipRight(Effect.sync(() => (probe.completed = true))),
              Effect.as(deposited(command))
            )
        })
        const timed = bus.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second")))
        const exit = yield* afterAdjusting(timed.dispatch(new Deposit({ accountId, amount: 5 })), "3 seconds")
        assert.deepStrictEqual(
          exit,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        assert.isFalse(probe.completed)
        assert.strictEqual((yield* readOutbox).length, 0)
        assert.strictEqual(yield* Queue.size(subscription), 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("covers every retry attempt when placed outside retry", () =>
      Effect.gen(function*() {
        const { bus, runs } = makeBus({ deposit: () => Effect.fail(conflict) })
        const stacked = bus.pipe(
          CommandBus.withMiddleware(
            Middleware.timeout("1 second"),
            Middleware.retry({ schedule: Schedule.spaced("400 millis") })
          )
        )
        const exit = yield* afterAdjusting(stacked.dispatch(new Deposit({ accountId, amount: 1 })), "1 second")
        assert.deepStrictEqual(
          exit,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        assert.strictEqual(runs.deposit, 3)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("transaction", () => {
    /** A unit of work and an outbox that write down what runs, and whether a transaction is open. */
    const recordingWorld = () => {
      const log: Array<string> = []
      // Transactions open, nested ones included.
      let depth = 0
      const unitOfWork: UnitOfWork.Service = {
        transactional: (self) =>
          Effect.acquireUseRelease(
            Effect.sync(() => {
              depth++
              log.push("begin")
            }),
            () => self,
            (_, exit) =>
              Effect.sync(() => {
                depth--
                log.push(Exit.isSuccess(exit) ? "commit" : "rollback")
              })
          )
      }
      const outbox: Outbox.Service = {
        append: (events) => Effect.sync(() => void log.push(`append ${events.length} (open: ${depth > 0})`)),
        read: () => Effect.succeed([])
      }
      const note = (entry: string) => Effect.sync(() => void log.push(`${entry} (open: ${depth > 0})`))
      /** A middleware whose before-commit hook notes its name and the handler's value. */
      const hook = (name: string) =>
        Middleware.make(name, (self, dispatch) => {
          dispatch.beforeCommit.push((value) => note(`${name} ${JSON.stringify(value)}`))
          return self
        })
      const layer = Layer.mergeAll(
        Layer.succeed(UnitOfWork.UnitOfWork, unitOfWork),
        Layer.succeed(Outbox.Outbox, outbox)
      )
      return { log, note, hook, layer }
    }

    it.effect("runs the handler, the outbox append and the before-commit hooks in one transaction", () => {
      const { hook, layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        const { bus } = makeBus({ deposit: (command) => Effect.as(note("handler"), deposited(command)) })
        const transactional = bus.pipe(CommandBus.withMiddleware(hook("hook"), Middleware.transaction))
        yield* transactional.dispatch(new Deposit({ accountId, amount: 7 }))
        assert.deepStrictEqual(log, [
          "begin",
          "handler (open: true)",
          "append 1 (open: true)",
          "hook {\"balance\":7} (open: true)",
          "commit"
        ])
      }).pipe(Effect.provide(layer))
    })

    // A handler may dispatch another command (on this bus or another) inside
    // its own transaction: that dispatch runs its own hooks, never those of
    // the dispatch around it (an idempotency record would be written with
    // the inner command's value).
    it.effect("runs, for a dispatch made inside a handler, only that dispatch's hooks", () => {
      const { hook, layer, log } = recordingWorld()
      return Effect.gen(function*() {
        const inner = makeBus().bus.pipe(CommandBus.withMiddleware(hook("inner"), Middleware.transaction))
        const world = yield* Effect.context<UnitOfWork.UnitOfWork | Outbox.Outbox>()
        const { bus } = makeBus({
          deposit: (command) =>
            Effect.as(
              dispatchedIn(world, inner.dispatch(new Deposit({ accountId, amount: command.amount + 1 }))),
              deposited(command)
            )
        })
        const outer = bus.pipe(CommandBus.withMiddleware(hook("outer"), Middleware.transaction))
        yield* outer.dispatch(new Deposit({ accountId, amount: 7 }))
        assert.deepStrictEqual(log, [
          "begin",
          "begin",
          "append 1 (open: true)",
          "inner {\"balance\":8} (open: true)",
          "commit",
          "append 1 (open: true)",
          "outer {\"balance\":7} (open: true)",
          "commit"
        ])
      }).pipe(Effect.provide(layer))
    })

    it.effect("runs a dispatch effect's hooks once each time it runs", () => {
      const { hook, layer, log } = recordingWorld()
      return Effect.gen(function*() {
        const { bus } = makeBus()
        const deposit = bus.pipe(CommandBus.withMiddleware(hook("hook"), Middleware.transaction)).dispatch(
          new Deposit({ accountId, amount: 7 })
        )
        yield* deposit
        yield* deposit
        assert.deepStrictEqual(log.filter((entry) => entry.startsWith("hook")), [
          "hook {\"balance\":7} (open: true)",
          "hook {\"balance\":7} (open: true)"
        ])
      }).pipe(Effect.provide(layer))
    })

    it.effect("rolls back without appending or running hooks when the handler fails", () => {
      const { hook, layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        const { bus } = makeBus({
          deposit: (command) =>
            Effect.zipRight(note("handler"), Effect.fail(new AccountClosed({ accountId: command.accountId })))
        })
        const transactional = bus.pipe(CommandBus.withMiddleware(hook("hook"), Middleware.transaction))
        yield* Effect.exit(transactional.dispatch(new Deposit({ accountId, amount: 7 })))
        assert.deepStrictEqual(log, ["begin", "handler (open: true)", "rollback"])
      }).pipe(Effect.provide(layer))
    })

    it.effect("rolls back when a before-commit hook fails", () => {
      const { layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        const hook = Middleware.make<CommandError.StoreUnavailable>("hook", (self, dispatch) => {
          dispatch.beforeCommit.push(() =>
            Effect.zipRight(
              note("hook"),
              Effect.fail(new CommandError.StoreUnavailable({ store: "s", reason: "down" }))
            )
          )
          return self
        })
        const { bus } = makeBus({ deposit: (command) => Effect.as(note("handler"), deposited(command)) })
        const transactional = bus.pipe(CommandBus.withMiddleware(hook, Middleware.transaction))
        const error = yield* Effect.flip(transactional.dispatch(new Deposit({ accountId, amount: 7 })))
        assert.strictEqual(error._tag, "StoreUnavailable")
        assert.deepStrictEqual(log, [
          "begin",
          "handler (open: true)",
          "append 1 (open: true)",
          "hook (open: true)",
          "rollback"
        ])
      }).pipe(Effect.provide(layer))
    })

    it.effect("records the idempotency result after commit with a store outside the transaction", () => {
      const { layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        const memory = yield* Idempotency.makeMemory
        const store: Idempotency.Store = {
          ...memory,
          complete: (request) => Effect.zipRight(note(`complete ${request.result._tag}`), memory.complete(request))
        }
        const { bus } = makeBus({ deposit: (command) => Effect.as(note("handler"), deposited(command)) })
        const transactional = bus.pipe(CommandBus.withMiddleware(Idempotency.middleware(), Middleware.transaction))
        yield* transactional.dispatch(new Deposit({ accountId, amount: 7, idempotencyKey: "k" })).pipe(
          Effect.provideService(Idempotency.IdempotencyStore, store)
        )
        assert.deepStrictEqual(log, [
          "begin",
          "handler (open: true)",
          "append 1 (open: true)",
          "commit",
          "complete Success (open: false)"
        ])
      }).pipe(Effect.provide(layer))
    })

    it.effect("records the idempotency result inside the transaction with a store that joins it", () => {
      const { layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        const memory = yield* Idempotency.makeMemory
        const store: Idempotency.Store = {
          ...memory,
          joinsTransaction: true,
          complete: (request) => Effect.zipRight(note(`complete ${request.result._tag}`), memory.complete(request))
        }
        const { bus } = makeBus({ deposit: (command) => Effect.as(note("handler"), deposited(command)) })
        const transactional = bus.pipe(CommandBus.withMiddleware(Idempotency.middleware(), Middleware.transaction))
        yield* transactional.dispatch(new Deposit({ accountId, amount: 7, idempotencyKey: "k" })).pipe(
          Effect.provideService(Idempotency.IdempotencyStore, store)
        )
        assert.deepStrictEqual(log, [
          "begin",
          "handler (open: true)",
          "append 1 (open: true)",
          "complete Success (open: true)",
          "commit"
        ])
      }).pipe(Effect.provide(layer))
    })

    it.effect("runs each retry attempt in a fresh transaction when placed inside retry", () => {
      const { layer, log, note } = recordingWorld()
      return Effect.gen(function*() {
        let runs = 0
        const { bus } = makeBus({
          deposit: (command) =>
            Effect.zipRight(note("handler"), ++runs === 1 ? Effect.fail(conflict) : Effect.succeed(deposited(command)))
        })
        const transactional = bus.pipe(
          CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(1) }), Middleware.transaction)
        )
        yield* transactional.dispatch(new Deposit({ accountId, amount: 7 }))
        assert.deepStrictEqual(log, [
          "begin",
          "handler (open: true)",
          "rollback",
          "begin",
          "handler (open: true)",
          "append 1 (open: true)",
          "commit"
        ])
      }).pipe(Effect.provide(layer))
    })

    // The test kit's world (InMemory.layer), as PostgreSQL does it.
    it.scoped("in memory, publishes a dispatch's events when it succeeds, and none when it fails after its handler", () =>
      Effect.gen(function*() {
        const subscription = yield* subscribe
        const refused = new CommandError.Forbidden({ reason: "refused at commit" })
        const refusing = Middleware.make<CommandError.Forbidden>("refusing", (self, dispatch) => {
          if ((dispatch.command as Deposit).amount === 13) dispatch.beforeCommit.push(() => Effect.fail(refused))
          return self
        })
        // Deposit's handler dispatches CloseAccount (an event of amount 0), held with its own.
        const closing = DomainEvent.draft(
          { aggregateType: "Account", aggregateId: accountId, aggregateVersion: 1 },
          new Deposited({ accountId, amount: 0 })
        )
        const inner = makeBus({ close: () => Effect.succeed(Handler.result(undefined, [closing])) }).bus.pipe(
          CommandBus.withMiddleware(Middleware.transaction)
        )
        const world = yield* Effect.context<UnitOfWork.UnitOfWork | Outbox.Outbox>()
        const { bus } = makeBus({
          deposit: (command) =>
            Effect.as(dispatchedIn(world, inner.dispatch(new CloseAccount({ accountId }))), deposited(command))
        })
        const transactional = bus.pipe(CommandBus.withMiddleware(refusing, Middleware.transaction))
        assert.deepStrictEqual(
          yield* Effect.exit(transactional.dispatch(new Deposit({ accountId, amount: 13 }))),
          Exit.fail(refused)
        )
        // Neither the inner dispatch's event nor the outer's.
        assert.strictEqual((yield* readOutbox).length, 0)
        assert.strictEqual(yield* Queue.size(subscription), 0)

        yield* transactional.dispatch(new Deposit({ accountId, amount: 5 }))
        const published = yield* Queue.takeAll(subscription)
        assert.deepStrictEqual([...published].map((envelope) => (envelope.payload as Deposited).amount), [0, 5])
        assert.deepStrictEqual((yield* readOutbox).map((stored) => stored.position), [1, 2])
      }).pipe(Effect.provide(InMemory.layer)))
  })

  // ---------------------------------------------------------------------------
  describe("idempotency", () => {
    const key = "key-1"

    /** The idempotency part of the default stack, over a deposit handler. */
    const idempotent = (
      deposit?: Handler.Handler<Deposit>,
      options: Idempotency.Options & { readonly timeout?: Duration.DurationInput } = {}
    ) => {
      const replays: Array<boolean> = []
      const { bus, runs } = makeBus(deposit === undefined ? {} : { deposit })
      const spy = Middleware.make(
        "spy",
        (self, dispatch) => Effect.ensuring(self, Effect.sync(() => replays.push(dispatch.replayed)))
      )
      return {
        bus: bus.pipe(
          CommandBus.withMiddleware(
            spy,
            Idempotency.middleware(options),
            Middleware.timeout(options.timeout ?? "10 seconds"),
            Middleware.retry({ schedule: Schedule.recurs(2) }),
            Middleware.transaction
          )
        ),
        runs,
        replays
      }
    }

    const deposit = (
      fields: Partial<{ amount: number; userId: string; idempotencyKey: string; accountId: string }> = {}
    ) => new Deposit({ accountId, amount: 5, userId: "alice", idempotencyKey: key, ...fields })

    it.effect("replays a success without running the handler again", () =>
      Effect.gen(function*() {
        const { bus, replays, runs } = idempotent()
        const first = yield* bus.dispatch(deposit())
        const second = yield* bus.dispatch(deposit())
        assert.deepStrictEqual(first, { balance: 5 })
        assert.deepStrictEqual(second, first)
        assert.strictEqual(runs.deposit, 1)
        assert.deepStrictEqual(replays, [false, true])
        // The replay appends no event.
        assert.strictEqual((yield* readOutbox).length, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("replays a domain failure without running the handler again", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent((command) => Effect.fail(new AccountClosed({ accountId: command.accountId })))
        const first = yield* Effect.flip(bus.dispatch(deposit()))
        const second = yield* Effect.flip(bus.dispatch(deposit()))
        assert.deepStrictEqual(first, new AccountClosed({ accountId }))
        assert.deepStrictEqual(second, first)
        assert.instanceOf(second, AccountClosed)
        assert.strictEqual(runs.deposit, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("does not record a retryable failure: a later dispatch runs again", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent((command) =>
          runs.deposit <= 3 ? Effect.fail(conflict) : Effect.succeed(deposited(command))
        )
        assert.deepStrictEqual(yield* Effect.flip(bus.dispatch(deposit())), conflict)
        assert.strictEqual(runs.deposit, 3)
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 4)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("refuses a concurrent duplicate with IdempotencyKeyInFlight", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const { bus, runs } = idempotent((command) =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Deferred.await(gate)),
            Effect.as(deposited(command))
          )
        )
        const first = yield* Effect.fork(bus.dispatch(deposit()))
        yield* Deferred.await(started)
        const duplicate = yield* Effect.flip(bus.dispatch(deposit()))
        assert.deepStrictEqual(duplicate, new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: key }))
        yield* Deferred.succeed(gate, undefined)
        assert.deepStrictEqual(yield* Fiber.join(first), { balance: 5 })
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("refuses the same key with another payload with IdempotencyKeyMismatch", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent()
        yield* bus.dispatch(deposit({ amount: 5 }))
        const error = yield* Effect.flip(bus.dispatch(deposit({ amount: 6 })))
        assert.deepStrictEqual(error, new Idempotency.IdempotencyKeyMismatch({ idempotencyKey: key }))
        const otherCommand = yield* Effect.flip(
          bus.dispatch(new CloseAccount({ accountId, userId: "alice", idempotencyKey: key }))
        )
        assert.deepStrictEqual(otherCommand, new Idempotency.IdempotencyKeyMismatch({ idempotencyKey: key }))
        assert.deepStrictEqual(runs, { deposit: 1, close: 0 })
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("scopes keys by user: the same key from two users runs twice", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent()
        yield* bus.dispatch(deposit({ userId: "alice" }))
        yield* bus.dispatch(deposit({ userId: "bob", amount: 6 }))
        assert.strictEqual(runs.deposit, 2)
        // Each user's own repeat is still a replay.
        yield* bus.dispatch(deposit({ userId: "bob", amount: 6 }))
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("refuses to record a result that does not encode to JSON, and frees the key", () =>
      Effect.gen(function*() {
        class Overdrawn extends Schema.TaggedError<Overdrawn>()("Overdrawn", { by: Schema.Number }) {}
        // Its success encodes to a Date, its failure may hold NaN: a JSON record of either reads back as another value.
        class Stamp extends Command.Class<Stamp>()("Stamp", {
          payload: { fail: Schema.Boolean },
          success: Schema.Struct({ at: Schema.DateFromSelf }),
          failure: Overdrawn
        }) {}
        class Stamped extends DomainEvent.Class<Stamped>()("Stamped", { at: Schema.String }) {}
        let runs = 0
        const bus = CommandBus.make([Stamp], {
          Stamp: (command) =>
            Effect.suspend(() => {
              runs++
              return command.fail
                ? Effect.fail(new Overdrawn({ by: Number.NaN }))
                : Effect.succeed(Handler.result({ at: new Date(0) }, [
                  DomainEvent.draft(
                    { aggregateType: "Clock", aggregateId: "c", aggregateVersion: runs },
                    new Stamped({ at: "now" })
                  )
                ]))
            })
        }).pipe(CommandBus.withMiddleware(Idempotency.middleware(), Middleware.transaction))
        const stamp = (fail: boolean) => new Stamp({ fail, userId: "alice", idempotencyKey: `stamp-${fail}` })
        for (const fail of [false, true]) {
          for (const attempt of [1, 2]) {
            const exit = yield* Effect.exit(bus.dispatch(stamp(fail)))
            const defect = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined
            assert.instanceOf(defect, Cause.RuntimeException, `${fail ? "failure" : "success"}, attempt ${attempt}`)
            assert.include((defect as Error).message, `Stamp: its ${fail ? "failure" : "success"} cannot be recorded`)
          }
        }
        // Each ran every time: the key was freed, not left in flight or recorded.
        assert.strictEqual(runs, 4)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("frees the key of a dispatch interrupted while its claim was landing", () =>
      Effect.gen(function*() {
        const memory = yield* Idempotency.makeMemory
        // A claim whose answer takes a second to come back, as one over the
        // network may: it has landed before the dispatch hears of it.
        const slowClaims: Idempotency.Store = {
          ...memory,
          claim: (request) => Effect.zipLeft(memory.claim(request), Effect.sleep("1 second"))
        }
        const { bus, runs } = idempotent()
        const dispatch = bus.dispatch(deposit()).pipe(
          Effect.provideService(Idempotency.IdempotencyStore, slowClaims)
        )
        const first = yield* Effect.fork(dispatch)
        yield* TestClock.adjust("500 millis")
        // The client hangs up while the claim is on its way.
        yield* Fiber.interrupt(first).pipe(Effect.fork)
        yield* TestClock.adjust("1 second")
        assert.strictEqual(runs.deposit, 0)
        // Its retry runs rather than wait out the lease behind IdempotencyKeyInFlight.
        const retried = yield* afterAdjusting(dispatch, "1 second")
        assert.deepStrictEqual(retried, Exit.succeed({ balance: 5 }))
        assert.strictEqual(runs.deposit, 1)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("scopes a key by the current user when the command names none", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent()
        const anonymous = () => new Deposit({ accountId, amount: 5, idempotencyKey: key })
        yield* bus.dispatch(anonymous()).pipe(CurrentUser.as(alice))
        // Bob's key is not Alice's: his dispatch runs, and does not get her result.
        yield* bus.dispatch(anonymous()).pipe(CurrentUser.as(bob))
        assert.strictEqual(runs.deposit, 2)
        yield* bus.dispatch(anonymous()).pipe(CurrentUser.as(bob))
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("leaves a command without a key alone", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent()
        const command = new Deposit({ accountId, amount: 5 })
        yield* bus.dispatch(command)
        yield* bus.dispatch(command)
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("releases the claim after a timeout, so a retry runs", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent(
          (command) =>
            runs.deposit === 1
              ? Effect.as(Effect.sleep("1 minute"), deposited(command))
              : Effect.succeed(deposited(command)),
          { timeout: "1 second" }
        )
        const timedOut = yield* afterAdjusting(bus.dispatch(deposit()), "1 second")
        assert.deepStrictEqual(
          timedOut,
          Exit.fail(new CommandError.CommandTimeout({ commandType: "Deposit", timeoutMillis: 1000 }))
        )
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("releases the claim after a defect, so a retry runs", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent((command) =>
          runs.deposit === 1 ? Effect.die("boom") : Effect.succeed(deposited(command))
        )
        const crashed = yield* Effect.exit(bus.dispatch(deposit()))
        assert.isTrue(Exit.isFailure(crashed) && Cause.isDie(crashed.cause))
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("releases the claim after an interruption, so a retry runs", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const { bus, runs } = idempotent((command) =>
          runs.deposit === 1
            ? Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)
            : Effect.succeed(deposited(command))
        )
        const first = yield* Effect.fork(bus.dispatch(deposit()))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(first)
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("blocks a retry of a crashed dispatch until its lease passes, then runs it", () => {
      // A crash: the dispatch dies with its process, so its claim is never released.
      const neverReleased = Layer.effect(
        Idempotency.IdempotencyStore,
        Effect.map(Idempotency.makeMemory, (store): Idempotency.Store => ({ ...store, release: () => Effect.void }))
      )
      const world = Layer.mergeAll(Outbox.layerMemory, UnitOfWork.layerNone, neverReleased).pipe(
        Layer.provideMerge(EventPublisher.layerMemory)
      )
      return Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const { bus, runs } = idempotent(
          (command) =>
            runs.deposit === 1
              ? Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)
              : Effect.succeed(deposited(command)),
          { lease: "30 seconds" }
        )
        const crashed = yield* Effect.fork(bus.dispatch(deposit()))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(crashed)
        const inFlight = new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: key })
        assert.deepStrictEqual(yield* Effect.flip(bus.dispatch(deposit())), inFlight)
        yield* TestClock.adjust("29 seconds")
        assert.deepStrictEqual(yield* Effect.flip(bus.dispatch(deposit())), inFlight)
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* bus.dispatch(deposit()), { balance: 5 })
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(world))
    })

    it.effect("forgets a record after its retention", () =>
      Effect.gen(function*() {
        const { bus, runs } = idempotent(undefined, { retention: "10 minutes" })
        yield* bus.dispatch(deposit())
        yield* TestClock.adjust("9 minutes")
        yield* bus.dispatch(deposit())
        assert.strictEqual(runs.deposit, 1)
        yield* TestClock.adjust("1 minute")
        yield* bus.dispatch(deposit())
        assert.strictEqual(runs.deposit, 2)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("observeReplay tells a replay from a first run", () =>
      Effect.gen(function*() {
        const { bus } = idempotent((command) =>
          command.amount === 13 ? Effect.fail(new AccountClosed({ accountId })) : Effect.succeed(deposited(command))
        )
        const first = yield* Idempotency.observeReplay(bus.dispatch(deposit()))
        const second = yield* Idempotency.observeReplay(bus.dispatch(deposit()))
        assert.deepStrictEqual(first, { exit: Exit.succeed({ balance: 5 }), replayed: false })
        assert.deepStrictEqual(second, { exit: Exit.succeed({ balance: 5 }), replayed: true })
        const failed = yield* Idempotency.observeReplay(bus.dispatch(deposit({ amount: 13, idempotencyKey: "k-13" })))
        const failedAgain = yield* Idempotency.observeReplay(
          bus.dispatch(deposit({ amount: 13, idempotencyKey: "k-13" }))
        )
        assert.isFalse(failed.replayed)
        assert.isTrue(failedAgain.replayed)
        assert.deepStrictEqual(failedAgain.exit, Exit.fail(new AccountClosed({ accountId })))
        const unkeyed = yield* Idempotency.observeReplay(bus.dispatch(new Deposit({ accountId, amount: 5 })))
        assert.isFalse(unkeyed.replayed)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("observeReplay of a command ignores a replay of another command its handler dispatches", () =>
      Effect.gen(function*() {
        const inner = idempotent()
        const world = yield* Effect.context<Outbox.Outbox | UnitOfWork.UnitOfWork | Idempotency.IdempotencyStore>()
        // CloseAccount's handler deposits with a key it always uses: from the
        // second close on, that deposit is a replay.
        const { bus } = makeBus({
          close: () =>
            Effect.as(
              dispatchedIn(world, inner.bus.dispatch(deposit({ idempotencyKey: "inner-key" }))),
              Handler.result(undefined)
            )
        })
        const outer = bus.pipe(CommandBus.withMiddleware(Idempotency.middleware(), Middleware.transaction))
        const close = (idempotencyKey: string) => new CloseAccount({ accountId, idempotencyKey })
        yield* outer.dispatch(close("close-1"))
        const second = close("close-2")
        const observed = yield* Idempotency.observeReplay(outer.dispatch(second), second)
        assert.deepStrictEqual(observed, { exit: Exit.void, replayed: false })
        assert.deepStrictEqual(inner.replays, [false, true])
        // The same command again is a replay, and says so.
        assert.isTrue((yield* Idempotency.observeReplay(outer.dispatch(second), second)).replayed)
        // Without a command, any replay inside counts, as before.
        const third = close("close-3")
        assert.isTrue((yield* Idempotency.observeReplay(outer.dispatch(third))).replayed)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("runs the handler once for 20 concurrent dispatches with one key", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const { bus, runs } = idempotent((command) =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Deferred.await(gate)),
            Effect.as(deposited(command))
          )
        )
        const all = yield* Effect.fork(
          Effect.forEach(
            Array.from({ length: 20 }, () => deposit()),
            (command) => Effect.either(bus.dispatch(command)),
            {
              concurrency: "unbounded"
            }
          )
        )
        yield* Deferred.await(started)
        // Let every other dispatch reach its claim before the first one finishes.
        yield* TestClock.adjust(Duration.zero)
        yield* Deferred.succeed(gate, undefined)
        const results = yield* Fiber.join(all)
        assert.strictEqual(runs.deposit, 1)
        const succeeded = results.filter((result) => result._tag === "Right")
        const inFlight = results.filter((result) =>
          result._tag === "Left" && result.left._tag === "IdempotencyKeyInFlight"
        )
        assert.strictEqual(succeeded.length, 1)
        assert.strictEqual(inFlight.length, 19)
        assert.strictEqual((yield* readOutbox).length, 1)
      }).pipe(Effect.provide(InMemory.layer)))
  })
})
