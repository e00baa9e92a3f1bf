/**
 * Process managers (stateful sagas): a long-running process, keyed by
 * something its events carry (an order id, a correlation id), with a state
 * of its own that survives restarts. It reacts to several event types, and
 * each of its handlers, a pure function of the state and the event, says
 * what comes next: the new state, commands to send through a bus, deadlines
 * to set or cancel (commands the `CommandScheduler` runs later, keyed per
 * process), and whether the process is done.
 *
 * A process manager is a list of reactions (`reactions`, one per event
 * type), run by `Reaction.follow` as any other: checkpoints, leases, dead
 * letters and `redrive` come with it.
 *
 * Each event has its effect once, under redelivery and crashes: its run
 * claims the process (a write on the version read, naming the event), so
 * that of two runs of different events at once the loser has sent nothing
 * and decides again on the winner's state; then the commands and deadlines
 * go, each under a key of its own derived from the event's id (a command's
 * idempotency key, a deadline's scheduling key), so that a run cut short
 * before the state is saved sends them again as no-ops; then the state is
 * saved together with the event's id, on the version and claim read, so
 * that an event already applied is skipped (nothing sent twice) and two
 * followers never both apply one.
 *
 * A command sent that fails with a failure it declares fails its event (a
 * dead letter), unless the process has a failure handler for it
 * (`on(handlers, { onFailure })`): a compensation, carried out in place of
 * the rest of the event's decision.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type * as Types from "effect/Types"
import { createHash } from "node:crypto"
import * as Command from "./Command.js"
import type * as CommandBus from "./CommandBus.js"
import type { StoreUnavailable } from "./CommandError.js"
import * as CommandScheduler from "./CommandScheduler.js"
import type * as DomainEvent from "./DomainEvent.js"
import { followUpSender } from "./internal/dispatching.js"
import * as JsonValue from "./internal/json.js"
import { inBatches, positiveCounts, storedDuration } from "./internal/limit.js"
import { isRefusal } from "./internal/refusal.js"
import * as Reaction from "./Reaction.js"

// -----------------------------------------------------------------------------
// declaring
// -----------------------------------------------------------------------------

/**
 * A deadline: `command`, sent when it is due unless cancelled first (by its
 * `name`, or by the process ending). Due `after` a delay from the event's
 * `occurredAt` (not from when the event is handled: a follower catching up
 * sets the deadline the event asked for, and a redelivery sets the same), or
 * `at` a time. A deadline of the same name replaces the pending one.
 *
 * @since 0.1.0
 * @category models
 */
export type Deadline<Cmd extends Command.Any> =
  & { readonly name: string; readonly command: Cmd }
  & ({ readonly after: Duration.DurationInput } | { readonly at: DateTime.DateTime })

/**
 * What a handler decides on an event: the process's new state, and what to
 * do. The commands are sent in order, stamped with the event's correlation,
 * the event's id as causation id and an idempotency key of their own.
 *
 * @since 0.1.0
 * @category models
 */
export interface Decision<S, Cmd extends Command.Any> {
  readonly state: S
  /** Commands to dispatch through the bus, in order. */
  readonly send?: ReadonlyArray<Cmd> | undefined
  /** Deadlines to set, each replacing the pending one of its name. */
  readonly schedule?: ReadonlyArray<Deadline<Cmd>> | undefined
  /** Names of pending deadlines to drop. */
  readonly cancel?: ReadonlyArray<string> | undefined
  /**
   * The process is over: its pending deadlines are cancelled (the ones this
   * decision schedules are not set), and its later events are ignored. Its
   * last state is kept.
   */
  readonly done?: boolean | undefined
}

/**
 * A handler of one event type: pure, since a redelivered event that finds
 * its state unsaved runs it again and must decide the same.
 *
 * @since 0.1.0
 * @category models
 */
export type Handler<S, A, Cmd extends Command.Any> = (
  state: S,
  event: A,
  envelope: DomainEvent.Envelope
) => Decision<S, Cmd>

