/**
 * Middleware: Effect combinators around a dispatch. Each declares, in its
 * type, the errors it may add and the services it needs; the bus adds both to
 * every command's own types. The first middleware in a list is the outermost.
 *
 * @since 0.1.0
 */
import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as EffectContext from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import type * as FiberRefs from "effect/FiberRefs"
import * as HashMap from "effect/HashMap"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as Schedule from "effect/Schedule"
import type * as Tracer from "effect/Tracer"
import type * as Command from "./Command.js"
import { CommandTimeout, CommandValidationError, Forbidden, type StoreUnavailable } from "./CommandError.js"
import * as CurrentUser from "./CurrentUser.js"
import { isRolledBackConflict } from "./internal/conflict.js"
import { maxTimerMillis } from "./internal/limit.js"
import * as Span from "./internal/span.js"
import { type BeforeCommit, UnitOfWork } from "./UnitOfWork.js"

/**
 * One dispatch as middleware sees it. `events` and `attempts` are filled in
 * by the bus as the dispatch runs, for logging and metrics.
 *
 * @since 0.1.0
 * @category models
 */
export interface Dispatch {
  readonly command: Command.Any
  readonly definition: Command.AnyClass
  /** Events appended by the last attempt. */
  events: number
  /** Handler runs so far (more than one after retries). */
  attempts: number
  /** Whether the result was replayed from the idempotency store. */
  replayed: boolean
  /**
   * Work that commits with the handler's writes: the bus runs these hooks,
   * in order, after the handler succeeds and its events are appended, inside
   * the unit of work (the idempotency record is one). A middleware adds one
   * with `push`; they belong to this run of this dispatch only.
   */
  readonly beforeCommit: Array<BeforeCommit>
  /**
   * Set by the `transaction` middleware when the handler's work is done and
   * its commit begins: the point of no return, since a unit of work does not
   * stop between its work's success and its commit's outcome. `timeout` lets
   * a dispatch past it end as its commit does rather than report a timeout
   * for work that committed; the idempotency middleware records the success
   * of one interrupted past it (a client that hung up), which committed.
   * A commit that fails ends it (the unit of work's `afterEnd` tells, even
   * when an interruption hid the failure): the dispatch may go on (a retry).
   */
  committing: boolean
  /**
   * A deadline that passed while the commit was in flight, and so waits on
   * its outcome: the `transaction` middleware calls it when the commit
   * fails, so that a dispatch that goes on (a retry) is cut then.
   */
  overdue?: (() => void) | undefined
}

/**
 * A middleware that may add errors `E` and needs services `R`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Middleware<out E = never, out R = never> {
  readonly name: string
  readonly apply: <A, E1, R1>(self: Effect.Effect<A, E1, R1>, dispatch: Dispatch) => Effect.Effect<A, E | E1, R | R1>
}

/**
 * @since 0.1.0
 * @category models
 */
export type Any = Middleware<any, any>

/**
 * The errors a list of middleware adds.
 *
 * @since 0.1.0
 * @category models
 */
export type Error<M> = M extends ReadonlyArray<infer X> ? Error<X> : M extends Middleware<infer E, infer _R> ? E : never

/**
 * The services a list of middleware needs.
 *
 * @since 0.1.0
 * @category models
 */
export type Context<M> = M extends ReadonlyArray<infer X> ? Context<X> : M extends Middleware<infer _E, infer R> ? R
: never

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = <E = never, R = never>(
  name: string,
  apply: <A, E1, R1>(self: Effect.Effect<A, E1, R1>, dispatch: Dispatch) => Effect.Effect<A, E | E1, R | R1>
): Middleware<E, R> => ({ name, apply })

/**
 * Applies `middleware` only to the listed commands. The type still adds its
 * errors to every command, an over-approximation that keeps the bus's types
 * simple; apply a combinator inside a handler for exact per-command types.
 *
 * @since 0.1.0
 * @category combinators
 */
