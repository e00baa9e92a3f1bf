/**
 * Reactions: typed handlers of committed events, the other half of a
 * process manager. `start` reads the `EventPublisher`'s stream in publish order,
 * decodes each event with the schema of the reactions that take its type, and
 * runs them; `dispatch` makes a reaction that sends a follow-up command
 * through a bus. `follow` reads the event log itself from a checkpoint, and
 * keeps what still fails as dead letters for `redrive`.
 *
 * Delivery is at least once (the outbox relay publishes again after a crash),
 * so a reaction must tolerate seeing an event twice. `dispatch` does it for
 * you: its command's idempotency key is derived from the event's id, so a
 * redelivered event replays the first command's outcome instead of running it
 * again.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as ParseResult from "effect/ParseResult"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type * as Types from "effect/Types"
import { createHash, randomUUID } from "node:crypto"
import * as Command from "./Command.js"
import type * as CommandBus from "./CommandBus.js"
import { StoreUnavailable } from "./CommandError.js"
import * as DomainEvent from "./DomainEvent.js"
import { EventPublisher } from "./EventPublisher.js"
import { failureOf, interruptedItself, stored, survived, unlessInterrupted } from "./internal/cause.js"
import { followUpSender } from "./internal/dispatching.js"
import { leaseOfASecond, pageSize, positiveCounts, storedMillis } from "./internal/limit.js"
import { isRefusal } from "./internal/refusal.js"
import { compareCodePoints } from "./internal/text.js"
import { Outbox } from "./Outbox.js"
import * as Tracing from "./Tracing.js"

/**
 * An event class, as `DomainEvent.Class` makes them.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventClass<A> extends Schema.Schema<A, any, never> {
  readonly _tag: string
}

/**
 * A handler of one event type. `E` is what it may fail with: `start` retries
 * it, then logs it and goes on with the next event.
 *
 * @since 0.1.0
 * @category models
 */
export interface Reaction<out E = never, out R = never> {
  readonly name: string
  readonly eventType: string
  readonly handle: (envelope: DomainEvent.Envelope) => Effect.Effect<void, E | Undecodable | Parked, R>
  /**
   * Whether a failure may pass if tried again. Default: any but
   * `Undecodable` and `Parked`. A final one is logged (and, under `follow`, kept as a
   * dead letter) at once, without holding up the events behind it.
   */
  readonly retryable?: (error: unknown) => boolean
}

/**
 * Any reaction, whatever its errors and requirements.
 *
 * @since 0.1.0
 * @category models
 */
export type Any = Reaction<any, any>

/**
 * The services a reaction requires; of a union of reactions, all of theirs.
 *
 * @since 0.1.0
 * @category models
 */
export type Requirements<A> = A extends Reaction<infer _E, infer R> ? R : never

/**
 * An event whose payload its reaction's schema does not decode (an event
 * written by another version of the schema, say). Logged and skipped.
 *
 * @since 0.1.0
 * @category errors
 */
export class Undecodable extends Schema.TaggedError<Undecodable>()("Undecodable", {
  eventType: Schema.String,
  eventId: Schema.String,
  reason: Schema.String
}) {}

/**
 * An event held back, under `follow` with `sequencing: "aggregate"`, because
 * an earlier event of its aggregate is a dead letter of the same reaction:
 * it becomes one too, without running, so the reaction never sees an
 * aggregate's events out of order. Not retried.
 *
 * @since 0.1.0
 * @category errors
 */
export class Parked extends Schema.TaggedError<Parked>()("Parked", {
  eventId: Schema.String,
  aggregateType: Schema.String,
  aggregateId: Schema.String
}) {
  override get message() {
    return `held back behind an earlier failed event of ${this.aggregateType} ${this.aggregateId}`
  }
}

/**
 * A reaction to events of `event`'s type, given the decoded event and its
 * envelope (ids, aggregate, correlation).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <A, E, R>(
  event: EventClass<A>,
  handle: (event: A, envelope: DomainEvent.Envelope) => Effect.Effect<void, E, R>,
  options: MakeOptions & { readonly retryable?: (error: E) => boolean } = {}
): Reaction<E, R> => {
  const decode = Schema.decodeUnknown(event)
  const retryable = options.retryable as ((error: unknown) => boolean) | undefined
  const upcast = options.upcast
  return {
    name: options.name ?? `on ${event._tag}`,
    eventType: event._tag,
    ...(retryable === undefined ? {} : { retryable }),
    handle: (envelope) => {
      let payload = envelope.payload
      if (upcast !== undefined) {
        // An upcast that throws on a shape it did not expect leaves that
        // event undecodable; it must not end the loop that runs reactions.
        try {
          payload = upcast(envelope.payload, envelope)
        } catch (error) {
          return threw(envelope, "its upcast", error)
        }
      }
      // A schema's transformation that throws runs as the parser is called:
      // that payload is undecodable, as with an upcast that throws.
      let decoded: Effect.Effect<A, ParseResult.ParseError>
      try {
        decoded = decode(payloadOf(envelope, payload))
      } catch (error) {
        return threw(envelope, "its schema", error)
      }
      return decoded.pipe(
        Effect.mapError((error) =>
          new Undecodable({ eventType: envelope.type, eventId: envelope.eventId, reason: error.message })
        ),
        Effect.flatMap((event) => handle(event, envelope))
      )
    }
  }
}

// An event whose upcast or schema threw on it: undecodable.
const threw = (envelope: DomainEvent.Envelope, what: string, error: unknown) =>
  Effect.fail(
    new Undecodable({
      eventType: envelope.type,
      eventId: envelope.eventId,
      reason: `${what} threw: ${error instanceof Error ? error.message : String(error)}`
    })
  )

/**
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions {
  /**
   * Default: `on <event type>`. Names the reaction in logs, metrics, dead
   * letters and idempotency keys: two reactions of one app that share an
   * idempotency store need names of their own, in one list or not.
   */
  readonly name?: string
  /**
   * Rewrites a stored payload before it is decoded: events written by an
   * earlier version of the event's schema (a field renamed, say) decode
   * with the current one. Given the payload as stored, its `_tag` (the
   * event's type) included.
   * Additions with defaults need none: `Schema.optionalWith(..., { default })`.
   */
  readonly upcast?: (payload: unknown, envelope: DomainEvent.Envelope) => unknown
}