/**
 * A command of a decision that failed with a failure it declares (not one
 * it marks retryable), as a failure handler gets it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Failed<S, Sent extends Command.Any, Cmd extends Command.Any> {
  readonly command: Sent
  readonly failure: Command.Failure<Sent>
  /** Its place in the decision's `send`: the commands before it were sent. */
  readonly index: number
  /**
   * The event's decision it was sent by, whose rest the failure handler's
   * takes the place of: `{ ...decision, send: [...] }` keeps its deadlines,
   * cancels and end.
   */
  readonly decision: Decision<S, Cmd>
}

/**
 * What a process does when a command its event's decision sent fails with
 * a failure it declares: pure, as a handler is. It gets the state the
 * event's decision left, and its decision takes the place of the rest of
 * that one: the commands after the failed one are not sent, its deadlines
 * not set nor cancelled (unless this decision says so again); this
 * decision's are, and its state is saved.
 *
 * @since 0.1.0
 * @category models
 */
export type FailureHandler<S, Sent extends Command.Any, A, Cmd extends Command.Any> = (
  state: S,
  failed: Failed<S, Sent, Cmd>,
  event: A,
  envelope: DomainEvent.Envelope
) => Decision<S, Cmd>

/**
 * Failure handlers, by the tag of the command that failed, for the commands
 * that declare a failure: a command left out fails its event with its
 * failure, as with no handlers.
 *
 * @since 0.1.0
 * @category models
 */
export type FailureHandlers<Events extends ReadonlyArray<EventClass>, S, Cmd extends Command.Any> = {
  readonly [
    Tag in Cmd["_tag"] as [Command.Failure<Extract<Cmd, { readonly _tag: Tag }>>] extends [never] ? never : Tag
  ]?: FailureHandler<
    S,
    Extract<Cmd, { readonly _tag: Tag }>,
    Schema.Schema.Type<Events[number]>,
    Cmd
  >
}

/**
 * @since 0.1.0
 * @category models
 */
export interface OnOptions<Events extends ReadonlyArray<EventClass>, S, Cmd extends Command.Any> {
  /**
   * What to do, per command, when a command sent fails with a failure it
   * declares, in place of failing the event (a dead letter): a compensation.
   * A command of the compensation that fails that way fails the event.
   */
  readonly onFailure?: FailureHandlers<Events, S, Cmd> | undefined
}

/**
 * An event class with its tag as a literal type, as `DomainEvent.Class`
 * makes them.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventClass<A = any, Tag extends string = string> extends Reaction.EventClass<A> {
  readonly _tag: Tag
}

/**
 * The handlers of `Events`, by tag.
 *
 * @since 0.1.0
 * @category models
 */