export const only = <E, R>(
  commands: ReadonlyArray<{ readonly _tag: string }>,
  middleware: Middleware<E, R>
): Middleware<E, R> => {
  const tags = new Set(commands.map((command) => command._tag))
  return make(
    `${middleware.name}(${[...tags].join(",")})`,
    (self, dispatch) => tags.has(dispatch.command._tag) ? middleware.apply(self, dispatch) : self
  )
}

// -----------------------------------------------------------------------------
// validation
// -----------------------------------------------------------------------------

/**
 * Runs the business-rule checks a command declares (`validate`) before its
 * handler, failing with every problem found at once.
 *
 * @since 0.1.0
 * @category middleware
 */
export const validation: Middleware<CommandValidationError> = make("validation", <A, E, R>(
  self: Effect.Effect<A, E, R>,
  { command, definition }: Dispatch
) => {
  const validate = definition.validate
  if (validate === undefined) return self
  return Effect.suspend((): Effect.Effect<A, E | CommandValidationError, R> => {
    const issues = validate(command)
    return issues.length === 0
      ? self
      : Effect.fail(
        new CommandValidationError({
          commandType: command._tag,
          issues: issues as readonly [Command.ValidationIssue, ...Array<Command.ValidationIssue>]
        })
      )
  })
})

// -----------------------------------------------------------------------------
// authorization
// -----------------------------------------------------------------------------

/**
 * Checks the current user against the command: the role the command
 * requires, and that a command's `userId` is the authenticated user's own.
 *
 * @since 0.1.0
 * @category middleware
 */
export const authorization: Middleware<Forbidden> = make("authorization", <A, E, R>(
  self: Effect.Effect<A, E, R>,
  { command, definition }: Dispatch
) =>
  Effect.flatMap(CurrentUser.CurrentUser, (principal): Effect.Effect<A, E | Forbidden, R> => {
    const role = definition.requiredRole
    if (role !== undefined && !CurrentUser.hasRole(principal, role)) {
      return Effect.fail(new Forbidden({ reason: `${command._tag} requires the role ${JSON.stringify(role)}` }))
    }
    if (Option.isSome(principal) && command.userId !== undefined && command.userId !== principal.value.userId) {
      return Effect.fail(new Forbidden({ reason: "The command's userId is not the authenticated user" }))
    }
    return self
  }))

// -----------------------------------------------------------------------------
// logging
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export interface LoggingOptions {
  readonly started?: LogLevel.LogLevel
  readonly completed?: LogLevel.LogLevel
  readonly failed?: LogLevel.LogLevel
}

interface LogLevels {
  readonly started: LogLevel.LogLevel
  readonly completed: LogLevel.LogLevel
  readonly failed: LogLevel.LogLevel
}

/**
 * Structured `command.started`, `command.completed` (events, attempts,
 * duration) and `command.failed` (error tag) logs, annotated with the
 * command's type, id and correlation id. Levels below the fiber's minimum
 * cost almost nothing: they are decided before any log is built.
 *
 * @since 0.1.0
 * @category middleware
 */
export const logging = (options: LoggingOptions = {}): Middleware => {
  const levels: LogLevels = {
    started: options.started ?? LogLevel.Debug,
    completed: options.completed ?? LogLevel.Info,
    failed: options.failed ?? LogLevel.Warning
  }
  return make(
    "logging",
    <A, E, R>(self: Effect.Effect<A, E, R>, dispatch: Dispatch) =>
      Effect.withFiberRuntime<A, E, R>((fiber) => {
        const minimum = fiber.getFiberRef(FiberRef.currentMinimumLogLevel)
        // Nothing logs at all: not this middleware's lines, nor the handler's.
        if (minimum._tag === "None") return self
        const { command } = dispatch
        // The annotations cover the whole dispatch, the handler's own logs
        // included: set on the way in and put back on exit, in one region
        // with the logs, rather than `Effect.annotateLogs` (a second
        // acquire/release around it).
        const outer = fiber.getFiberRef(FiberRef.currentLogAnnotations)
        const annotated = HashMap.set(
          HashMap.set(HashMap.set(outer, "commandType", command._tag), "commandId", command.commandId),
          "correlationId",
          command.correlationId
        )
        const annotate = FiberRef.set(FiberRef.currentLogAnnotations, annotated)
        const logStarted = LogLevel.greaterThanEqual(levels.started, minimum)
        // None of this middleware's lines is logged (LOG_LEVEL=error), but a
        // handler's error is, and still carries the command's annotations.
        if (
          !logStarted && LogLevel.lessThan(levels.completed, minimum) && LogLevel.lessThan(levels.failed, minimum)
        ) return Effect.ensuring(Effect.zipRight(annotate, self), FiberRef.set(FiberRef.currentLogAnnotations, outer))
        const clock = EffectContext.get(fiber.currentDefaultServices, Clock.Clock)
        // The clock is read in the steps that run anyway (this one, and the
        // one the exit is handed to), not in steps of its own.
        const start = clock.unsafeCurrentTimeMillis()
        return Effect.onExit(
          Effect.zipRight(
            logStarted ? Effect.zipRight(annotate, Effect.logWithLevel(levels.started, "command.started")) : annotate,
            self
          ),
          (exit) => logEnded(levels, minimum, dispatch, exit, clock.unsafeCurrentTimeMillis() - start, outer)
        )
      })
  )
}

