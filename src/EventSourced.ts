/**
 * Event-sourced aggregates on the bus, in the Decider style (Jérémie
 * Chassaing's, as Emmett has it): an aggregate's state is its own events
 * folded with `evolve` from `initialState`, and a command is `decide`d
 * against that state into new events. `handler` makes a bus handler of one
 * command: it reads the aggregate's stream (`EventStore`), folds it, decides,
 * claims the stream's next versions, and returns the new events as drafts
 * the bus appends in the dispatch's transaction. Two dispatches that read
 * the same version cannot both append: the second fails with
 * `ConcurrencyConflict`, which the `retry` middleware re-runs on fresh state
 * for a command that marks it retryable.
 *
 * ```ts
 * const Counter = EventSourced.make({
 *   aggregateType: "Counter",
 *   commands: [Increment],
 *   events: [Incremented],
 *   initialState: 0,
 *   evolve: (count, event) => count + event.by,
 *   decide: {
 *     Increment: (command, count) =>
 *       count + command.by > 10
 *         ? Effect.fail(new TooHigh({ count }))
 *         : Effect.succeed([new Incremented({ counterId: command.counterId, by: command.by })])
 *   }
 * })
 *
 * const bus = CommandBus.make([Increment], {
 *   Increment: EventSourced.handler(Increment, {
 *     decider: Counter,
 *     aggregateId: (command) => command.counterId,
 *     success: (count) => count
 *   })
 * })
 * ```
 *
 * @since 0.1.0
 */
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import * as Command from "./Command.js"
import type { ConcurrencyConflict } from "./CommandError.js"
import * as DomainEvent from "./DomainEvent.js"
import { EventStore, type StreamId } from "./EventStore.js"
import * as Handler from "./Handler.js"
import { Outbox } from "./Outbox.js"
import * as Tracing from "./Tracing.js"

/**
 * An event class (`DomainEvent.Class`) a stream's stored events decode with.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventClass<A extends DomainEvent.Any = DomainEvent.Any> extends Schema.Schema<A, any, never> {
  readonly _tag: string
}

/**
 * One `decide` per command of the union `C`, keyed by tag, each failing only
 * with its own command's declared failures: the handler of a command then
 * fails with exactly what that command declares.
 *
 * @since 0.1.0
 * @category models
 */
export type Decisions<C extends Command.Any, S, Ev, R = never> = {
  readonly [K in C["_tag"]]: (
    command: Extract<C, { readonly _tag: K }>,
    state: S
  ) => Effect.Effect<ReadonlyArray<Ev>, Command.Failure<Extract<C, { readonly _tag: K }>>, R>
}

/**
 * An event-sourced aggregate: which stream type it is, the events its
 * stream holds, how they build its state, and what each of its commands
 * decides on that state.
 *
 * @since 0.1.0
 * @category models
 */
export interface Decider<C extends Command.Any, S, Ev extends DomainEvent.Any, R = never> {
  readonly aggregateType: string
  /** The classes of the events its stream holds; a stored event of another type is a defect. */
  readonly events: ReadonlyArray<EventClass>
  readonly initialState: S
  readonly evolve: (state: S, event: Ev) => S
  readonly decide: Decisions<C, S, Ev, R>
  /** Rewrites a stored payload before it is decoded (see `make`'s `upcast`). */
  readonly upcast?: ((payload: unknown, envelope: DomainEvent.Envelope) => unknown) | undefined
}

/**
 * The services a decider's `decide`s require.
 *
 * @since 0.1.0
 * @category models
 */
export type DecisionsContext<D> = {
  readonly [K in keyof D]: D[K] extends (...args: ReadonlyArray<any>) => Effect.Effect<any, any, infer R> ? R : never
}[keyof D]

/**
 * Types a decider: its commands' classes give `decide`'s keys and each
 * command's failures, its events' classes the events `evolve` and `decide`
 * deal in. A `decide` that fails with an error its command does not declare,
 * or returns an event not listed, does not compile.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <
  const Cs extends ReadonlyArray<Command.AnyClass>,
  const Es extends ReadonlyArray<EventClass<any>>,
  S,
  D extends Decisions<InstanceType<Cs[number]>, NoInfer<S>, Schema.Schema.Type<Es[number]>, any>
>(options: {
  readonly aggregateType: string
  readonly commands: Cs
  readonly events: Es
  readonly initialState: S
  readonly evolve: (state: NoInfer<S>, event: Schema.Schema.Type<Es[number]>) => NoInfer<S>
  readonly decide: D & { readonly [K in Exclude<keyof D, InstanceType<Cs[number]>["_tag"]>]: never }
  /**
   * Rewrites a stored payload before it is decoded, as `Reaction.make`'s
   * `upcast` does: events written by an earlier version of an event's schema
   * (a field renamed, say) decode with the current one, and the stream they
   * are in folds. Given the payload as stored (its `_tag`, the event's type,
   * included) and its envelope; one that throws leaves the event undecodable
   * (a defect naming it). Additions with defaults need none:
   * `Schema.optionalWith(..., { default })`.
   */
  readonly upcast?: (payload: unknown, envelope: DomainEvent.Envelope) => unknown
}): Decider<InstanceType<Cs[number]>, S, Schema.Schema.Type<Es[number]>, DecisionsContext<D>> => ({
  aggregateType: options.aggregateType,
  events: options.events,
  initialState: options.initialState,
  evolve: options.evolve,
  upcast: options.upcast,
  decide: options.decide as unknown as Decisions<
    InstanceType<Cs[number]>,
    S,
    Schema.Schema.Type<Es[number]>,
    DecisionsContext<D>
  >
})