export type Handlers<Events extends ReadonlyArray<EventClass>, S, Cmd extends Command.Any> = {
  readonly [Tag in Events[number]["_tag"]]: Handler<
    S,
    Schema.Schema.Type<Extract<Events[number], { readonly _tag: Tag }>>,
    Cmd
  >
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<
  Events extends ReadonlyArray<EventClass>,
  S,
  SI,
  C extends Command.Any,
  H,
  BE,
  BR
> {
  /**
   * Names the process manager: its stored processes, its reactions
   * (`<name> on <event type>`), its commands' idempotency keys and its
   * deadlines' keys. Keep it once processes are stored.
   */
  readonly name: string
  /**
   * The bus its commands (deadlines included) go through: it sends no other.
   * Give it the idempotency middleware: a run cut short before the state is
   * saved sends its commands again, under the same keys, for the middleware
   * to replay.
   */
  readonly bus: CommandBus.CommandBus<C, H, BE, BR>
  /** The state's schema: the state is stored encoded, as JSON. */
  readonly state: Schema.Schema<S, SI>
  /** The state of a process before its first event. */
  readonly initialState: NoInfer<S>
  /** The event classes it reacts to: `on` takes a handler for each. */
  readonly events: Events
  /**
   * The process an event belongs to, or `undefined` for none (the event is
   * ignored). 1 to 255 characters.
   */
  readonly key: (event: Schema.Schema.Type<Events[number]>, envelope: DomainEvent.Envelope) => string | undefined
  /**
   * The event types that start a process: an event of another type whose
   * process was never started is ignored. Default: any of `events`.
   */
  readonly startedBy?: ReadonlyArray<NoInfer<Events[number]["_tag"]>> | undefined
  /** As `Reaction.DispatchOptions.inFlightWait`: how long a command's key in flight is waited out. Default 2 minutes. */
  readonly inFlightWait?: Duration.DurationInput | undefined
}

/**
 * A process as stored, decoded.
 *
 * @since 0.1.0
 * @category models
 */
export interface Process<S> {
  readonly key: string
  readonly state: S
  readonly done: boolean
  /** Events applied so far. */
  readonly version: number
  /** The names of the deadlines it set and has not cancelled. */
  readonly deadlines: ReadonlyArray<string>
}

/**
 * How `prune` picks the processes it deletes.
 *
 * @since 0.1.0
 * @category models
 */
export interface PruneOptions {
  /**
   * How long a finished process is kept after its last event: one done
   * longer ago is deleted. Counted back from the `Clock`; past 100 years
   * counts as 100 years.
   */
  readonly olderThan: Duration.DurationInput
  /**
   * How many processes one statement deletes: `prune` goes on in batches of
   * this many until a batch comes back short, so that a large backlog holds
   * no locks for long. Default 500.
   */
  readonly batchSize?: number | undefined
}

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-command-bus/ProcessManager")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * A process manager: its reactions, for `Reaction.follow` (and `redrive`),
 * and a reader of its processes. Its reactions are `Reaction.Dispatching`
 * ones, of the commands it may send, so the test kit's
 * `ReactionSpecification` takes them too.
 *
 * @since 0.1.0
 * @category models
 */
export interface ProcessManager<S, Cmd extends Command.Any, out E = never, out R = never> {
  readonly [TypeId]: { readonly _S: Types.Invariant<S> }
  readonly name: string
  readonly reactions: ReadonlyArray<Reaction.Dispatching<Cmd, E, R>>
  /** The stored process of `key`, if any. */
  readonly process: (
    key: string
  ) => Effect.Effect<Option.Option<Process<S>>, StoreUnavailable | StateUndecodable, Processes>
  /** The scheduling key of the deadline `name` of the process `key`. */
  readonly deadlineKey: (key: string, name: string) => string
  /**
   * Deletes the processes that are done and whose last event was applied
   * more than `olderThan` ago, with the ids of the events applied to them,
   * in batches; returns how many. A process not done, or held by a run, is
   * kept. An event of a pruned process that comes later finds no process:
   * see `PruneOptions` and the README.
   */
  readonly prune: (options: PruneOptions) => Effect.Effect<number, StoreUnavailable | PruneUnsupported, Processes>
}

/**
 * Any process manager.
 *
 * @since 0.1.0
 * @category models
 */
export type Any = ProcessManager<any, any, any, any>

/**
 * A stored state that the state's schema does not decode (a state written by
 * another version of it). Not retried: a dead letter, to redrive once the
 * schema reads it.
 *
 * @since 0.1.0
 * @category errors
 */
export class StateUndecodable extends Schema.TaggedError<StateUndecodable>()("StateUndecodable", {
  manager: Schema.String,
  key: Schema.String,
  reason: Schema.String
}) {}

/**
 * Another run claimed or saved the process between this run's read and its
 * claim or save, or holds it (two followers of one name whose leases
 * overlapped, or a `redrive` beside the follower). Retried: the next run
 * reads the process again, and skips the event if the other run applied it.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProcessConflict extends Schema.TaggedError<ProcessConflict>()("ProcessConflict", {
  manager: Schema.String,
  key: Schema.String,
  version: Schema.Number
}) {}

/**
 * A key or a state a process manager refuses: a key that is not 1 to 255
 * characters of storable text, or a state that does not encode to JSON. Not
 * retried: the handler decides the same again.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidProcess extends Schema.TaggedError<InvalidProcess>()("InvalidProcess", {
  manager: Schema.String,
  reason: Schema.String
}) {}

/**
 * The process store has no `prune` (a store written before it came): its
 * processes are kept, as they were.
 *
 * @since 0.1.0
 * @category errors
 */
export class PruneUnsupported extends Schema.TaggedError<PruneUnsupported>()("PruneUnsupported", {
  manager: Schema.String
}) {}

const isKey = Schema.is(CommandScheduler.Key)
const isIdempotencyKey = Schema.is(Command.IdempotencyKey)

// A key prefix that leaves room for an event's id and a suffix, or the
// digest of one that does not (as `Reaction.dispatch` keys its commands).
const prefixOf = (name: string): string =>
  isIdempotencyKey(`${name}:${"0".repeat(36)}:${"0".repeat(12)}`)
    ? name
    : `sha256-${createHash("sha256").update(name).digest("hex")}`

/**
 * A process manager declared, waiting for its handlers (`on`): given in a
 * call of their own, so that the state's type is settled, by its schema,
 * before the handlers are typed (a state of literal types, a status say,
 * then needs no `as const`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Declaration<Events extends ReadonlyArray<EventClass>, S, Cmd extends Command.Any, E, R> {
  /**
   * The handlers, one per event type of `events`, by tag; and, optionally,
   * what to do when a command sent fails (`onFailure`).
   */
  readonly on: (
    handlers: Handlers<Events, S, Cmd>,
    options?: OnOptions<Events, S, Cmd> | undefined
  ) => ProcessManager<S, Cmd, E, R>
}