// The end of a logged dispatch: its log line, if its level is logged, then
// the caller's annotations back.
const logEnded = (
  levels: LogLevels,
  minimum: LogLevel.LogLevel,
  dispatch: Dispatch,
  exit: Exit.Exit<unknown, unknown>,
  durationMs: number,
  outer: HashMap.HashMap<string, unknown>
): Effect.Effect<void> => {
  const restore = FiberRef.set(FiberRef.currentLogAnnotations, outer)
  if (Exit.isSuccess(exit)) {
    if (LogLevel.lessThan(levels.completed, minimum)) return restore
    return Effect.ensuring(
      Effect.logWithLevel(levels.completed, "command.completed").pipe(
        Effect.annotateLogs({
          events: dispatch.events,
          attempts: dispatch.attempts,
          replayed: dispatch.replayed,
          durationMs
        })
      ),
      restore
    )
  }
  if (LogLevel.lessThan(levels.failed, minimum) || Cause.isInterruptedOnly(exit.cause)) return restore
  return Effect.ensuring(
    Effect.logWithLevel(levels.failed, "command.failed").pipe(
      Effect.annotateLogs({ error: outcomeOf(exit), attempts: dispatch.attempts, durationMs })
    ),
    restore
  )
}

/**
 * The outcome of a dispatch as metrics and logs name it: `success`, the
 * error's tag, `defect` (also when an error came with it) or `interrupted`.
 *
 * @since 0.1.0
 * @category utils
 */
export const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "success"
  // A defect beside a failure is a defect to every typed catch (`catchAll`
  // fails again with it), so to the caller too.
  if (Cause.isDie(exit.cause)) return "defect"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    return Predicate.hasProperty(failure.value, "_tag") && typeof failure.value._tag === "string"
      ? failure.value._tag
      : "error"
  }
  return Cause.isInterruptedOnly(exit.cause) ? "interrupted" : "defect"
}

// -----------------------------------------------------------------------------
// tracing
// -----------------------------------------------------------------------------

/**
 * A span per dispatch, named after the command, with its type, id,
 * correlation id and outcome as attributes (`command.outcome`: `success`
 * or the error's tag, as `outcomeOf` names it; on a failure also
 * `command.error`). With tracing off it adds nothing. The handler's own spans
 * (`Effect.fn`) become its children. No call-site stack capture: that is
 * most of what a default `withSpan` costs.
 *
 * @since 0.1.0
 * @category middleware
 */
export const tracing: Middleware = make("tracing", <A, E, R>(self: Effect.Effect<A, E, R>, dispatch: Dispatch) => {
  const { command } = dispatch
  return Span.around(self, `CommandBus.dispatch ${command._tag}`, {
    kind: "internal",
    attributes: {
      "command.type": command._tag,
      "command.id": command.commandId,
      "command.correlation_id": command.correlationId
    }
  }, outcomeAttributes)
})