/**
 * @since 0.1.0
 * @category models
 */
export interface DispatchOptions extends MakeOptions {
  /**
   * How long a key in flight is waited out (checked every second) before
   * the failure counts. Longer than the idempotency lease. Default 2 minutes.
   */
  readonly inFlightWait?: Duration.DurationInput
}

const isIdempotencyKey = Schema.is(Command.IdempotencyKey)

// A payload is the event's encoded fields; its tag is the envelope's type.
const payloadOf = (envelope: DomainEvent.Envelope, payload: unknown): unknown =>
  typeof payload === "object" && payload !== null ? { ...payload, _tag: envelope.type } : payload

/**
 * The metadata a follow-up command of an event carries: the event's
 * correlation id, the event's id as causation id, and an idempotency key
 * derived from the event's id and the reaction's name (the name's SHA-256
 * when it is too long to leave room for the id in a key's 255 characters).
 *
 * @since 0.1.0
 * @category models
 */
export interface FollowUp {
  readonly correlationId: string
  readonly causationId: string
  readonly idempotencyKey: string
}

/**
 * @since 0.1.0
 * @category type ids
 */
export const DispatchingTypeId: unique symbol = Symbol.for("effect-command-bus/Reaction/Dispatching")

/**
 * @since 0.1.0
 * @category type ids
 */
export type DispatchingTypeId = typeof DispatchingTypeId

/**
 * A reaction `dispatch` made: its type names the commands it may send (what
 * `toCommand` returns), so that the test kit's `ReactionSpecification`
 * accepts those, and only those, as expected commands.
 *
 * @since 0.1.0
 * @category models
 */
export interface Dispatching<out Cmd extends Command.Any, out E = never, out R = never> extends Reaction<E, R> {
  readonly [DispatchingTypeId]: { readonly _Cmd: Types.Covariant<Cmd> }
}

const dispatchingVariance = { _Cmd: (_: never) => _ }

/**
 * A reaction that dispatches the command `toCommand` makes of an event (or
 * none, for `undefined`) through `bus`. Spread the given `FollowUp` into the
 * command: with the bus's idempotency middleware, an event delivered twice
 * runs the command once, and both deliveries get its outcome. The command
 * runs as the reacting fiber's `CurrentUser` (none, unless you provide one
 * around `start` or `follow`), and its key is scoped by its `userId`.
 *
 * A failure the command declares (and does not mark retryable) is an
 * outcome, not a glitch: it is not retried, since the idempotency key would
 * replay it anyway; nor is a refusal that no rerun changes (its business
 * rules, `CommandValidationError`; a role its user lacks, `Forbidden`; its
 * key reused, `IdempotencyKeyMismatch`).
 * React to it in the process, or see it as a dead letter.
 *
 * A key in flight (`IdempotencyKeyInFlight`) is waited out, for up to
 * `inFlightWait`: another delivery is running the command, or one that
 * crashed left its claim, which the lease frees. Either way the event's
 * outcome comes, rather than a dead letter for a command that never ran.
 *
 * @since 0.1.0
 * @category constructors
 */
export const dispatch = <A, C extends Command.Any, H, BE, BR, Cmd extends C>(
  event: EventClass<A>,
  bus: CommandBus.CommandBus<C, H, BE, BR>,
  toCommand: (event: A, followUp: FollowUp, envelope: DomainEvent.Envelope) => Cmd | undefined,
  options: DispatchOptions = {}
): Dispatching<Cmd, Command.Failure<Cmd> | BE | StoreUnavailable, CommandBus.Requirements<H, Cmd["_tag"], BR>> => {
  const name = options.name ?? `on ${event._tag}`
  // A key is 1 to 255 characters of storable text: a name that leaves no
  // room for the event's id (or holds text a key may not) keys by its digest.
  const keyPrefix = isIdempotencyKey(`${name}:${"0".repeat(36)}`)
    ? name
    : `sha256-${createHash("sha256").update(name).digest("hex")}`
  const sender = followUpSender(
    { definitions: bus.definitions, dispatch: (command) => bus.dispatch(command as Cmd) },
    options.inFlightWait
  )
  const reaction = make(event, (decoded, envelope) => {
    const followUp = { ...Command.causedBy(envelope), idempotencyKey: `${keyPrefix}:${envelope.eventId}` }
    const command = toCommand(decoded, followUp, envelope)
    if (command === undefined) return Effect.void
    return sender.send(name, envelope, followUp, command)
  }, {
    ...options,
    name,
    retryable: (error) => !isRefusal(error) && !sender.isOutcome(error)
  })
  return { ...reaction, [DispatchingTypeId]: dispatchingVariance }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  /**
   * How a failed reaction is retried before it is logged and left behind.
   * Default: exponential from 100 ms, 5 retries.
   */
  readonly retry?: Schedule.Schedule<unknown, unknown>
  /**
   * Told of each reaction that still fails after its retries (or cannot
   * decode its event, or is parked behind a dead letter), after it is logged
   * and before it becomes a dead letter under `follow`: to alert, or to
   * count, as NestJS's `UnhandledExceptionBus` is subscribed to. Its own
   * failure is logged (`reaction.on-failure-failed`) and stops nothing.
   */
  readonly onFailure?: (failure: ReactionFailure) => Effect.Effect<void>
}

/**
 * A reaction that failed, as `RunOptions.onFailure` is told of it.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReactionFailure {
  readonly reaction: string
  readonly event: DomainEvent.Envelope
  readonly cause: Cause.Cause<unknown>
}

/**
 * The default retry of a reaction: exponential from 100 ms, 5 retries.
 *
 * @since 0.1.0
 * @category schedules
 */