/**
 * Declares a process manager over `bus`. The commands its handlers return
 * (to send, or as deadlines) are the bus's: another does not compile.
 *
 * ```ts
 * const checkout = ProcessManager.make({
 *   name: "checkout",
 *   bus,
 *   state: Schema.Struct({ paid: Schema.Boolean }),
 *   initialState: { paid: false },
 *   events: [OrderPlaced, PaymentReceived],
 *   key: (event) => event.orderId,
 *   startedBy: ["OrderPlaced"]
 * }).on({
 *   OrderPlaced: (state, event) => ({
 *     state,
 *     send: [new TakePayment({ orderId: event.orderId })],
 *     schedule: [{ name: "unpaid", after: "30 minutes", command: new CancelOrder({ orderId: event.orderId }) }]
 *   }),
 *   PaymentReceived: (_, event) => ({ state: { paid: true }, send: [new ShipOrder({ orderId: event.orderId })], done: true })
 * })
 * yield* Reaction.follow("checkout", checkout.reactions)
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <
  const Events extends ReadonlyArray<EventClass>,
  S,
  SI,
  C extends Command.Any,
  H,
  BE,
  BR
>(
  options: Options<Events, S, SI, C, H, BE, BR>
): Declaration<
  Events,
  S,
  C,
  Command.Failure<C> | BE | StoreUnavailable | StateUndecodable | ProcessConflict | InvalidProcess,
  Processes | CommandScheduler.ScheduledCommands | CommandBus.Requirements<H, C["_tag"], BR>
> => ({ on: (on, onOptions) => declared(options, on, onOptions?.onFailure) })

const declared = <
  Events extends ReadonlyArray<EventClass>,
  S,
  SI,
  C extends Command.Any,
  H,
  BE,
  BR
>(
  options: Options<Events, S, SI, C, H, BE, BR>,
  on: Handlers<Events, S, C>,
  onFailure: FailureHandlers<Events, S, C> | undefined
): ProcessManager<
  S,
  C,
  Command.Failure<C> | BE | StoreUnavailable | StateUndecodable | ProcessConflict | InvalidProcess,
  Processes | CommandScheduler.ScheduledCommands | CommandBus.Requirements<H, C["_tag"], BR>
> => {
  const { bus, name } = options
  const keyPrefix = prefixOf(name)
  const decodeState = Schema.decodeUnknown(options.state)
  const encodeState = Schema.encode(options.state)
  const sender = followUpSender(
    { definitions: bus.definitions, dispatch: (command) => bus.dispatch(command as C) },
    options.inFlightWait
  )
  const startedBy = options.startedBy === undefined ? undefined : new Set<string>(options.startedBy)
  const handlers = on as Record<string, Handler<S, unknown, C>>
  const compensations = (onFailure ?? {}) as Record<string, FailureHandler<S, C, unknown, C> | undefined>

  const invalid = (reason: string) => Effect.fail(new InvalidProcess({ manager: name, reason }))

  // A state encoded, as JSON: else an InvalidProcess.
  const encoding = (state: S) =>
    Effect.flatMap(
      Effect.mapError(
        encodeState(state),
        (error) => new InvalidProcess({ manager: name, reason: `the state does not encode: ${error.message}` })
      ),
      (encoded) => {
        const notJson = JsonValue.incompatibility(encoded)
        return notJson === undefined ? Effect.succeed(encoded) : invalid(JsonValue.refusal(notJson, "the state"))
      }
    )

  const deadlineKey = (key: string, deadline: string): string => {
    const plain = `process:${JSON.stringify([name, key, deadline])}`
    return isKey(plain) ? plain : `process:sha256-${createHash("sha256").update(plain).digest("hex")}`
  }

  const decoded = (key: string, stored: Stored) =>
    Effect.map(
      Effect.mapError(
        decodeState(stored.state),
        (error) => new StateUndecodable({ manager: name, key, reason: error.message })
      ),
      (state): Process<S> => ({ key, state, done: stored.done, version: stored.version, deadlines: stored.deadlines })
    )

  const process = (key: string) =>
    Effect.flatMap(
      Processes,
      (store) =>
        Effect.flatMap(store.load(name, key), (stored) =>
          // Version 0: claimed by a first event not applied yet.
          Option.isNone(stored) || stored.value.version === 0
            ? Effect.succeedNone
            : Effect.asSome(decoded(key, stored.value)))
    )

  // A command, stamped with the event's follow-up, through the bus (or the
  // test kit's interceptor), as `Reaction.dispatch` sends.
  const send = (reaction: string, envelope: DomainEvent.Envelope, command: C, idempotencyKey: string) => {
    const followUp = { ...Command.causedBy(envelope), idempotencyKey }
    return sender.send(reaction, envelope, followUp, withFollowUp(command, followUp))
  }

  const apply = (reaction: string, event: unknown, envelope: DomainEvent.Envelope) =>
    Effect.gen(function*() {
      const key = options.key(event as Schema.Schema.Type<Events[number]>, envelope)
      if (key === undefined) return
      if (!isKey(key)) return yield* invalid(`a process key must be 1 to 255 characters of text`)
      const store = yield* Processes
      const stored = yield* store.load(name, key, envelope.eventId)
      const before = Option.getOrUndefined(stored)
      // Done, or this event applied already (a redelivery after the state
      // was saved, or a replay): nothing to do, and nothing sent again.
      if (before !== undefined && (before.done || before.applied)) return
      const version = before?.version ?? 0
      // A row of version 0 is a claim on a process no event was applied to.
      if (version === 0 && startedBy !== undefined && !startedBy.has(envelope.type)) return
      // Another event's run holds the process: its decision comes first, and
      // this one is decided on what it leaves (retried, as a conflict is).
      const conflict = () => Effect.fail(new ProcessConflict({ manager: name, key, version }))
      if (before?.applying !== undefined && before.applying !== envelope.eventId) return yield* conflict()
      const state = version === 0 ? options.initialState : (yield* decoded(key, before!)).state
      const decision = handlers[envelope.type]!(state, event, envelope)
      // The state is checked before anything is sent or scheduled: a decision
      // whose state cannot be saved is a dead letter, and has no effect.
      const encoded = yield* encoding(decision.state)

      // The process is claimed for this event before anything is sent: of
      // two runs of different events that read one version, the one that
      // loses the claim has sent nothing, and decides again on the winner's
      // state. A run of this event cut short keeps the claim, which its
      // redelivery takes over.
      const held: Stored = before ?? {
        state: yield* encoding(options.initialState),
        done: false,
        version: 0,
        deadlines: []
      }
      if (before?.applying !== envelope.eventId) {
        const claimed = yield* store.save(name, key, { ...held, applying: envelope.eventId }, version, undefined)
        if (!claimed) return yield* conflict()
      }
      // A run that fails gives the claim up, so the process's next events
      // are not held behind a dead letter; one that crashes leaves it to its
      // redelivery.
      const release = Effect.ignore(
        Effect.suspend(() => store.save(name, key, { ...held, applying: undefined }, version, envelope.eventId))
      )

      const pending = new Set(held.deadlines)
      // Each command under a key of its own, `tag` telling a compensation's
      // (`f<index>:`) from the event's decision's, so that a redelivery sends
      // both again as no-ops. A command that fails with a failure it declares
      // and has a failure handler ends the decision's sending there, with the
      // handler's decision to carry out in place of its rest.
      const sending = (current: Decision<S, C>, tag: string) =>
        Effect.gen(function*() {
          const sends = current.send ?? []
          for (let i = 0; i < sends.length; i++) {
            const command = sends[i]!
            const sent = send(reaction, envelope, command, `${keyPrefix}:${envelope.eventId}:${tag}${i}`)
            // Own keys only: a command tagged `toString` has no handler in Object's.
            const compensate = tag === "" && Object.hasOwn(compensations, command._tag)
              ? compensations[command._tag]
              : undefined
            if (compensate === undefined) {
              yield* sent
              continue
            }
            const failed = yield* sent.pipe(
              Effect.as(undefined),
              Effect.catchIf(sender.isOutcome, (failure) => Effect.succeed(failure as Command.Failure<C>))
            )
            if (failed !== undefined) {
              return {
                index: i,
                decision: compensate(
                  current.state,
                  { command, failure: failed, index: i, decision: current },
                  event,
                  envelope
                )
              }
            }
          }
          return undefined
        })
      const scheduling = (current: Decision<S, C>, tag: string) =>
        Effect.gen(function*() {
          const cancelled = current.done === true ? [...pending] : current.cancel ?? []
          for (const deadline of cancelled) {
            yield* CommandScheduler.cancelKey(deadlineKey(key, deadline))
            pending.delete(deadline)
          }
          const scheduled = current.done === true ? [] : current.schedule ?? []
          for (let i = 0; i < scheduled.length; i++) {
            const deadline = scheduled[i]!
            const at = "at" in deadline
              ? deadline.at
              : DateTime.addDuration(envelope.occurredAt, deadline.after)
            const command = withFollowUp(deadline.command, {
              ...Command.causedBy(envelope),
              idempotencyKey: `${keyPrefix}:${envelope.eventId}:${tag}d${i}`
            })
            yield* CommandScheduler.schedule(command, { at }, { key: deadlineKey(key, deadline.name) })
            pending.add(deadline.name)
          }
        })
      const carried = yield* Effect.gen(function*() {
        const compensation = yield* sending(decision, "")
        if (compensation === undefined) {
          yield* scheduling(decision, "")
          return { decision, encoded }
        }
        // As the event's decision's, the compensation's state is checked
        // before any of its commands go.
        const tag = `f${compensation.index}:`
        const compensated = yield* encoding(compensation.decision.state)
        yield* sending(compensation.decision, tag)
        yield* scheduling(compensation.decision, tag)
        return { decision: compensation.decision, encoded: compensated }
      }).pipe(Effect.onError(() => release))

      const saved = yield* store.save(
        name,
        key,
        {
          state: carried.encoded,
          done: carried.decision.done === true,
          version: version + 1,
          deadlines: [...pending]
        },
        version,
        envelope.eventId,
        envelope.eventId
      )
      if (!saved) return yield* conflict()
    }).pipe(Effect.annotateLogs({ processManager: name }))

  const retryable = (error: unknown) =>
    error instanceof ProcessConflict ||
    (!(error instanceof StateUndecodable) && !(error instanceof InvalidProcess) && !isRefusal(error) &&
      !sender.isOutcome(error))

  const reactions = options.events.map((event) => {
    const reaction = `${name} on ${event._tag}`
    return {
      ...Reaction.make(event, (decoded, envelope) => apply(reaction, decoded, envelope), { name: reaction, retryable }),
      [Reaction.DispatchingTypeId]: dispatchingVariance
    }
  })

  return {
    [TypeId]: stateVariance,
    name,
    reactions,
    process,
    deadlineKey,
    prune: (options) => pruneManager(name, options)
  }
}

// Batches until one comes back short, all before one time, read once: a
// process done while this runs is not before it, so the loop ends.
const pruneManager = (manager: string, options: PruneOptions) =>
  positiveCounts("ProcessManager.prune", { batchSize: options.batchSize }, () =>
    Effect.gen(function*() {
      const store = yield* Processes
      if (store.prune === undefined) return yield* new PruneUnsupported({ manager })
      const prune = store.prune
      const before = DateTime.subtractDuration(yield* DateTime.now, storedDuration(options.olderThan))
      return yield* inBatches(options.batchSize, (limit) => prune(manager, before, limit))
    }).pipe(Effect.withSpan("ProcessManager.prune", { attributes: { manager } })))

/**
 * Prunes `manager`'s finished processes (`prune`) now and then every
 * `interval`, in a fiber that lives as long as the surrounding scope; a
 * failing prune is logged and tried again at the next tick. Fails at once,
 * starting nothing, on a store without `prune`.
 *
 * ```ts
 * yield* ProcessManager.pruneEvery(checkout, { olderThan: "30 days", interval: "1 hour" })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const pruneEvery = (
  manager: Any,
  options: PruneOptions & { readonly interval: Duration.DurationInput }
): Effect.Effect<void, PruneUnsupported, Processes | Scope.Scope> =>
  positiveCounts(
    "ProcessManager.pruneEvery",
    { batchSize: options.batchSize },
    () =>
      Effect.flatMap(Processes, (store) =>
        store.prune === undefined
          ? Effect.fail(new PruneUnsupported({ manager: manager.name }))
          : pruneManager(manager.name, options).pipe(
            Effect.tap((pruned) =>
              pruned > 0 ? Effect.logDebug("process-manager.pruned").pipe(Effect.annotateLogs({ pruned })) : Effect.void
            ),
            Effect.catchAll((error) => Effect.logWarning("process-manager.prune-failed", error)),
            Effect.repeat(Schedule.spaced(options.interval)),
            Effect.annotateLogs({ processManager: manager.name }),
            Effect.forkScoped,
            Effect.asVoid
          ))
  )

const dispatchingVariance = { _Cmd: (_: never) => _ }
const stateVariance = { _S: (_: any) => _ }

// The command with its follow-up metadata: a copy, as commands are
// immutable; its fields were checked when it was made.
const withFollowUp = <C extends Command.Any>(command: C, followUp: Reaction.FollowUp): C => {
  const definition = command.constructor as new(fields: unknown, options?: Schema.MakeOptions) => C
  return new definition({ ...command, ...followUp }, { disableValidation: true })
}

// -----------------------------------------------------------------------------
// storing
// -----------------------------------------------------------------------------

/**
 * A process as a store keeps it: its state encoded (JSON), whether it is
 * done, its version (events applied) and its pending deadlines' names. The
 * store also keeps the ids of the events applied, so that a redelivered one
 * is skipped; each is one record, not a list written again with every
 * event (which made a long process's every event dearer than the last).
 *
 * @since 0.1.0
 * @category models
 */