const outcomeAttributes = (span: Tracer.Span, exit: Exit.Exit<unknown, unknown>): void => {
  span.attribute("command.outcome", outcomeOf(exit))
  if (Exit.isFailure(exit)) {
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure) && Predicate.hasProperty(failure.value, "_tag")) {
      span.attribute("command.error", failure.value._tag)
    }
  }
}

// -----------------------------------------------------------------------------
// metrics
// -----------------------------------------------------------------------------

const commandsTotal = Metric.counter("command_bus_commands_total", {
  description: "Commands dispatched, by command type and outcome",
  incremental: true
})

const dispatchDuration = Metric.histogram(
  "command_bus_dispatch_duration_seconds",
  MetricBoundaries.exponential({ start: 0.0005, factor: 2, count: 16 }),
  "Dispatch duration in seconds, by command type"
)

const retriesTotal = Metric.counter("command_bus_retries_total", {
  description: "Handler re-runs after a retryable error, by command type and error",
  incremental: true
})

// A metric updated with the same array of labels finds its hook in a cache;
// one tagged anew each time (what `Metric.tagged` does on every update) is
// looked up in the registry by hashing its key. So each label set is built
// once and kept; a bus sees few command types, outcomes and errors.
const labelSets = new Map<string, Map<string, ReadonlyArray<MetricLabel.MetricLabel>>>()

/** `command=<command>`, then `<key>=<value>` when given. */
const labelsOf = (command: string, key?: string, value?: string): ReadonlyArray<MetricLabel.MetricLabel> => {
  let sets = labelSets.get(command)
  if (sets === undefined) {
    sets = new Map()
    labelSets.set(command, sets)
  }
  const id = key === undefined ? "" : `${key}=${value}`
  let set = sets.get(id)
  if (set === undefined) {
    set = key === undefined || value === undefined
      ? [MetricLabel.make("command", command)]
      : [MetricLabel.make("command", command), MetricLabel.make(key, value)]
    sets.set(id, set)
  }
  return set
}

// As `Metric.update` on a tagged metric: the fiber's own metric labels join
// the metric's, after them.
const record = <In>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  metric: Metric.Metric<any, In, any>,
  input: In,
  own: ReadonlyArray<MetricLabel.MetricLabel>
): void => {
  const fiberLabels = fiber.getFiberRef(FiberRef.currentMetricLabels)
  metric.unsafeUpdate(input, fiberLabels.length === 0 ? own : Arr.union(own, fiberLabels))
}

/**
 * `command_bus_commands_total{command,outcome}` and
 * `command_bus_dispatch_duration_seconds{command}`.
 *
 * @since 0.1.0
 * @category middleware
 */
export const metrics: Middleware = make(
  "metrics",
  <A, E, R>(self: Effect.Effect<A, E, R>, { command }: Dispatch) =>
    Effect.withFiberRuntime<A, E, R>((fiber) => {
      const clock = EffectContext.get(fiber.currentDefaultServices, Clock.Clock)
      const start = clock.unsafeCurrentTimeNanos()
      return Effect.onExit(
        self,
        (exit) => dispatchMeasured(command._tag, exit, Number(clock.unsafeCurrentTimeNanos() - start) / 1e9)
      )
    })
)

const dispatchMeasured = (
  command: string,
  exit: Exit.Exit<unknown, unknown>,
  seconds: number
): Effect.Effect<void> =>
  onCurrentFiber((fiber) => {
    record(fiber, commandsTotal, 1, labelsOf(command, "outcome", outcomeOf(exit)))
    record(fiber, dispatchDuration, seconds, labelsOf(command))
  })

// Runs `f` with the fiber running this continuation. Inside a continuation
// that is the fiber evaluating it, so there is no need to spend an effect
// step on `withFiberRuntime` to find it.
const onCurrentFiber = (f: (fiber: Fiber.RuntimeFiber<unknown, unknown>) => void): Effect.Effect<void> => {
  const fiber = Fiber.getCurrentFiber()
  if (Option.isNone(fiber)) {
    return Effect.withFiberRuntime((running) => {
      f(running)
      return Effect.void
    })
  }
  f(fiber.value)
  return Effect.void
}