export const defaultRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential(Duration.millis(100)).pipe(
  Schedule.intersect(Schedule.recurs(5))
)

/**
 * Subscribes to the `EventPublisher`, then runs `reactions` on every event
 * published from then on, in a fiber of the scope, and returns that fiber.
 * The subscription exists when `start` returns: events published after it
 * are seen. Events are taken one at a time in publish order, the reactions of
 * one event in the order given. A reaction that still fails after its
 * retries is logged (`reaction.failed`, or `reaction.undecodable` for a
 * payload its schema does not decode) and the next one runs: one bad event
 * does not stop the stream.
 *
 * The publisher delivers what is published while the subscription lasts:
 * events published before `start`, or while the process was down, are not
 * replayed to it (the outbox relay publishes a committed event once, at
 * least; read the event log by position, `Outbox.read`, to catch up).
 *
 * @since 0.1.0
 * @category running
 */
export const start = <const Rs extends ReadonlyArray<Any>>(
  reactions: Rs,
  options: RunOptions = {}
): Effect.Effect<Fiber.RuntimeFiber<never>, never, EventPublisher | Scope.Scope | Requirements<Rs[number]>> =>
  checked("Reaction.start", reactions, {}, () =>
    Effect.flatMap(
      EventPublisher,
      (publisher) =>
        Effect.flatMap(publisher.subscribe, (subscription) => Effect.forkScoped(loop(subscription, reactions, options)))
    ))

