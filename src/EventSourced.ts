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
import * as Option from "effect/Option"
import type * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { createHash, randomUUID } from "node:crypto"
import * as Command from "./Command.js"
import type { ConcurrencyConflict, StoreUnavailable } from "./CommandError.js"
import * as DomainEvent from "./DomainEvent.js"
import { EventStore, type Service as EventStoreService, type Snapshots, type StreamId } from "./EventStore.js"
import * as Handler from "./Handler.js"
import * as Json from "./internal/json.js"
import { inBatches, positiveCounts } from "./internal/limit.js"
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
  /** Snapshots of its state (see `make`'s `snapshot`). */
  readonly snapshot?: SnapshotOptions<S> | undefined
}

/**
 * How a decider's state is snapshotted (`make`'s `snapshot`).
 *
 * @since 0.1.0
 * @category models
 */
export interface SnapshotOptions<S> {
  /**
   * The state's schema: a snapshot holds the state encoded by it, as JSON
   * (which has no -0: one comes back 0). A state it does not encode to
   * JSON takes no snapshot (a warning says why).
   */
  readonly state: Schema.Schema<S, any, never>
  /**
   * How many events a dispatch may fold past the snapshot it read (past the
   * stream's start, with none) before it takes a new one: a positive integer.
   */
  readonly every: number
  /**
   * Bump it whenever a state the fold made before would now be wrong: what
   * `evolve` or `upcast` computes changed, or what a transformation in the
   * state's schema computes (units to cents). The key sees the schemas'
   * structure only, not code: snapshots of another version are not read.
   * 1 when not given.
   */
  readonly version?: number | undefined
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
  /**
   * Snapshots of the state, so that a dispatch on a long stream folds only
   * the events after the latest (opt-in: without it, every dispatch folds the
   * whole stream). A dispatch that folded `every` events or more past the
   * snapshot it read saves one at its new version, in its transaction: kept
   * if the dispatch commits, with its events, and never otherwise. A
   * snapshot is read back only by a decider whose key matches: `version`
   * and the structure of the state's schema, `initialState` and the event
   * classes (not code, which no key can see: bump `version` when `evolve`,
   * `upcast` or a transformation computes otherwise); another one's is
   * ignored, the stream folded from its start and a snapshot of the new key
   * taken. So is one whose state no longer decodes, or that is ahead of the
   * stream (saved outside a transaction by a dispatch whose events were then
   * not appended). A store without snapshots (`EventStore.Service`'s are
   * optional) reads every stream whole.
   */
  readonly snapshot?: SnapshotOptions<NoInfer<S>>
}): Decider<InstanceType<Cs[number]>, S, Schema.Schema.Type<Es[number]>, DecisionsContext<D>> => ({
  aggregateType: options.aggregateType,
  events: options.events,
  initialState: options.initialState,
  evolve: options.evolve,
  upcast: options.upcast,
  snapshot: options.snapshot,
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
  const load = loader(decider)
  const snapshotting = snapshotterOf(decider)
  // `make` cannot fail: a snapshot interval that is no count fails each
  // dispatch instead, saying so (0 would snapshot every dispatch, NaN never).
  const badEvery = snapshotting !== undefined && !(Number.isSafeInteger(snapshotting.every) && snapshotting.every >= 1)
    ? `EventSourced: ${decider.aggregateType}'s snapshot.every must be a positive integer, got ${
      String(snapshotting.every)
    }`
    : undefined
  return (instance) =>
    badEvery !== undefined ? Effect.dieMessage(badEvery) : Effect.flatMap(EventStore, (store) => {
      const stream: StreamId = { aggregateType: decider.aggregateType, aggregateId: aggregateId(instance) }
      // Text a database cannot store: the SQL store's read would die on it
      // with the driver's encoding error, the in-memory one take it. Both
      // refuse it alike, saying where to refuse it.
      if (!Command.isStorableText(stream.aggregateId)) return Effect.dieMessage(unstorableId(command._tag))
      return Effect.flatMap(load(store, stream), (folded) => {
        if (Either.isLeft(folded)) return Effect.dieMessage(folded.left)
        const { from, state, version } = folded.right
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
          if (events.length === 0) return result
          const advanced = store.advance(stream, version, next)
          // Saved after the guard moved: only the dispatch that holds the
          // stream's next versions writes a snapshot at them, in its
          // transaction, so a snapshot is never of events that did not commit.
          const snapshots = store.snapshots
          return snapshotting === undefined || snapshots === undefined || next - from < snapshotting.every
            ? Effect.zipRight(advanced, result)
            : Effect.zipRight(Effect.zipRight(advanced, snapshotting.save(snapshots, stream, after, next)), result)
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

// A state and the version of the stream's last event folded into it.
interface Folded<S> {
  readonly state: S
  readonly version: number
}

type StreamDecoder<S> = (
  stream: StreamId,
  stored: ReadonlyArray<DomainEvent.Envelope>,
  start?: Folded<S>
) => Either.Either<Folded<S>, string>

const decoders = new WeakMap<object, StreamDecoder<any>>()

const streamDecoder = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>
): StreamDecoder<S> => {
  const known = decoders.get(decider)
  if (known !== undefined) return known
  const byType = new Map<string, (input: unknown) => Either.Either<unknown, ParseResult.ParseError>>()
  for (const event of decider.events) byType.set(event._tag, Schema.decodeUnknownEither(event))
  const listed = [...byType.keys()].join(", ")
  const upcast = decider.upcast
  const decode: StreamDecoder<S> = (stream, stored, start) => {
    let state = start === undefined ? decider.initialState : start.state
    let version = start === undefined ? 0 : start.version
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

// The stream's state to decide on, and the version it was folded from (a
// snapshot's; 0 from the stream's start): how many events the dispatch
// folded tells whether it takes a snapshot.
type Loaded<S> = Either.Either<Folded<S> & { readonly from: number }, string>

type Loader<S> = (store: EventStoreService, stream: StreamId) => Effect.Effect<Loaded<S>>

const loader = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>
): Loader<S> => {
  const decode = streamDecoder(decider)
  const whole: Loader<S> = (store, stream) =>
    Effect.map(store.read(stream), (stored) => Either.map(decode(stream, stored), (folded) => ({ ...folded, from: 0 })))
  const snapshotting = snapshotterOf(decider)
  if (snapshotting === undefined) return whole
  return (store, stream) => {
    const snapshots = store.snapshots
    if (snapshots === undefined) return whole(store, stream)
    return Effect.flatMap(snapshots.load(stream, snapshotting.key), (found) => {
      if (Option.isNone(found)) return whole(store, stream)
      const snapshot = found.value
      const state = snapshotting.decode(snapshot.state)
      if (Either.isLeft(state)) {
        return Effect.zipRight(
          Effect.logWarning(
            `${whereIn(stream)}: its snapshot at version ${snapshot.version} does not decode, ` +
              `and is ignored (the stream folded from its start): ${state.left}`
          ),
          whole(store, stream)
        )
      }
      // From the snapshot's own event on: a stream without it is behind its
      // snapshot, which a dispatch outside a transaction leaves when its
      // events then fail to append (in one, the snapshot commits with them).
      // Folding on from it would take that dispatch's events for the stream's.
      return Effect.flatMap(store.read(stream, { after: snapshot.version - 1 }), (stored) => {
        if (!stored.some((envelope) => envelope.aggregateVersion === snapshot.version)) {
          return Effect.zipRight(
            Effect.logWarning(
              `${whereIn(stream)}: its snapshot at version ${snapshot.version} is ahead of the ` +
                `stream, and is ignored (the stream folded from its start): a dispatch outside a transaction ` +
                `saved it, and its events were not appended`
            ),
            whole(store, stream)
          )
        }
        const tail = stored.filter((envelope) => envelope.aggregateVersion > snapshot.version)
        return Effect.succeed(
          Either.map(
            decode(stream, tail, { state: state.right, version: snapshot.version }),
            (folded) => ({ ...folded, from: snapshot.version })
          )
        )
      })
    })
  }
}

interface Snapshotter<S> {
  readonly every: number
  /** The snapshots' `schemaVersion`: see `snapshotKey`. */
  readonly key: string
  readonly decode: (encoded: unknown) => Either.Either<S, string>
  readonly save: (snapshots: Snapshots, stream: StreamId, state: S, version: number) => Effect.Effect<void>
}

const snapshotters = new WeakMap<object, Snapshotter<any>>()

const snapshotterOf = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>
): Snapshotter<S> | undefined => {
  const options = decider.snapshot
  if (options === undefined) return undefined
  const known = snapshotters.get(decider)
  if (known !== undefined) return known
  const decodeState = Schema.decodeUnknownEither(options.state)
  const encodeState = Schema.encodeEither(options.state)
  const key = snapshotKey(decider, options)
  // An optimisation that cannot be taken is no reason to fail the dispatch:
  // it goes on without, saying why.
  const skip = (stream: StreamId, version: number, why: string) =>
    Effect.logWarning(`${whereIn(stream)}: no snapshot taken at version ${version}: ${why}`)
  const snapshotter: Snapshotter<S> = {
    every: options.every,
    key,
    decode: (encoded) => {
      try {
        return Either.mapLeft(decodeState(encoded), (error) => error.message)
      } catch (error) {
        return Either.left(`its schema threw ${String(error)}`)
      }
    },
    save: (snapshots, stream, state, version) => {
      let encoded: Either.Either<unknown, ParseResult.ParseError>
      try {
        encoded = encodeState(state)
      } catch (error) {
        return skip(stream, version, `the state's schema threw ${String(error)}`)
      }
      if (Either.isLeft(encoded)) return skip(stream, version, `the state does not encode: ${encoded.left.message}`)
      const found = Json.incompatibility(encoded.right)
      if (found !== undefined) return skip(stream, version, `the state, ${Json.refusal(found, "the state")}`)
      return snapshots.save(stream, { schemaVersion: key, version, state: encoded.right })
    }
  }
  snapshotters.set(decider, snapshotter)
  return snapshotter
}

// What a snapshot's state depends on, as far as data can show it: the
// structure of the state's schema, `initialState` and the event classes,
// hashed, after the version the user bumps for what code computes. Not the
// source of `evolve` or `upcast`: it is the JavaScript that runs, which a
// build changes (tsc keeps comments, esbuild minifies), so every deploy from
// a new build would fold every stream whole again; and a closure's source
// (a reducer from a factory) says nothing of what it closes over. A snapshot
// made under another key is not read: a state another schema encoded is
// never decoded by this one. A change that leaves the state as it was (a
// schema's description, an event added) costs each stream one fold from its
// start.
const snapshotKey = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>,
  options: SnapshotOptions<S>
): string => {
  let initial: unknown
  try {
    initial = Either.getOrElse(
      Schema.encodeEither(options.state)(decider.initialState),
      () => String(decider.initialState)
    )
  } catch {
    initial = String(decider.initialState)
  }
  const parts = [
    options.state.ast,
    initial,
    decider.events.map((event) => event.ast)
  ]
  let text: string
  try {
    text = JSON.stringify(parts, (_, value) => typeof value === "bigint" ? `${value}n` : value)
  } catch {
    // An annotation JSON does not take (a cycle): the schemas as they print.
    text = parts.map(String).join("\n")
  }
  return `${options.version ?? 1}:${createHash("sha256").update(text).digest("hex").slice(0, 16)}`
}

const whereIn = (stream: StreamId) => `EventSourced: ${stream.aggregateType} ${JSON.stringify(stream.aggregateId)}`

// A payload is the event's encoded fields; its tag is the envelope's type.
const payloadOf = (envelope: DomainEvent.Envelope, payload: unknown): unknown =>
  typeof payload === "object" && payload !== null ? { ...payload, _tag: envelope.type } : payload

/**
 * The `schemaVersion` a decider's snapshots are saved and read under (see
 * `make`'s `snapshot`), `undefined` for one without snapshots. Snapshots
 * under a key no decider running has are never read again, and can be
 * deleted (`pruneSnapshots`).
 *
 * @since 0.1.0
 * @category utils
 */
export const snapshotSchemaVersion = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>
): string | undefined => snapshotterOf(decider)?.key

/**
 * The event store keeps snapshots but cannot delete them (a store written
 * before `prune` came): they are kept, as they were.
 *
 * @since 0.1.0
 * @category errors
 */
export class SnapshotPruneUnsupported extends Schema.TaggedError<SnapshotPruneUnsupported>()(
  "SnapshotPruneUnsupported",
  { aggregateType: Schema.String }
) {}

/**
 * Deletes the snapshots of `decider`'s aggregate type that it no longer
 * reads: those saved under another key (`snapshotSchemaVersion`: another
 * `snapshot.version`, another state schema), or all of them for a decider
 * without snapshots; in batches of `batchSize` (default 500) until one comes
 * back short; returns how many. Run it once the deploy that changed the key
 * is complete: an instance of the previous release still running saves its
 * snapshots again, and a later run deletes those. For a type that one
 * decider handles: another decider's snapshots of the same type are
 * deleted too (and taken again by its next dispatches).
 *
 * ```ts
 * const pruned = yield* EventSourced.pruneSnapshots(Account)
 * ```
 *
 * @since 0.1.0
 * @category utils
 */
export const pruneSnapshots = <C extends Command.Any, S, Ev extends DomainEvent.Any, R>(
  decider: Decider<C, S, Ev, R>,
  options: { readonly batchSize?: number | undefined } = {}
): Effect.Effect<number, StoreUnavailable | SnapshotPruneUnsupported, EventStore> =>
  positiveCounts("EventSourced.pruneSnapshots", { batchSize: options.batchSize }, () =>
    Effect.gen(function*() {
      const { snapshots } = yield* EventStore
      // A store that keeps no snapshots has none to delete.
      if (snapshots === undefined) return 0
      if (snapshots.prune === undefined) {
        return yield* new SnapshotPruneUnsupported({ aggregateType: decider.aggregateType })
      }
      const { prune } = snapshots
      const keep = snapshotSchemaVersion(decider)
      return yield* inBatches(options.batchSize, (limit) => prune(decider.aggregateType, keep, limit))
    }).pipe(
      Effect.withSpan("EventSourced.pruneSnapshots", { attributes: { "aggregate.type": decider.aggregateType } })
    ))

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