// -----------------------------------------------------------------------------
// retry
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export interface RetryOptions {
  /** Defaults to exponential backoff from 10 ms with jitter, at most 4 retries. */
  readonly schedule?: Schedule.Schedule<unknown, unknown>
  /** Schedules by command tag, overriding `schedule`, as `timeoutPerCommand` does the deadline. */
  readonly perCommand?: Readonly<Record<string, Schedule.Schedule<unknown, unknown>>>
}

/**
 * The default retry schedule: exponential from 10 ms, jittered, 4 retries.
 *
 * @since 0.1.0
 * @category schedules
 */
export const defaultRetrySchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("10 millis", 2).pipe(
  Schedule.jittered,
  // Whole milliseconds: a fractional delay leaves `TestClock` at an instant
  // its `currentTimeNanos` cannot convert, which breaks tests of the stack.
  // (The callback's first argument is the schedule's output, the delay
  // before jitter: rounding that dropped the jitter.)
  Schedule.modifyDelay((_, delay) => Duration.millis(Math.round(Duration.toMillis(delay)))),
  Schedule.intersect(Schedule.recurs(4))
)

/**
 * Re-runs the dispatch on the errors its command marks `retryable` (by tag),
 * following a `Schedule`; every other error fails at once. Place it outside
 * the transaction so each attempt runs on fresh state.
 *
 * A command that marks `ConcurrencyConflict` retryable is also re-run when
 * the database ended its transaction to break a deadlock or a serialization
 * conflict (the `StoreUnavailable` of a deadlock's loser, `40P01`, or of a
 * serialization failure, `40001`) and that transaction was its own, so it
 * rolled back whole: the same race as an optimistic-concurrency conflict,
 * told by the database. A dispatch inside another's transaction (a
 * savepoint of it) is not re-run alone; the outer dispatch is.
 *
 * @since 0.1.0
 * @category middleware
 */
export const retry = (options: RetryOptions = {}): Middleware => {
  const fallback = options.schedule ?? defaultRetrySchedule
  const byTag = new Map(Object.entries(options.perCommand ?? {}))
  return make("retry", (self, dispatch) => {
    const retryable = dispatch.definition.retryable
    if (retryable.length === 0) return self
    const schedule = byTag.get(dispatch.command._tag) ?? fallback
    return Effect.suspend(() => {
      // Before-commit hooks that an attempt registers are that attempt's: a
      // retry starts from those registered before the first.
      const kept = dispatch.beforeCommit.length
      const again = Effect.suspend(() => {
        dispatch.beforeCommit.length = kept
        dispatch.committing = false
        return self
      })
      // The schedule starts at the first retryable failure rather than with
      // every dispatch, so a dispatch that succeeds builds no schedule driver.
      return Effect.catchAll(self, (error) => retryAfter(error, again, dispatch, retryable, schedule))
    })
  })
}

// Continues a dispatch whose first attempt failed with `error` as
// `Effect.retry(self, { schedule, while: retryable })` would have: that
// failure is handed to the schedule as the first attempt's, so the delays
// and the number of retries are the same.
const retryAfter = <A, E, R>(
  error: E,
  self: Effect.Effect<A, E, R>,
  dispatch: Dispatch,
  retryable: ReadonlyArray<string>,
  schedule: Schedule.Schedule<unknown, unknown>
): Effect.Effect<A, E, R> => {
  const conflicts = retryable.includes("ConcurrencyConflict")
  const isRetryable = (e: unknown): e is { readonly _tag: string } =>
    isTaggedWith(e, retryable) || (conflicts && isRolledBackConflict(e))
  if (!isRetryable(error)) return Effect.fail(error)
  // Counted as each re-run starts, under the error that caused it: the last
  // failure, which the schedule does not retry, is no re-run.
  let first = true
  let previous: { readonly _tag: string } = error
  const attempt = Effect.withFiberRuntime<A, E, R>((fiber) => {
    if (first) {
      first = false
      return Effect.fail(error)
    }
    record(fiber, retriesTotal, 1, labelsOf(dispatch.command._tag, "error", previous._tag))
    return self
  })
  const tracked = Effect.tapError(attempt, (e) => {
    if (isRetryable(e)) previous = e
    return Effect.void
  })
  return Effect.retry(tracked, { schedule, while: isRetryable })
}