// A reaction's name keys its idempotency keys (`dispatch`), its dead letters
// and its metrics: two reactions of one name in a list would share them, and
// the second's command would meet the first's key. Refused, as a bad count
// option is, before anything runs.
const checked = <A, E, R>(
  where: string,
  reactions: ReadonlyArray<Any>,
  counts: Readonly<Record<string, number | undefined>>,
  self: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => {
  const names = new Set<string>()
  for (const reaction of reactions) {
    if (names.has(reaction.name)) {
      return Effect.dieMessage(
        `${where}: two reactions are named "${reaction.name}"; give each its own name (the \`name\` option)`
      )
    }
    names.add(reaction.name)
  }
  return positiveCounts(where, counts, self)
}

/**
 * `start`, then waits on its fiber: runs until interrupted.
 *
 * @since 0.1.0
 * @category running
 */
export const run = <const Rs extends ReadonlyArray<Any>>(
  reactions: Rs,
  options: RunOptions = {}
): Effect.Effect<never, never, EventPublisher | Scope.Scope | Requirements<Rs[number]>> =>
  Effect.flatMap(start(reactions, options), Fiber.join)

// What becomes of a reaction that failed after its retries (logged first).
type OnFailure<X> = (
  reaction: string,
  envelope: DomainEvent.Envelope,
  cause: Cause.Cause<unknown>
) => Effect.Effect<void, X>

// One event through the reactions of its type: each retried, then logged and
// handed to `onFailure`.
const reactor = <E, R>(reactions: ReadonlyArray<Reaction<E, R>>, options: RunOptions) => {
  const byType = new Map<string, Array<Reaction<E, R>>>()
  for (const reaction of reactions) {
    const list = byType.get(reaction.eventType) ?? []
    list.push(reaction)
    byType.set(reaction.eventType, list)
  }
  const told = options.onFailure
  const tell = (reaction: string, event: DomainEvent.Envelope, cause: Cause.Cause<unknown>) =>
    told === undefined ? Effect.void : Effect.catchAllCause(
      Effect.suspend(() => told({ reaction, event, cause })),
      (failed) => unlessInterrupted(failed, Effect.logWarning("reaction.on-failure-failed", failed))
    )
  const react = <X>(reaction: Reaction<E, R>, envelope: DomainEvent.Envelope, onFailure: OnFailure<X>) =>
    Effect.catchAllCause(
      measured(reaction, envelope, options),
      (cause) =>
        unlessInterrupted(
          cause,
          Effect.zipRight(
            Effect.zipRight(logFailure(cause), tell(reaction.name, envelope, cause)),
            onFailure(reaction.name, envelope, cause)
          )
        )
    ).pipe(
      annotated(reaction.name, envelope)
    )
  return <X>(envelope: DomainEvent.Envelope, onFailure: OnFailure<X>): Effect.Effect<void, X, R> => {
    const list = byType.get(envelope.type)
    return list === undefined
      ? Effect.void
      : Effect.forEach(list, (reaction) => react(reaction, envelope, onFailure), { discard: true })
  }
}

// An undecodable payload decodes no better the next time, and a final failure
// fails the same: neither is retried.
// A `handle` that throws (a reaction written by hand) is a defect of this
// reaction's run, not of the loop that runs them all.
const retried = <E, R>(reaction: Reaction<E, R>, envelope: DomainEvent.Envelope, options: RunOptions) =>
  Effect.suspend(() => reaction.handle(envelope)).pipe(
    Effect.retry({
      schedule: options.retry ?? defaultRetry,
      while: (error) =>
        !(error instanceof Undecodable) && !(error instanceof Parked) && (reaction.retryable?.(error) ?? true)
    })
  )

const reactionsTotal = Metric.counter("command_bus_reactions_total", {
  description: "Reactions run, by reaction and outcome: success, failed (after its retries) or parked",
  incremental: true
})

const deadLettersTotal = Metric.counter("command_bus_reaction_dead_letters_total", {
  description: "Events that became dead letters under follow, by follower and reaction",
  incremental: true
})

// The counters of a reaction, tagged once, not on every update.
const countersOf = (() => {
  const cache = new Map<string, Record<"success" | "failed" | "parked", Metric.Metric.Counter<number>>>()
  return (name: string) => {
    let counters = cache.get(name)
    if (counters === undefined) {
      const base = Metric.tagged(reactionsTotal, "reaction", name)
      counters = {
        success: Metric.tagged(base, "outcome", "success"),
        failed: Metric.tagged(base, "outcome", "failed"),
        parked: Metric.tagged(base, "outcome", "parked")
      }
      cache.set(name, counters)
    }
    return counters
  }
})()

// One reaction to one event, its retries included: a span, and its outcome counted.
const measured = <E, R>(reaction: Reaction<E, R>, envelope: DomainEvent.Envelope, options: RunOptions) => {
  const counters = countersOf(reaction.name)
  return retried(reaction, envelope, options).pipe(
    Effect.onExit((exit) =>
      exit._tag === "Success"
        ? Metric.increment(counters.success)
        : Cause.isInterruptedOnly(exit.cause)
        ? Effect.void
        : Metric.increment(failureOf(exit.cause) instanceof Parked ? counters.parked : counters.failed)
    ),
    Tracing.withSpan(`Reaction ${reaction.name}`, {
      attributes: {
        "reaction.name": reaction.name,
        "event.type": envelope.type,
        "event.id": envelope.eventId,
        "event.aggregate_id": envelope.aggregateId,
        "event.correlation_id": envelope.correlationId
      }
    })
  )
}

const logFailure = (cause: Cause.Cause<unknown>) => {
  const error = failureOf(cause)
  return error instanceof Parked
    ? Effect.logInfo("reaction.parked", error.message)
    : Effect.logWarning(error instanceof Undecodable ? "reaction.undecodable" : "reaction.failed", cause)
}

const annotated = (reaction: string, envelope: DomainEvent.Envelope) =>
  Effect.annotateLogs({
    reaction,
    eventType: envelope.type,
    eventId: envelope.eventId,
    correlationId: envelope.correlationId
  })

const loop = <E, R>(
  subscription: Queue.Dequeue<DomainEvent.Envelope>,
  reactions: ReadonlyArray<Reaction<E, R>>,
  options: RunOptions
): Effect.Effect<never, never, R> => {
  const react = reactor(reactions, options)
  return Effect.forever(Effect.flatMap(Queue.take(subscription), (envelope) => react(envelope, () => Effect.void)))
}

// -----------------------------------------------------------------------------
// following the event log, with a checkpoint
// -----------------------------------------------------------------------------

/**
 * Where `follow` keeps, by name, the position in the event log up to which
 * its reactions have run.
 *
 * @since 0.1.0
 * @category models
 */
export interface CheckpointStore {
  /** The position reached, 0 before the first event. */
  readonly load: (name: string) => Effect.Effect<number, StoreUnavailable>
  /** Moves the position on; a lower one than stored is ignored. */
  readonly save: (name: string, position: number) => Effect.Effect<void, StoreUnavailable>
  /** Sets the position, backwards too: `replay`. */
  readonly reset: (name: string, position: number) => Effect.Effect<void, StoreUnavailable>
  /**
   * Takes the name for `owner`, or keeps it, until `lease` from now (by the
   * store's clock): true when it is `owner`'s, being free, lapsed or its
   * own already. `follow` claims before each batch, so that one follower of
   * a name runs at a time, in one process or many. Optional: without it,
   * every follower of a name runs.
   */
  readonly claim?:
    | ((name: string, owner: string, lease: Duration.Duration) => Effect.Effect<boolean, StoreUnavailable>)
    | undefined
  /** Gives the name up, when `owner` holds it: another follower takes it at once. */
  readonly release?: ((name: string, owner: string) => Effect.Effect<void, StoreUnavailable>) | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Checkpoints extends Context.Tag("effect-command-bus/Reaction/Checkpoints")<
  Checkpoints,
  CheckpointStore
>() {}

/**
 * Checkpoints in memory, for tests (`effect-command-bus/sql` keeps them in
 * PostgreSQL).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerCheckpointsMemory: Layer.Layer<Checkpoints> = Layer.sync(Checkpoints, () => {
  const positions = new Map<string, number>()
  const owners = new Map<string, { readonly owner: string; readonly until: number }>()
  return {
    load: (name) => Effect.sync(() => positions.get(name) ?? 0),
    save: (name, position) => Effect.sync(() => void positions.set(name, Math.max(positions.get(name) ?? 0, position))),
    reset: (name, position) => Effect.sync(() => void positions.set(name, position)),
    claim: (name, owner, lease) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const held = owners.get(name)
        if (held !== undefined && held.owner !== owner && held.until > now) return false
        owners.set(name, { owner, until: now + storedMillis(lease) })
        return true
      }),
    release: (name, owner) =>
      Effect.sync(() => {
        if (owners.get(name)?.owner === owner) owners.delete(name)
      })
  }
})

/**
 * Moves the checkpoint named `name` back (or on) to `after`, default 0: the
 * next `follow` of that name runs its reactions again on every event after
 * that position, to rebuild what they build (a read model, a search index)
 * after a fix. Run it while no follower of that name runs: a running one
 * would save its own position over it. Dead letters stay as they are. An
 * `after` that is no position (negative, fractional) is refused as a defect.
 *
 * @since 0.1.0
 * @category running
 */
export const replay = (
  name: string,
  options: { readonly after?: number } = {}
): Effect.Effect<void, StoreUnavailable, Checkpoints> => {
  const after = options.after ?? 0
  // Refused here, where the caller sees it: in memory it would be saved, and
  // every read of the log from it refused in the follower's fiber.
  if (!Number.isSafeInteger(after) || after < 0) {
    return Effect.dieMessage(`Reaction.replay: after must be a non-negative integer, got ${String(after)}`)
  }
  return Effect.flatMap(Checkpoints, (checkpoints) => checkpoints.reset(name, after))
}

// -----------------------------------------------------------------------------
// dead letters
// -----------------------------------------------------------------------------

/**
 * An event that one reaction of a follower could not handle, after its
 * retries, kept so that nothing is lost when the follower's checkpoint moves
 * past it: look at it (`DeadLetterStore.list`), fix the cause, and run it
 * again (`redrive`), or drop it (`DeadLetterStore.remove`).
 *
 * @since 0.1.0
 * @category models
 */
export class DeadLetter extends Schema.Class<DeadLetter>("ReactionDeadLetter")({
  /** The name given to `follow`. */
  follower: Schema.String,
  /** The reaction's name. */
  reaction: Schema.String,
  /** The event's position in the log. */
  position: Schema.Number,
  event: DomainEvent.Envelope,
  /** The last failure, as `Cause.pretty` renders it (at most 4000 characters). */
  reason: Schema.String,
  /** Failed runs: the first, and each failed `redrive` since. */
  attempts: Schema.Int,
  firstFailedAt: Schema.DateTimeUtc,
  lastFailedAt: Schema.DateTimeUtc
}) {}

/**
 * A failure to record, as `follow` and `redrive` report it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Failure {
  readonly follower: string
  readonly reaction: string
  readonly position: number
  readonly event: DomainEvent.Envelope
  readonly reason: string
}

/**
 * Where a page of dead letters ends: the next page starts after this
 * position and reaction.
 *
 * @since 0.1.0
 * @category models
 */
export interface LetterCursor {
  readonly position: number
  readonly reaction: string
}

// The order `list` reads letters in: by position, then reaction (code
// points, as PostgreSQL's `COLLATE "C"` orders them).
const letterOrder = (a: LetterCursor, b: LetterCursor): number =>
  a.position - b.position || compareCodePoints(a.reaction, b.reaction)

/**
 * Whether a letter comes after `cursor` in the order `list` reads them.
 *
 * @since 0.1.0
 * @category utils
 */
export const isAfter = (letter: LetterCursor, cursor: LetterCursor): boolean => letterOrder(letter, cursor) > 0

/**
 * @since 0.1.0
 * @category models
 */
export interface DeadLetterStore {
  /**
   * Records a failure. Another one of the same follower, reaction and event
   * counts one more attempt and replaces the reason.
   */
  readonly add: (failure: Failure) => Effect.Effect<void, StoreUnavailable>
  /**
   * A follower's dead letters, lowest position first (then by reaction;
   * default limit 100), or the ones after `after` in that order.
   */
  readonly list: (
    follower: string,
    options?: { readonly limit?: number; readonly after?: LetterCursor }
  ) => Effect.Effect<ReadonlyArray<DeadLetter>, StoreUnavailable>
  /** Drops one; nothing when it is not there. */
  readonly remove: (follower: string, reaction: string, eventId: string) => Effect.Effect<void, StoreUnavailable>
  /** The reactions and aggregates a follower has dead letters of, each once, from its lowest position. */
  readonly sequences: (follower: string) => Effect.Effect<ReadonlyArray<Sequence>, StoreUnavailable>
}

/**
 * The events of one aggregate, as one reaction sees them.
 *
 * @since 0.1.0
 * @category models
 */
export interface Sequence {
  readonly reaction: string
  readonly aggregateType: string
  readonly aggregateId: string
  /** The lowest position of its dead letters: its events after that one wait. */
  readonly position: number
}

const sequenceKey = (reaction: string, event: DomainEvent.Envelope | Omit<Sequence, "reaction">) =>
  JSON.stringify([reaction, event.aggregateType, event.aggregateId])

/**
 * @since 0.1.0
 * @category tags
 */
export class DeadLetters extends Context.Tag("effect-command-bus/Reaction/DeadLetters")<
  DeadLetters,
  DeadLetterStore
>() {}

/**
 * Dead letters in memory, for tests (`effect-command-bus/sql` keeps them in
 * PostgreSQL).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDeadLettersMemory: Layer.Layer<DeadLetters> = Layer.effect(
  DeadLetters,
  Effect.map(Ref.make(new Map<string, DeadLetter>()), (letters) => {
    const keyOf = (follower: string, reaction: string, eventId: string) => JSON.stringify([follower, reaction, eventId])
    return {
      add: (failure) =>
        Effect.flatMap(DateTime.now, (now) =>
          Ref.update(letters, (map) => {
            const key = keyOf(failure.follower, failure.reaction, failure.event.eventId)
            const before = map.get(key)
            return new Map(map).set(
              key,
              new DeadLetter({
                ...failure,
                attempts: (before?.attempts ?? 0) + 1,
                firstFailedAt: before?.firstFailedAt ?? now,
                lastFailedAt: now
              })
            )
          })),
      list: (follower, options) =>
        Effect.map(Ref.get(letters), (map) =>
          [...map.values()]
            .filter((letter) =>
              letter.follower === follower && (options?.after === undefined || isAfter(letter, options.after))
            )
            .sort(letterOrder)
            .slice(0, pageSize(options?.limit))),
      remove: (follower, reaction, eventId) =>
        Ref.update(letters, (map) => {
          const next = new Map(map)
          next.delete(keyOf(follower, reaction, eventId))
          return next
        }),
      sequences: (follower) =>
        Effect.map(Ref.get(letters), (map) => {
          const found = new Map<string, Sequence>()
          for (const letter of map.values()) {
            if (letter.follower !== follower) continue
            const key = sequenceKey(letter.reaction, letter.event)
            const known = found.get(key)
            if (known !== undefined && known.position <= letter.position) continue
            found.set(key, {
              reaction: letter.reaction,
              aggregateType: letter.event.aggregateType,
              aggregateId: letter.event.aggregateId,
              position: letter.position
            })
          }
          return [...found.values()]
        })
    }
  })
)

const reasonOf = (cause: Cause.Cause<unknown>): string => {
  const error = failureOf(cause)
  return stored(
    error instanceof Undecodable
      ? `Undecodable: ${error.reason}`
      : error instanceof Parked
      ? `Parked: ${error.message}`
      : Cause.pretty(cause)
  )
}

// -----------------------------------------------------------------------------
// following the event log
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export interface FollowOptions extends RunOptions {
  /** Events read from the log at a time. Default 100. */
  readonly batchSize?: number
  /**
   * How long to wait for a published event before reading the log again.
   * Default 1 second. A follower that holds its name (`lease`) and has
   * nothing to run renews it once a poll, and at least every third of the
   * lease when the poll is longer.
   */
  readonly pollInterval?: Duration.DurationInput
  /**
   * `"aggregate"`: once an event of an aggregate is a reaction's dead letter,
   * that reaction's later events of the same aggregate are parked behind it
   * (dead letters too, reason `Parked`, not run) until a `redrive` clears
   * them, so a reaction never sees an aggregate's events out of order. Costs
   * one read of the dead letters per batch. Default `"none"`: each event on
   * its own.
   */
  readonly sequencing?: "none" | "aggregate"
  /**
   * How long a follower holds its name, renewed every third of it while a
   * batch runs and at each poll (at least every third of it) while idle,
   * where the store claims names (`CheckpointStore.claim`; the memory and
   * SQL stores do): meanwhile other followers of the name, in this process or another,
   * wait, and one of them takes over when it stops (at once) or its lease
   * lapses (a crash). One that cannot renew it (its store unreachable)
   * stops its batch at its last turn before the lease lapses, by its own
   * clock, rather than run beside the follower that may take over. Default
   * 30 seconds; at least 1 second.
   */
  readonly lease?: Duration.DurationInput
}

/**
 * Runs `reactions` over the event log (`Outbox.read`), in log order, from the
 * position the checkpoint named `name` holds, saving it after each event:
 * unlike `start`, it catches up on the events committed while it was not
 * running, and a restart goes on where the last run stopped. An event whose
 * reactions ran but whose checkpoint was not saved (a crash in between) runs
 * again: make reactions idempotent (`dispatch` is). One follower of a name
 * runs at a time, in one process or many, where the checkpoint store claims
 * names (the memory and SQL ones do; see `FollowOptions.lease`): the others
 * wait, and one takes over where it stopped. It wakes when the publisher
 * delivers an event, and reads the log every `pollInterval` regardless. Returns the fiber it runs in, in the scope.
 *
 * A reaction that still fails after its retries (or cannot decode its event)
 * is logged and becomes a `DeadLetter`, and the follower goes on with the
 * next event: later events of the same aggregate are not held back. The
 * checkpoint moves past an event only once its failures are recorded, so a
 * store that cannot be reached (logged `reaction.store-unavailable`) stops
 * the follower where it is until the next wake, and nothing is skipped.
 * With `sequencing: "aggregate"`, later events of a dead letter's aggregate
 * are held back behind it.
 *
 * @since 0.1.0
 * @category running
 */
export const follow = <const Rs extends ReadonlyArray<Any>>(
  name: string,
  reactions: Rs,
  options: FollowOptions = {}
): Effect.Effect<
  Fiber.RuntimeFiber<never>,
  never,
  EventPublisher | Outbox | Checkpoints | DeadLetters | Scope.Scope | Requirements<Rs[number]>
> =>
  // Refused here, where the caller sees it, rather than by the first read of
  // the log inside the follower's fiber.
  leaseOfASecond("Reaction.follow", options.lease, () =>
    checked("Reaction.follow", reactions, { batchSize: options.batchSize }, () =>
      Effect.flatMap(
        Effect.zip(EventPublisher, Checkpoints),
        ([publisher, checkpoints]) =>
          Effect.flatMap(publisher.subscribe, (published) =>
            Effect.flatMap(Queue.sliding<void>(1), (wake) =>
              // The subscription is only a wake-up: drained as events come, so a
              // follower busy catching up does not hold every one published
              // meanwhile in memory.
              Effect.zipRight(
                Effect.forkScoped(
                  Effect.forever(
                    Effect.zipRight(
                      Effect.zipRight(Queue.take(published), Queue.takeAll(published)),
                      Queue.offer(wake, void 0)
                    )
                  )
                ),
                Effect.flatMap(
                  Effect.sync(() =>
                    randomUUID()
                  ),
                  (owner) =>
                    Effect.forkScoped(
                      // Stopped (its fiber interrupted, or its scope closed), it
                      // gives its name up for another follower to take at once.
                      checkpoints.release === undefined
                        ? followLoop(name, owner, wake, reactions, options)
                        : Effect.ensuring(
                          followLoop(name, owner, wake, reactions, options),
                          Effect.ignore(checkpoints.release(name, owner))
                        )
                    )
                )
              )))
      )))

// What a step of a follower that does not hold its name reads.
const standby = -2

// After a wake-up that found nothing new, the log is read again this soon:
// the relay publishes a batch before its commit makes it readable.
const settleMillis = [5, 10, 20, 40, 80, 160, 320]

const followLoop = <E, R>(
  name: string,
  owner: string,
  wake: Queue.Dequeue<void>,
  reactions: ReadonlyArray<Reaction<E, R>>,
  options: FollowOptions
): Effect.Effect<never, never, Outbox | Checkpoints | DeadLetters | R> => {
  const sequenced = options.sequencing === "aggregate"
  // The sequences with a dead letter, from the position of their first,
  // read at each batch, grown as it fails; and the position of the event
  // being run, which waits only if it comes after its sequence's letter (an
  // event run again, its checkpoint unsaved, or replayed, is not parked
  // behind its own letter or a later one).
  const parked = new Map<string, number>()
  const at = { position: 0 }
  const react = reactor(
    sequenced ? reactions.map((reaction) => parkedBehind(reaction, parked, at)) : reactions,
    options
  )
  const batchSize = options.batchSize ?? 100
  const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
  // Events published while a batch ran left a wake-up: none is missed.
  const waitFor = (duration: Duration.Duration) =>
    Effect.raceFirst(Effect.as(Queue.take(wake), true), Effect.as(Effect.sleep(duration), false))
  const pollMillis = Duration.toMillis(pollInterval)
  const lease = Duration.decode(options.lease ?? "30 seconds")
  // Whether this follower held the name at its last claim.
  let holding: boolean | undefined
  // When the last claim that held the name was asked for, by this process's
  // monotonic clock (a step of the wall clock moves no lease): the store's
  // lease, started once the store took it, runs at least until `lease` after.
  let heldSince = 0
  // When the last claim was asked for, held or not: the next renewal is
  // asked a third of the lease after it, not after its answer or the start
  // of the batch, so that the time a slow store takes to answer (or the
  // batch to be read) is not taken out of the next renewal's.
  let lastAsked = 0
  const monotonicMillis = Effect.map(Clock.currentTimeNanos, (nanos) => Number(nanos / 1_000_000n))
  const told = (held: boolean): Effect.Effect<boolean> => {
    const before = holding
    holding = held
    // Not told: no change, or a follower that holds the name from the start.
    if (held === before || (held && before === undefined)) return Effect.succeed(held)
    return Effect.as(
      held
        ? Effect.logInfo("reaction.follower-active")
        : before === undefined
        ? Effect.logInfo("reaction.follower-standby")
        : Effect.logWarning("reaction.follower-lost"),
      held
    )
  }
  const claimed = (checkpoints: CheckpointStore): Effect.Effect<boolean, StoreUnavailable> =>
    checkpoints.claim === undefined ? Effect.succeed(true) : Effect.flatMap(
      monotonicMillis,
      (asked) => {
        lastAsked = asked
        return Effect.flatMap(checkpoints.claim!(name, owner, lease), (held) => {
          if (held) heldSince = asked
          return told(held)
        })
      }
    )
  // While a batch runs, its lease is renewed a third of the way through
  // each lease, so that a batch may take longer than one (a reaction that
  // retries, a dispatch that waits on a key): done once the name is lost,
  // which ends the batch, rather than run it beside the follower that took
  // the name over. A renewal the store fails is tried again at the next
  // turn, unless that turn would come after the lease lapsed, and one it
  // has not answered a sixth of the lease before it lapses is given up: the
  // name counts as lost before another follower can have taken it.
  const leaseMillis = Duration.toMillis(lease)
  const renewMillis = leaseMillis / 3
  const renewEvery = Duration.millis(renewMillis)
  // A store that cannot be reached, or fails, is logged, and the step or the
  // renewal tried again at its next turn.
  const survive = survived("reaction.store-unavailable", "reaction.store-failed")
  const unanswered = () =>
    new StoreUnavailable({ store: "checkpoints", reason: "no answer to the renewal of the lease" })
  const renewed = (checkpoints: CheckpointStore): Effect.Effect<boolean> =>
    Effect.flatMap(monotonicMillis, (asked) =>
      Effect.catchAllCause(
        // Disconnected: a statement that does not answer is left to end on its own.
        Effect.timeoutFail(Effect.disconnect(claimed(checkpoints)), {
          duration: Duration.millis(Math.max(0, heldSince + leaseMillis - renewMillis / 2 - asked)),
          onTimeout: unanswered
        }),
        (cause) =>
          Effect.zipRight(
            survive(cause),
            Effect.flatMap(
              monotonicMillis,
              (now) => now + renewMillis < heldSince + leaseMillis ? Effect.succeed(true) : told(false)
            )
          )
      ))
  // Each renewal a third of the lease after the last claim was asked for.
  const nextTurn = Effect.flatMap(
    monotonicMillis,
    (now) => Effect.sleep(Duration.millis(Math.max(0, lastAsked + renewMillis - now)))
  )
  const untilLost = (checkpoints: CheckpointStore) =>
    Effect.repeat(Effect.zipRight(nextTurn, renewed(checkpoints)), { while: (held) => held })
  const step = Effect.flatMap(
    Effect.all([Checkpoints, Outbox, DeadLetters]),
    ([checkpoints, outbox, deadLetters]) =>
      Effect.flatMap(claimed(checkpoints), (held) =>
        !held ? Effect.succeed(standby) : Effect.flatMap(
          Effect.zipRight(
            sequenced ? Effect.map(deadLetters.sequences(name), (found) => reset(parked, found)) : Effect.void,
            checkpoints.load(name)
          ),
          (after) =>
            Effect.flatMap(outbox.read({ after, limit: batchSize }), (batch) =>
              Effect.as(
                Effect.forEach(
                  batch,
                  (stored) =>
                    Effect.zipRight(
                      Effect.suspend(() => {
                        at.position = stored.position
                        return react(stored.event, (reaction, event, cause) =>
                          Effect.tap(
                            deadLetters.add({
                              follower: name,
                              reaction,
                              position: stored.position,
                              event,
                              reason: reasonOf(cause)
                            }),
                            () => {
                              if (sequenced) {
                                const key = sequenceKey(reaction, event)
                                parked.set(key, Math.min(parked.get(key) ?? stored.position, stored.position))
                              }
                              return Metric.increment(
                                Metric.tagged(Metric.tagged(deadLettersTotal, "follower", name), "reaction", reaction)
                              )
                            }
                          ))
                      }),
                      checkpoints.save(name, stored.position)
                    ),
                  { discard: true }
                ),
                batch.length
              ).pipe((run) =>
                checkpoints.claim === undefined || batch.length === 0
                  ? run
                  : Effect.raceFirst(run, Effect.as(untilLost(checkpoints), standby))
              ))
        ))
  )
  // Events read, -1 for a step that failed (logged), or `standby`.
  const read = Effect.catchAllCause(
    step,
    (cause) => Effect.as(survive(cause), -1)
  )
  const loop = (woken: boolean, settled: number): Effect.Effect<never, never, Outbox | Checkpoints | DeadLetters | R> =>
    Effect.flatMap(read, (count) => {
      // Another follower holds the name: asked again a poll later, whatever
      // is published meanwhile (it is that follower's to run).
      if (count === standby) {
        return Effect.flatMap(Effect.zipRight(Effect.sleep(pollInterval), Queue.takeAll(wake)), () => loop(false, 0))
      }
      if (count >= batchSize) return loop(false, 0)
      const wait = settleMillis[settled]
      if (woken && count === 0 && wait !== undefined && wait < pollMillis) {
        return Effect.flatMap(waitFor(Duration.millis(wait)), (again) => loop(true, again ? 0 : settled + 1))
      }
      // A follower that holds its name renews it at each step: idle, it
      // steps at least every third of the lease, or the name would lapse
      // with a pollInterval longer than the lease.
      return Effect.flatMap(
        waitFor(holding === true && renewMillis < pollMillis ? renewEvery : pollInterval),
        (again) => loop(again, 0)
      )
    })
  return loop(false, 0).pipe(Effect.annotateLogs({ follower: name }))
}

// A reaction that fails with `Parked`, without running, on the events of a
// sequence in `parked` that come after its first dead letter.
const parkedBehind = <E, R>(
  reaction: Reaction<E, R>,
  parked: ReadonlyMap<string, number>,
  at: { readonly position: number }
): Reaction<E, R> => ({
  ...reaction,
  handle: (envelope) =>
    at.position > (parked.get(sequenceKey(reaction.name, envelope)) ?? Infinity)
      ? Effect.fail(
        new Parked({
          eventId: envelope.eventId,
          aggregateType: envelope.aggregateType,
          aggregateId: envelope.aggregateId
        })
      )
      : reaction.handle(envelope)
})

const reset = (parked: Map<string, number>, found: ReadonlyArray<Sequence>) => {
  parked.clear()
  for (const sequence of found) parked.set(sequenceKey(sequence.reaction, sequence), sequence.position)
}

/**
 * What `redrive` did.
 *
 * @since 0.1.0
 * @category models
 */
export interface Redriven {
  /** Ran without failing, and were removed. */
  readonly resolved: number
  /** Failed again (after their retries): kept, with one more attempt and the new reason. */
  readonly failed: number
  /** Named a reaction not among those given: left as they are. */
  readonly unmatched: number
  /**
   * With `sequencing: "aggregate"`: not run, behind an earlier letter of the
   * same reaction and aggregate that failed again (or was not matched).
   */
  readonly held: number
}

/**
 * Runs a follower's dead letters again (at most `limit`, default 100, lowest
 * position first), each through the reaction it names, with the usual
 * retries. A letter naming a reaction not given is left as it is (counted
 * `unmatched`), so a redrive of some of a follower's reactions runs theirs
 * alone. With `sequencing: "aggregate"` (as the follower's), a letter that
 * stays holds back the later letters of its reaction and aggregate. Held and
 * unmatched letters do not count against `limit`, and the redrive reads on
 * past them, so one aggregate stuck behind a letter that keeps failing, or
 * another reaction's letters, do not keep the letters of others from being
 * run. The follower may be running meanwhile. Like any delivery, a redrive
 * may run an event a reaction has seen: reactions are idempotent.
 *
 * @since 0.1.0
 * @category running
 */
export const redrive = <const Rs extends ReadonlyArray<Any>>(
  name: string,
  reactions: Rs,
  options: RunOptions & { readonly limit?: number; readonly sequencing?: "none" | "aggregate" } = {}
): Effect.Effect<Redriven, StoreUnavailable, DeadLetters | Requirements<Rs[number]>> =>
  checked("Reaction.redrive", reactions, {}, () => redriveChecked(name, reactions, options))

const redriveChecked = <E, R>(
  name: string,
  reactions: ReadonlyArray<Reaction<E, R>>,
  options: RunOptions & { readonly limit?: number; readonly sequencing?: "none" | "aggregate" }
): Effect.Effect<Redriven, StoreUnavailable, DeadLetters | R> =>
  Effect.gen(function*() {
    const deadLetters = yield* DeadLetters
    const byName = new Map(reactions.map((reaction) => [reaction.name, reaction]))
    // Sequences whose earlier letter stays: their later ones wait behind it.
    const blocked = new Set<string>()
    const sequenced = options.sequencing === "aggregate"
    let resolved = 0
    let failed = 0
    let unmatched = 0
    let held = 0
    const limit = pageSize(options.limit)
    // Read in pages from the last letter looked at, each letter once, however
    // many are held or unmatched before the ones that run.
    const page = Math.max(limit, 100)
    let after: LetterCursor | undefined = undefined
    while (resolved + failed < limit) {
      const letters: ReadonlyArray<DeadLetter> = yield* deadLetters.list(
        name,
        after === undefined ? { limit: page } : { limit: page, after }
      )
      let advanced = false
      for (const letter of letters) {
        if (resolved + failed >= limit) break
        // A store that does not page (a custom one ignoring `after`) gives
        // the letters looked at again: they are skipped, and the loop ends.
        if (after !== undefined && !isAfter(letter, after)) continue
        advanced = true
        after = { position: letter.position, reaction: letter.reaction }
        const sequence = sequenceKey(letter.reaction, letter.event)
        if (sequenced && blocked.has(sequence)) {
          held++
          continue
        }
        const reaction = byName.get(letter.reaction)
        if (reaction === undefined || reaction.eventType !== letter.event.type) {
          unmatched++
          blocked.add(sequence)
          continue
        }
        const exit = yield* Effect.exit(measured(reaction, letter.event, options))
        if (exit._tag === "Success") {
          yield* deadLetters.remove(name, letter.reaction, letter.event.eventId)
          resolved++
        } else if (Cause.isInterruptedOnly(exit.cause) && (yield* interruptedItself)) {
          return yield* Effect.interrupt
        } else {
          yield* logFailure(exit.cause).pipe(annotated(letter.reaction, letter.event))
          yield* deadLetters.add({ ...letter, reason: reasonOf(exit.cause) })
          blocked.add(sequence)
          failed++
        }
      }
      // Every letter read: done. Else read on past the letters not run
      // (held, or naming a reaction not given), which do not count.
      if (letters.length < page || !advanced) break
    }
    return { resolved, failed, unmatched, held }
  }).pipe(Effect.annotateLogs({ follower: name, redrive: true }))