/**
 * @since 0.1.0
 * @category models
 */
export interface HandlerOptions<Cmd extends Command.Any, C extends Command.Any, S, Ev extends DomainEvent.Any, R> {
  readonly decider: Decider<C, S, Ev, R>
  /** The aggregate the command is for: its stream's id. */
  readonly aggregateId: (command: Cmd) => string
  /**
   * The command's success value, given the state after its new events, those
   * events, and the stream's version after them.
   */
  readonly success: (state: S, events: ReadonlyArray<Ev>, version: number) => Command.Success<Cmd>
}

// What `handler` refuses, by name: a command its decider does not decide,
// and one that cannot fail with the conflict the stream's guard raises.
type HandlerChecks<Cmd extends Command.Any, C extends Command.Any> =
  & ([Cmd] extends [C] ? unknown : { readonly "the decider has no decide for this command": Cmd["_tag"] })
  & ([ConcurrencyConflict] extends [Command.Failure<Cmd>] ? unknown
    : { readonly "the command's failure must include CommandError.ConcurrencyConflict": never })

/**
 * A bus handler of `command` from a decider: reads the aggregate's stream,
 * folds it with `evolve`, runs the command's `decide`, moves the stream's
 * version past the new events (`ConcurrencyConflict` when another dispatch
 * did first) and returns them as drafts with the versions that follow the
 * stream's last (previous + 1, + 2, ...). A stored event that decodes with
 * none of the decider's event classes is a defect. Its failures are the
 * command's own, which must include `ConcurrencyConflict`; mark it
 * `retryable` to have the `retry` middleware re-run the command on fresh
 * state. Run it in a transaction (the `transaction` middleware): the version
 * it moves then goes back if the dispatch does not commit. Outside one, a
 * version moved by a dispatch whose events then fail to append stays, and
 * the stream refuses every later dispatch with `ConcurrencyConflict`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const handler = <
  Cls extends Command.AnyClass,
  C extends Command.Any,
  S,
  Ev extends DomainEvent.Any,
  R
>(
  command: Cls,
  options: HandlerOptions<InstanceType<Cls>, C, S, Ev, R> & HandlerChecks<InstanceType<Cls>, C>
): Handler.Handler<InstanceType<Cls>, R | EventStore> => {
  const { aggregateId, decider, success } = options
  const decide = (decider.decide as unknown as Record<string, Decide<S, Ev, R>>)[command._tag]
  const decodeStream = streamDecoder(decider)
  return (instance) =>
    Effect.flatMap(EventStore, (store) => {
      const stream: StreamId = { aggregateType: decider.aggregateType, aggregateId: aggregateId(instance) }
      // Text a database cannot store: the SQL store's read would die on it
      // with the driver's encoding error, the in-memory one take it. Both
      // refuse it alike, saying where to refuse it.
      if (!Command.isStorableText(stream.aggregateId)) return Effect.dieMessage(unstorableId(command._tag))
      return Effect.flatMap(store.read(stream), (stored) => {
        const folded = decodeStream(stream, stored)
        if (Either.isLeft(folded)) return Effect.dieMessage(folded.left)
        const { state, version } = folded.right
        if (decide === undefined) return Effect.dieMessage(`EventSourced: no decide for ${command._tag}`)
        return Effect.flatMap(decide(instance, state), (events) => {
          const next = version + events.length
          let after = state
          const drafts: Array<DomainEvent.Draft> = []
          for (const event of events) {
            after = decider.evolve(after, event)
            drafts.push(DomainEvent.draft({ ...stream, aggregateVersion: version + drafts.length + 1 }, event))
          }
          const result = Effect.sync(() => Handler.result(success(after, events, next), drafts))
          return events.length === 0 ? result : Effect.zipRight(store.advance(stream, version, next), result)
        })
      }).pipe(
        Tracing.withSpan("EventSourced.handle", {
          attributes: { "aggregate.type": stream.aggregateType, "aggregate.id": stream.aggregateId }
        })
      )
    }) as Effect.Effect<
      Handler.Result<Command.Success<InstanceType<Cls>>>,
      Command.Failure<InstanceType<Cls>>,
      R | EventStore
    >
}

const unstorableId = (tag: string) =>
  `EventSourced: the aggregate id of ${tag} is a string with a NUL character or a lone surrogate, which a ` +
  `database does not store: refuse such text in the command's schema (Command.Text)`

type Decide<S, Ev, R> = (command: Command.Any, state: S) => Effect.Effect<ReadonlyArray<Ev>, unknown, R>

/**
 * Folds a stream's stored events into the decider's state, with the
 * stream's version (its last event's; 0 for none): a message saying which
 * event did not decode, and why, when one does not.
 *
 * @since 0.1.0
 * @category utils
 */