const isTaggedWith = (error: unknown, tags: ReadonlyArray<string>): boolean =>
  Predicate.hasProperty(error, "_tag") && typeof error._tag === "string" && tags.includes(error._tag)

// -----------------------------------------------------------------------------
// timeout
// -----------------------------------------------------------------------------

/**
 * What an edge that may have to end its work early (a server shutting down)
 * gives the dispatches it runs, as `CurrentCutoff`. The `timeout` middleware
 * registers each dispatch that waits on something (on the live clock; under
 * a clock moved by hand, such as `TestClock`, it does not): its `cut` passes the
 * dispatch's deadline at once, so that it ends as at its deadline
 * (`CommandTimeout`, naming the time it had until the cut, its transaction
 * rolled back, its idempotency key released), unless its commit has begun;
 * `cut` says whether it cut. When a dispatch ends past the start of its
 * commit, `committed` is called: the edge's work now has an outcome to
 * report, which interrupting it would hide.
 *
 * @since 0.1.0
 * @category models
 */
export interface Cutoff {
  /** Registers a dispatch's `cut`; the function returned ends the registration. */
  readonly register: (cut: () => boolean) => () => void
  readonly committed: () => void
}

/**
 * The `Cutoff` of the dispatches run in its scope; none by default.
 *
 * @since 0.1.0
 * @category tags
 */
export class CurrentCutoff extends EffectContext.Reference<CurrentCutoff>()("effect-command-bus/Middleware/Cutoff", {
  defaultValue: (): Cutoff | undefined => undefined
}) {}

/**
 * Interrupts a dispatch that runs past its deadline and fails it with
 * `CommandTimeout`. Interruption rolls back its transaction, so nothing of
 * it is committed or published. `perCommand` overrides the default by tag.
 *
 * @since 0.1.0
 * @category middleware
 */
export const timeout = (
  duration: Duration.DurationInput,
  perCommand: Readonly<Record<string, Duration.DurationInput>> = {}
): Middleware<CommandTimeout> => {
  const byTag = new Map(Object.entries(perCommand).map(([tag, d]) => [tag, Duration.decode(d)]))
  const fallback = Duration.decode(duration)
  return make(
    "timeout",
    <A, E, R>(self: Effect.Effect<A, E, R>, dispatch: Dispatch) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.withFiberRuntime<A, E | CommandTimeout, R>((parent, status) =>
          withDeadline(
            self,
            restore,
            byTag.get(dispatch.command._tag) ?? fallback,
            dispatch,
            parent,
            status.runtimeFlags
          )
        )
      )
  )
}