export interface Stored {
  readonly state: unknown
  readonly done: boolean
  readonly version: number
  readonly deadlines: ReadonlyArray<string>
  /**
   * The event whose run holds the process (its commands and deadlines under
   * way, its state not saved yet), if any: the process's other events wait.
   */
  readonly applying?: string | undefined
}

/**
 * A process as `load` reads it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Loaded extends Stored {
  /** Whether the event `load` was asked about was applied to the process (a redelivery). */
  readonly applied: boolean
}

/**
 * Where processes are kept, by manager name and key.
 *
 * @since 0.1.0
 * @category models
 */
export interface ProcessStore {
  /** The process, and whether the event `eventId` (when given) was applied to it. */
  readonly load: (
    manager: string,
    key: string,
    eventId?: string | undefined
  ) => Effect.Effect<Option.Option<Loaded>, StoreUnavailable>
  /**
   * Writes `process` if the stored version is `expected` (0: none stored,
   * or a row of version 0) and the event whose run holds it is `claimed`
   * (`undefined`: none), in one step: false, writing nothing, when another
   * write came first. A write that keeps the version (a claim, or its
   * release) changes `applying` only: a store may leave the rest as it is.
   * `applied`, the event whose run the write ends, is kept as applied in
   * the same step.
   */
  readonly save: (
    manager: string,
    key: string,
    process: Stored,
    expected: number,
    claimed?: string | undefined,
    applied?: string | undefined
  ) => Effect.Effect<boolean, StoreUnavailable>
  /**
   * Deletes up to `limit` of `manager`'s processes that are done, held by
   * no run (no `applying`) and last written before `before`, each with the
   * events applied to it, in one step; returns how many. Optional, as it
   * came after the others: `prune` fails with `PruneUnsupported` on a store
   * without it.
   */
  readonly prune?:
    | ((manager: string, before: DateTime.Utc, limit: number) => Effect.Effect<number, StoreUnavailable>)
    | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Processes extends Context.Tag("effect-command-bus/ProcessManager/Processes")<
  Processes,
  ProcessStore
>() {}

/**
 * Processes in memory, for tests (`effect-command-bus/sql` keeps them in
 * PostgreSQL). Each build is empty. A write's time is the `Clock`'s, so
 * `TestClock` drives `prune`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<Processes> = Layer.sync(Processes, () => {
  const processes = new Map<
    string,
    {
      readonly manager: string
      readonly process: Stored
      readonly applied: Set<string>
      readonly writtenAt: number
    }
  >()
  const keyOf = (manager: string, key: string) => JSON.stringify([manager, key])
  return {
    load: (manager, key, eventId) =>
      Effect.sync(() => {
        const kept = processes.get(keyOf(manager, key))
        return kept === undefined
          ? Option.none()
          : Option.some({ ...kept.process, applied: eventId !== undefined && kept.applied.has(eventId) })
      }),
    save: (manager, key, process, expected, claimed, applied) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const id = keyOf(manager, key)
        const current = processes.get(id)
        if ((current?.process.version ?? 0) !== expected || current?.process.applying !== claimed) return false
        const ids = current?.applied ?? new Set<string>()
        if (applied !== undefined) ids.add(applied)
        processes.set(id, { manager, process, applied: ids, writtenAt: now })
        return true
      }),
    prune: (manager, before, limit) =>
      Effect.sync(() => {
        const cutoff = DateTime.toEpochMillis(before)
        const prunable = [...processes].filter(([, kept]) =>
          kept.manager === manager && kept.process.done && kept.process.applying === undefined &&
          kept.writtenAt < cutoff
        ).sort(([, a], [, b]) => a.writtenAt - b.writtenAt).slice(0, limit)
        for (const [id] of prunable) processes.delete(id)
        return prunable.length
      })
  }
})
