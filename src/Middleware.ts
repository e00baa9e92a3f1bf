/**
 * Middleware: Effect combinators around a dispatch. Each declares, in its
 * type, the errors it may add and the services it needs; the bus adds both to
 * every command's own types. The first middleware in a list is the outermost.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Schedule from "effect/Schedule"
import type * as Command from "./Command.js"
import { CommandTimeout, CommandValidationError, Forbidden, type StoreUnavailable } from "./CommandError.js"
import * as CurrentUser from "./CurrentUser.js"
import { UnitOfWork } from "./UnitOfWork.js"

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
  const started = options.started ?? LogLevel.Debug
  const completed = options.completed ?? LogLevel.Info
  const failed = options.failed ?? LogLevel.Warning
  return make(
    "logging",
    <A, E, R>(self: Effect.Effect<A, E, R>, dispatch: Dispatch) =>
      Effect.withFiberRuntime<A, E, R>((fiber) => {
        const minimum = fiber.getFiberRef(FiberRef.currentMinimumLogLevel)
        const logStarted = LogLevel.greaterThanEqual(started, minimum)
        const logCompleted = LogLevel.greaterThanEqual(completed, minimum)
        const logFailed = LogLevel.greaterThanEqual(failed, minimum)
        if (!logStarted && !logCompleted && !logFailed) return self
        const { command } = dispatch
        const body = Effect.flatMap(Clock.currentTimeMillis, (start) => {
          const run = Effect.onExit(self, (exit) =>
            Effect.flatMap(Clock.currentTimeMillis, (end) => {
              const durationMs = end - start
              if (Exit.isSuccess(exit)) {
                return logCompleted
                  ? Effect.logWithLevel(completed, "command.completed").pipe(
                    Effect.annotateLogs({
                      events: dispatch.events,
                      attempts: dispatch.attempts,
                      replayed: dispatch.replayed,
                      durationMs
                    })
                  )
                  : Effect.void
              }
              if (!logFailed || Cause.isInterruptedOnly(exit.cause)) return Effect.void
              return Effect.logWithLevel(failed, "command.failed").pipe(
                Effect.annotateLogs({ error: outcomeOf(exit), attempts: dispatch.attempts, durationMs })
              )
            }))
          return logStarted ? Effect.zipRight(Effect.logWithLevel(started, "command.started"), run) : run
        })
        return Effect.annotateLogs(body, {
          commandType: command._tag,
          commandId: command.commandId,
          correlationId: command.correlationId
        })
      })
  )
}

/**
 * The outcome of a dispatch as metrics and logs name it: `success`, the
 * error's tag, `defect` or `interrupted`.
 *
 * @since 0.1.0
 * @category utils
 */
export const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "success"
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
 * correlation id and outcome as attributes. The handler's own spans
 * (`Effect.fn`) become its children. No call-site stack capture: that is
 * most of what a default `withSpan` costs.
 *
 * @since 0.1.0
 * @category middleware
 */
export const tracing: Middleware = make("tracing", (self, dispatch) => {
  const { command } = dispatch
  return Effect.withSpan(
    Effect.tapErrorCause(self, (cause) => {
      const failure = Cause.failureOption(cause)
      return Option.isSome(failure) && Predicate.hasProperty(failure.value, "_tag")
        ? Effect.annotateCurrentSpan("command.error", failure.value._tag)
        : Effect.void
    }),
    `CommandBus.dispatch ${command._tag}`,
    {
      attributes: {
        "command.type": command._tag,
        "command.id": command.commandId,
        "command.correlation_id": command.correlationId
      },
      captureStackTrace: false
    }
  )
})

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

// `Metric.tagged` allocates a new metric key; cache one per label set, since
// a bus sees few command types and outcomes.
const taggedCache = <Type, In, Out>(base: Metric.Metric<Type, In, Out>) => {
  const cache = new Map<string, Metric.Metric<Type, In, Out>>()
  return (...labels: ReadonlyArray<readonly [string, string]>): Metric.Metric<Type, In, Out> => {
    const key = labels.map(([name, value]) => `${name}=${value}`).join("\u0000")
    let metric = cache.get(key)
    if (metric === undefined) {
      metric = labels.reduce((m, [name, value]) => Metric.tagged(m, name, value), base)
      cache.set(key, metric)
    }
    return metric
  }
}

const commandsTotalFor = taggedCache(commandsTotal)
const dispatchDurationFor = taggedCache(dispatchDuration)
const retriesTotalFor = taggedCache(retriesTotal)

/**
 * `command_bus_commands_total{command,outcome}` and
 * `command_bus_dispatch_duration_seconds{command}`.
 *
 * @since 0.1.0
 * @category middleware
 */
export const metrics: Middleware = make(
  "metrics",
  (self, { command }) =>
    Effect.flatMap(
      Clock.currentTimeNanos,
      (start) =>
        Effect.onExit(self, (exit) =>
          Effect.flatMap(Clock.currentTimeNanos, (end) => {
            const outcome = outcomeOf(exit)
            return Effect.zipRight(
              Metric.increment(commandsTotalFor(["command", command._tag], ["outcome", outcome])),
              Metric.update(dispatchDurationFor(["command", command._tag]), Number(end - start) / 1e9)
            )
          }))
    )
)

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
}

/**
 * The default retry schedule: exponential from 10 ms, jittered, 4 retries.
 *
 * @since 0.1.0
 * @category schedules
 */
export const defaultRetrySchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("10 millis", 2).pipe(
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(4))
)

/**
 * Re-runs the dispatch on the errors its command marks `retryable` (by tag),
 * following a `Schedule`; every other error fails at once. Place it outside
 * the transaction so each attempt runs on fresh state.
 *
 * @since 0.1.0
 * @category middleware
 */
export const retry = (options: RetryOptions = {}): Middleware => {
  const schedule = options.schedule ?? defaultRetrySchedule
  return make("retry", (self, dispatch) => {
    const retryable = dispatch.definition.retryable
    if (retryable.length === 0) return self
    const isRetryable = (error: unknown): error is { readonly _tag: string } => isTaggedWith(error, retryable)
    return Effect.retry(
      Effect.tapError(self, (error) => {
        if (!isRetryable(error)) return Effect.void
        return Metric.increment(retriesTotalFor(["command", dispatch.command._tag], ["error", error._tag]))
      }),
      { schedule, while: isRetryable }
    )
  })
}

const isTaggedWith = (error: unknown, tags: ReadonlyArray<string>): boolean =>
  Predicate.hasProperty(error, "_tag") && typeof error._tag === "string" && tags.includes(error._tag)

// -----------------------------------------------------------------------------
// timeout
// -----------------------------------------------------------------------------

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
  return make("timeout", (self, { command }) => {
    const limit = byTag.get(command._tag) ?? fallback
    return Effect.timeoutFail(self, {
      duration: limit,
      onTimeout: () => new CommandTimeout({ commandType: command._tag, timeoutMillis: Duration.toMillis(limit) })
    })
  })
}

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
  (self) => Effect.flatMap(UnitOfWork, (unitOfWork) => unitOfWork.transactional(self))
)