// `Effect.timeoutFail` runs `self` in a fiber of its own, so that the
// deadline can interrupt it alone, raced against a sleeping fiber. Here that
// fiber starts at once, on this thread: a dispatch that completes without
// waiting on anything (no I/O, no sleep) is done before any timer could have
// fired, and needs no timer and no race. One that waits is raced against the
// time left until its deadline and interrupted when that runs out. The caller
// makes this uninterruptible; `restore` gives `self`, and the wait, the
// interruptibility the dispatch had.
const withDeadline = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  restore: <AX, EX, RX>(effect: Effect.Effect<AX, EX, RX>) => Effect.Effect<AX, EX, RX>,
  limit: Duration.Duration,
  dispatch: Dispatch,
  parent: Fiber.RuntimeFiber<A, E | CommandTimeout>,
  runtimeFlags: RuntimeFlags.RuntimeFlags
): Effect.Effect<A, E | CommandTimeout, R> => {
  const clock = EffectContext.get(parent.currentDefaultServices, Clock.Clock)
  // The time the dispatch has had, by the monotonic clock: a step of the
  // wall clock (NTP setting it back) made a cut dispatch's negative.
  const startedNanos = clock.unsafeCurrentTimeNanos()
  const hadMillis = () => Number((clock.unsafeCurrentTimeNanos() - startedNanos) / 1_000_000n)
  const fiberRefs = parent.getFiberRefs()
  const child = Runtime.runFork(
    Runtime.make({ context: parent.currentContext as EffectContext.Context<R>, runtimeFlags, fiberRefs }),
    Effect.exit(restore(self))
  )
  const done = child.unsafePoll()
  if (done !== null) {
    if (dispatch.committing) EffectContext.get(parent.currentContext, CurrentCutoff)?.committed()
    return Exit.isSuccess(done) ? joined(child, fiberRefs, done.value) : Exit.failCause(done.cause)
  }
  const cutoff = EffectContext.get(parent.currentContext, CurrentCutoff)
  const elapsed = hadMillis()
  const left = elapsed <= 0 ? limit : Duration.millis(Math.max(0, Duration.toMillis(limit) - elapsed))
  const stop = Fiber.interruptAs(child, parent.id())
  // Past the deadline the child is interrupted and awaited, unless its
  // commit is in flight: then it ends as its commit does, or, should the
  // commit fail and the dispatch go on, is interrupted then. One that
  // finished all the same (its caller made it uninterruptible) ends with its
  // outcome.
  // `allowedMillis`: the time it had, shorter than `limit` when the edge's
  // cutoff brought the deadline forward (a shutdown), so the error says so.
  const deadlinePassed = (allowedMillis = Duration.toMillis(limit)): Effect.Effect<Exit.Exit<A, E>, CommandTimeout> =>
    Effect.flatMap(
      dispatch.committing ? untilCommitted(child, dispatch, stop) : stop,
      (exit) =>
        Exit.isSuccess(exit) && !(Exit.isFailure(exit.value) && Cause.isInterrupted(exit.value.cause))
          ? Effect.succeed(exit.value)
          : Effect.fail(
            new CommandTimeout({ commandType: dispatch.command._tag, timeoutMillis: allowedMillis })
          )
    )
  if (isLiveClock(clock)) {
    // On the live clock, one timer and an observer of the child: no racing
    // fiber, which is most of what a timeout costs on an asynchronous dispatch.
    const waited = Effect.async<Exit.Exit<A, E>, CommandTimeout>((resume) => {
      let settled = false
      let unregister: (() => void) | undefined = undefined
      const observer = (exit: Exit.Exit<Exit.Exit<A, E>>) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        unregister?.()
        if (dispatch.committing) cutoff?.committed()
        resume(exit)
      }
      // The deadline, when it comes or when the edge's cutoff brings it
      // forward. Past its point of no return, the observer reports how it ends.
      const passNow = (cut: boolean): boolean => {
        if (settled) return false
        if (dispatch.committing) {
          dispatch.overdue = () => passNow(cut)
          return false
        }
        settled = true
        clearTimeout(timer)
        unregister?.()
        child.removeObserver(observer)
        resume(
          deadlinePassed(
            cut ? Math.min(Duration.toMillis(limit), Math.max(0, hadMillis())) : undefined
          )
        )
        return true
      }
      // Node fires a timer of more than 2^31 - 1 ms at once; Effect's clock
      // never fires one (an infinite deadline included), and neither does this.
      const millis = Duration.toMillis(left)
      const timer = millis > maxTimerMillis ? undefined : setTimeout(passNow, millis, false)
      child.addObserver(observer)
      // A child that ended meanwhile was reported by `addObserver` at once.
      if (!settled) unregister = cutoff?.register(() => passNow(true))
      return Effect.sync(() => {
        settled = true
        clearTimeout(timer)
        unregister?.()
        child.removeObserver(observer)
      })
    })
    return Effect.onInterrupt(
      restore(Effect.flatMap(waited, (exit) => joined(child, fiberRefs, exit))),
      () => stop
    )
  }
  const waited = Effect.flatten(Effect.timeoutTo(Effect.flatten(Fiber.await(child)), {
    duration: left,
    onSuccess: Effect.succeed,
    onTimeout: deadlinePassed
  }))
  return Effect.onInterrupt(
    restore(Effect.flatMap(waited, (exit) => joined(child, fiberRefs, exit))),
    () => stop
  )
}