export const fold = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>,
  stream: StreamId,
  stored: ReadonlyArray<DomainEvent.Envelope>
): Either.Either<{ readonly state: S; readonly version: number }, string> => streamDecoder(decider)(stream, stored)

const decoders = new WeakMap<
  object,
  (stream: StreamId, stored: ReadonlyArray<DomainEvent.Envelope>) => Either.Either<
    { readonly state: any; readonly version: number },
    string
  >
>()

const streamDecoder = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>
): (
  stream: StreamId,
  stored: ReadonlyArray<DomainEvent.Envelope>
) => Either.Either<{ readonly state: S; readonly version: number }, string> => {
  const known = decoders.get(decider)
  if (known !== undefined) return known
  const byType = new Map<string, (input: unknown) => Either.Either<unknown, ParseResult.ParseError>>()
  for (const event of decider.events) byType.set(event._tag, Schema.decodeUnknownEither(event))
  const listed = [...byType.keys()].join(", ")
  const upcast = decider.upcast
  const decode = (stream: StreamId, stored: ReadonlyArray<DomainEvent.Envelope>) => {
    let state = decider.initialState
    let version = 0
    for (const envelope of stored) {
      const where = `EventSourced: ${stream.aggregateType} ${JSON.stringify(stream.aggregateId)}: ` +
        `its stored event ${envelope.type} at version ${envelope.aggregateVersion} (event id ${envelope.eventId})`
      const decodeOne = byType.get(envelope.type)
      if (decodeOne === undefined) {
        return Either.left(`${where} is of none of the decider's event types (${listed})`)
      }
      let payload = envelope.payload
      if (upcast !== undefined) {
        try {
          payload = upcast(envelope.payload, envelope)
        } catch (error) {
          return Either.left(`${where} does not decode: its upcast threw ${String(error)}`)
        }
      }
      let decoded: Either.Either<unknown, ParseResult.ParseError>
      try {
        decoded = decodeOne(payloadOf(envelope, payload))
      } catch (error) {
        // A schema's transformation that throws: undecodable all the same.
        return Either.left(`${where} does not decode: its schema threw ${String(error)}`)
      }
      if (Either.isLeft(decoded)) return Either.left(`${where} does not decode: ${decoded.left.message}`)
      state = decider.evolve(state, decoded.right as Ev)
      version = envelope.aggregateVersion
    }
    return Either.right({ state, version })
  }
  decoders.set(decider, decode)
  return decode
}

// A payload is the event's encoded fields; its tag is the envelope's type.
const payloadOf = (envelope: DomainEvent.Envelope, payload: unknown): unknown =>
  typeof payload === "object" && payload !== null ? { ...payload, _tag: envelope.type } : payload

/**
 * Appends a prior event to its aggregate's stream, at the version after the
 * stream's last, outside any dispatch: for `Specification.make`'s `evolve`,
 * so that `given(event)` takes the decider's events and a scenario starts
 * from its history.
 *
 * ```ts
 * Specification.make({ bus, layer: InMemory.layer, evolve: EventSourced.given(Counter, (e) => e.counterId) })
 * ```
 *
 * @since 0.1.0
 * @category testing
 */
export const given = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>,
  aggregateId: (event: Ev) => string
) =>
(event: Ev): Effect.Effect<void, never, EventStore | Outbox> =>
  Effect.gen(function*() {
    const store = yield* EventStore
    const outbox = yield* Outbox
    const stream: StreamId = { aggregateType: decider.aggregateType, aggregateId: aggregateId(event) }
    const stored = yield* store.read(stream)
    const version = stored.length === 0 ? 0 : stored[stored.length - 1]!.aggregateVersion
    yield* Effect.orDie(store.advance(stream, version, version + 1))
    const metadata: Command.Metadata = {
      commandId: randomUUID(),
      correlationId: randomUUID(),
      timestamp: yield* DateTime.now
    }
    const envelopes = yield* DomainEvent.stamp(metadata, [
      DomainEvent.draft({ ...stream, aggregateVersion: version + 1 }, event)
    ])
    yield* Effect.orDie(outbox.append(envelopes))
  })