// The child's exit once its commit ends: its own when it ends, or, when
// the commit fails first (the `transaction` middleware calls `overdue`),
// what `stop` gives.
const untilCommitted = <A, E>(
  child: Fiber.RuntimeFiber<Exit.Exit<A, E>>,
  dispatch: Dispatch,
  stop: Effect.Effect<Exit.Exit<Exit.Exit<A, E>>>
): Effect.Effect<Exit.Exit<Exit.Exit<A, E>>> =>
  Effect.async((resume) => {
    let done = false
    const observer = (exit: Exit.Exit<Exit.Exit<A, E>>) => {
      if (done) return
      done = true
      dispatch.overdue = undefined
      resume(Effect.succeed(exit))
    }
    dispatch.overdue = () => {
      if (done) return
      done = true
      child.removeObserver(observer)
      resume(stop)
    }
    child.addObserver(observer)
    return Effect.sync(() => {
      done = true
      child.removeObserver(observer)
      dispatch.overdue = undefined
    })
  })

// A clock whose time moves by itself. `TestClock` (and any clock moved by
// hand) has `adjust`; its sleeps must go through it.
const isLiveClock = (clock: Clock.Clock): boolean => !("adjust" in clock)

// Ends with the exit of `self`, and on success makes the changes its fiber
// made to fiber refs this fiber's, as joining it would (`Effect.timeoutFail`
// does the same). When it made none, which is usual, there is nothing to join.
const joined = <A, E>(
  child: Fiber.RuntimeFiber<Exit.Exit<A, E>>,
  forkedFrom: FiberRefs.FiberRefs,
  exit: Exit.Exit<A, E>
): Effect.Effect<A, E> =>
  Exit.isFailure(exit) || unchanged(child.getFiberRefs(), forkedFrom)
    ? exit
    : Effect.zipRight(Fiber.inheritAll(child), exit)

const unchanged = (after: FiberRefs.FiberRefs, before: FiberRefs.FiberRefs): boolean => {
  if (after.locals.size !== before.locals.size) return false
  for (const [fiberRef, stack] of after.locals) {
    const previous = before.locals.get(fiberRef)
    if (previous === undefined) return false
    if (previous[0][1] === stack[0][1]) continue
    // A fiber that is done winds down, and joining never passes on winding
    // down or interruptibility; any other flag it changed is a change.
    if (
      fiberRef !== FiberRef.currentRuntimeFlags ||
      RuntimeFlags.disableAll(previous[0][1], notInherited) !== RuntimeFlags.disableAll(stack[0][1], notInherited)
    ) return false
  }
  return true
}

const notInherited = RuntimeFlags.make(RuntimeFlags.WindDown, RuntimeFlags.Interruption)

// -----------------------------------------------------------------------------
// transaction
// -----------------------------------------------------------------------------

/**
 * Runs the handler, its event append and its before-commit hooks (the
 * idempotency record) in one `UnitOfWork` transaction.
 *
 * @since 0.1.0
 * @category middleware
 */
export const transaction: Middleware<StoreUnavailable, UnitOfWork> = make(
  "transaction",
  (self, dispatch) =>
    Effect.flatMap(UnitOfWork, (unitOfWork) => {
      // The commit failed: nothing committed, and the dispatch may go on.
      const uncommitted = () => {
        if (!dispatch.committing) return Effect.void
        dispatch.committing = false
        const overdue = dispatch.overdue
        dispatch.overdue = undefined
        overdue?.()
        return Effect.void
      }
      // The unit of work tells how its transaction ended even when the
      // dispatch was interrupted meanwhile (a client that hung up during the
      // commit), whose failure the runtime then drops from the error channel.
      const afterEnd = unitOfWork.afterEnd
      const work = afterEnd === undefined
        ? self
        : Effect.tap(self, () => afterEnd((committed) => committed ? Effect.void : Effect.suspend(uncommitted)))
      return Effect.tapErrorCause(
        unitOfWork.transactional(Effect.map(work, (value) => {
          dispatch.committing = true
          return value
        })),
        uncommitted
      )
    })
)
