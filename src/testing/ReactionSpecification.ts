/**
 * Given/when/then specifications for reactions, in the manner of Axon's saga
 * test fixture and Emmett's test kits: given prior events (or any setup),
 * when an event is committed, then these follow-up commands, nothing, this
 * typed failure, or this state.
 *
 * ```ts
 * const spec = ReactionSpecification.make({ reactions: [pay] })
 *
 * it.effect("pays for an order placed", () =>
 *   spec.when(new OrderPlaced({ orderId: "o-1", amount: 5 }))
 *     .then(new TakePayment({ orderId: "o-1", amount: 5 })))
 * ```
 *
 * The commands a `Reaction.dispatch` reaction sends are recorded, not run:
 * no handler, bus or event publisher is needed, and each succeeds, unless
 * `respond` answers it otherwise (a declared failure, to see what the
 * reaction does then). Given `bus`, they run on it too. Each reaction runs
 * once per event, in the order given, without the retries of `start` and
 * `follow` (and so without waiting: it runs as it is under `it.effect`'s
 * `TestClock`).
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as ParseResult from "effect/ParseResult"
import { randomUUID } from "node:crypto"
import * as Command from "../Command.js"
import type * as CommandBus from "../CommandBus.js"
import * as DomainEvent from "../DomainEvent.js"
import { currentInterceptor, type FollowUpDispatch, type Interceptor } from "../internal/dispatching.js"
import type * as Reaction from "../Reaction.js"
import { describe, shown } from "./internal/shown.js"
import { type BusContext, SpecificationFailed } from "./Specification.js"

export {
  /**
   * A specification that did not hold; its message says what differed. The
   * same class as `Specification.SpecificationFailed`.
   *
   * @since 0.1.0
   * @category errors
   */
  SpecificationFailed
}

/**
 * An event as a scenario takes it: a domain event (stamped as the bus would,
 * with fresh ids, a correlation of its own and the aggregate
 * `Specification`), a draft (the aggregate given), or an envelope as stored
 * (every field given: a payload an older schema wrote, say).
 *
 * @since 0.1.0
 * @category models
 */
export type Event = DomainEvent.Any | DomainEvent.Draft | DomainEvent.Envelope

/**
 * What a scenario starts from: an event, run through the reactions (what
 * they send is not part of `then`; a failure fails the scenario), or any
 * effect that sets up state.
 *
 * @since 0.1.0
 * @category models
 */
export type Given<R> = Event | Effect.Effect<unknown, unknown, R>

/**
 * The commands a reaction may send: what its `toCommand` returns, for a
 * `Reaction.dispatch` reaction; none for a `Reaction.make` one. Of a union
 * of reactions, all of theirs.
 *
 * @since 0.1.0
 * @category models
 */
export type Dispatched<A> = A extends Reaction.Dispatching<infer Cmd, infer _E, infer _R> ? Cmd : never

/**
 * What a reaction may fail with as a scenario runs it: its own errors (a
 * `dispatch` reaction's are its command's, the bus's middleware's and
 * `StoreUnavailable`), or `Undecodable` for a payload its schema does not
 * decode. (`Parked` comes of `follow`'s dead letters, which a scenario has
 * none of.)
 *
 * @since 0.1.0
 * @category models
 */
export type Failure<A> = (A extends Reaction.Reaction<infer E, infer _R> ? E : never) | Reaction.Undecodable

/**
 * The services a scenario needs: those of the `Reaction.make` reactions (a
 * `dispatch` reaction's commands are recorded, so its bus's are not), and,
 * given a bus to run the commands on, that bus's.
 *
 * @since 0.1.0
 * @category models
 */
export type Needs<A, B> =
  | (A extends Reaction.Dispatching<any, any, any> ? never : Reaction.Requirements<A>)
  | BusContext<B>

/**
 * How a recorded command is answered, by its tag: with what the command
 * declares, its success or one of its failures. The failure is then the
 * reaction's (as from a bus), for it to handle or fail with.
 *
 * @since 0.1.0
 * @category models
 */
export type Responses<Cmd extends Command.Any, R = never> = [Cmd] extends [never]
  // No command to answer; as `{}` this would take any answer without a word.
  ? { readonly [tag: string]: never }
  : {
    readonly [Tag in Cmd["_tag"]]?: (
      command: Extract<Cmd, { readonly _tag: Tag }>
    ) => Effect.Effect<
      Command.Success<Extract<Cmd, { readonly _tag: Tag }>>,
      Command.Failure<Extract<Cmd, { readonly _tag: Tag }>>,
      R
    >
  }

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Rs extends ReadonlyArray<Reaction.Any>, B extends CommandBus.Any, R = never> {
  /** The reactions under test; those of an event's type run in this order. */
  readonly reactions: Rs
  /**
   * A bus to run the commands the reactions send on, after they are
   * recorded: a command's failure is then the reaction's, and its handler's
   * effects are there for `then`'s checks. The events it commits are not
   * run through the reactions. Default: none, the commands are only
   * recorded, and succeed.
   */
  readonly bus?: B
  /**
   * Answers to the recorded commands of these tags, in place of running
   * them (on `bus`, if given) or of succeeding: `{ TakePayment: () =>
   * Effect.fail(new CardDeclined(...)) }` sees what the reactions do when
   * their command fails. Run for each such command, in the reacting fiber,
   * with the layer's services. The command is recorded all the same.
   */
  readonly respond?: Responses<Dispatched<NoInfer<Rs>[number]>, NoInfer<R>>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface OptionsWithLayer<Rs extends ReadonlyArray<Reaction.Any>, R, LE, B extends CommandBus.Any>
  extends Options<Rs, B, R>
{
  /**
   * The services the reactions (and `given`'s and `then`'s effects) need,
   * built fresh for each scenario.
   */
  readonly layer: Layer.Layer<R, LE>
}

/**
 * Nothing when the layer provides every service a scenario needs (see
 * `Needs`) and the bus, if given, handles every command the reactions may
 * send; else a property named after the gap, so that `make` does not
 * compile.
 *
 * @since 0.1.0
 * @category models
 */
export type Covers<Rs extends ReadonlyArray<Reaction.Any>, R, B> =
  & {
    readonly [
      K in [Exclude<Needs<Rs[number], B>, R>] extends [never] ? never
        : 0 extends (1 & Needs<Rs[number], B>) ? never
        : "the layer does not provide these services of the reactions"
    ]: Exclude<Needs<Rs[number], B>, R>
  }
  & {
    readonly [
      K in [B] extends [never] ? never
        : [Exclude<Dispatched<Rs[number]>, CommandBus.Commands<B>>] extends [never] ? never
        : "the bus does not handle these commands of the reactions"
    ]: Exclude<Dispatched<Rs[number]>, CommandBus.Commands<B>>
  }

/**
 * @since 0.1.0
 * @category models
 */
export interface ReactionSpecification<Cmd extends Command.Any, E, R> {
  readonly given: (...steps: ReadonlyArray<Given<R>>) => When<Cmd, E, R>
  readonly when: When<Cmd, E, R>["when"]
}

/**
 * @since 0.1.0
 * @category models
 */
export interface When<Cmd extends Command.Any, E, R> {
  /** The events committed, in order: each runs through the reactions of its type. */
  readonly when: (events: Event | ReadonlyArray<Event>) => Then<Cmd, E, R>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Then<Cmd extends Command.Any, E, R> {
  /**
   * No reaction fails, and they send exactly these commands, in order:
   * compared by tag, payload and `userId` (not the ids and time each is
   * made with),
   * and each must carry its follow-up: the event's correlation id, the
   * event's id as causation id (`Command.causedBy`), and the idempotency key
   * `dispatch` gave it. Effects among them are checks, run afterwards with
   * the layer's services (a failure of one fails the specification): for the
   * state a `Reaction.make` reaction leaves.
   */
  readonly then: (
    ...expected: ReadonlyArray<Cmd | Effect.Effect<unknown, unknown, R>>
  ) => Effect.Effect<void, SpecificationFailed>
  /** No reaction fails, and none sends a command. */
  readonly thenNothing: () => Effect.Effect<void, SpecificationFailed>
  /**
   * The reactions fail with exactly these errors, in the order they ran (the
   * commands the others send are not checked). An error's class stands for
   * any error of it: `Reaction.Undecodable`, whose reason is the parser's.
   */
  readonly thenFails: (
    error: Expected<E>,
    ...more: ReadonlyArray<Expected<E>>
  ) => Effect.Effect<void, SpecificationFailed>
}

/**
 * An error a reaction may fail with, or its class.
 *
 * @since 0.1.0
 * @category models
 */
export type Expected<E> = E | (abstract new(...args: ReadonlyArray<any>) => E)

/**
 * A specification of `reactions`; with a `layer` of the services they need
 * (built fresh for each scenario; without one, none). A layer that misses
 * one, or a bus that does not handle a command the reactions send, does not
 * compile.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: {
  <const Rs extends ReadonlyArray<Reaction.Any>, B extends CommandBus.Any = never>(
    options: Options<Rs, B> & Covers<Rs, never, NoInfer<B>>
  ): ReactionSpecification<Dispatched<Rs[number]>, Failure<Rs[number]>, never>
  // No defaults here: a default for the layer's services would be what the
  // compiler infers them as from a layer built in place (`Layer.succeed`).
  <const Rs extends ReadonlyArray<Reaction.Any>, R, LE, B extends CommandBus.Any = never>(
    options: OptionsWithLayer<Rs, R, LE, B> & Covers<Rs, NoInfer<R>, NoInfer<B>>
  ): ReactionSpecification<Dispatched<Rs[number]>, Failure<Rs[number]>, R>
} = (options: Untyped<any>) => {
  const given = (...steps: ReadonlyArray<Given<any>>): When<Command.Any, unknown, any> => ({
    when: (events) => scenario(options, steps, isEventList(events) ? events : [events])
  })
  return { given, when: given().when }
}

const isEventList = (events: Event | ReadonlyArray<Event>): events is ReadonlyArray<Event> => Array.isArray(events)

interface Failed {
  readonly reaction: string
  readonly envelope: DomainEvent.Envelope
  readonly cause: Cause.Cause<unknown>
}

interface Outcome {
  readonly sent: ReadonlyArray<FollowUpDispatch>
  readonly failures: ReadonlyArray<Failed>
}

// The options as a scenario runs them, once `make`'s types have checked them.
interface Untyped<R> {
  readonly reactions: ReadonlyArray<Reaction.Any>
  readonly bus?: CommandBus.Any | undefined
  readonly respond?:
    | { readonly [tag: string]: ((command: any) => Effect.Effect<unknown, unknown, R>) | undefined }
    | undefined
  readonly layer?: Layer.Layer<R, unknown> | undefined
}

const scenario = <R>(
  options: Untyped<R>,
  steps: ReadonlyArray<Given<R>>,
  events: ReadonlyArray<Event>
): Then<Command.Any, unknown, R> => {
  const bus = options.bus
  const respond = options.respond
  const misnamed = duplicateName(options.reactions)
  const react = (envelope: DomainEvent.Envelope) =>
    Effect.gen(function*() {
      const failures: Array<Failed> = []
      for (const reaction of options.reactions) {
        if (reaction.eventType !== envelope.type) continue
        // A `handle` that throws (one written by hand) is this reaction's defect.
        const exit = yield* Effect.exit(Effect.suspend(() => reaction.handle(envelope)))
        if (Exit.isFailure(exit)) failures.push({ reaction: reaction.name, envelope, cause: exit.cause })
      }
      return failures
    })

  const setUp = (step: Given<R>, envelopeOf: (event: Event) => Effect.Effect<DomainEvent.Envelope>) => {
    if (Effect.isEffect(step)) {
      return Effect.mapError(
        Effect.asVoid(step),
        (error) => new SpecificationFailed({ message: `setting up the scenario failed: ${describe(error)}` })
      )
    }
    return Effect.flatMap(
      Effect.flatMap(envelopeOf(step), react),
      (failures) =>
        failures.length === 0 ? Effect.void : fail(`given ${failures[0]!.envelope.type}: ${failed(failures)}`)
    )
  }

  const run = (verify: (outcome: Outcome) => Effect.Effect<void, SpecificationFailed, R>) =>
    Effect.gen(function*() {
      if (misnamed !== undefined) return yield* fail(misnamed)
      const sent: Array<FollowUpDispatch> = []
      const intercept: Interceptor = (dispatch) =>
        Effect.suspend(() => {
          sent.push(dispatch)
          // Own keys only: a command tagged `toString` is not answered by Object's.
          const answer = respond !== undefined && Object.hasOwn(respond, dispatch.command._tag)
            ? respond[dispatch.command._tag]
            : undefined
          if (answer !== undefined) return answer(dispatch.command)
          return bus === undefined ? Effect.void : bus.dispatch(dispatch.command)
        })
      const envelopeOf = stamper()
      const outcome = yield* Effect.locally(
        Effect.gen(function*() {
          for (const step of steps) yield* setUp(step, envelopeOf)
          sent.length = 0
          const failures: Array<Failed> = []
          for (const event of events) failures.push(...yield* Effect.flatMap(envelopeOf(event), react))
          return { sent: [...sent], failures }
        }),
        currentInterceptor,
        intercept
      )
      return yield* verify(outcome)
    }).pipe(
      Effect.provide((options.layer ?? Layer.empty) as Layer.Layer<R, unknown>),
      Effect.catchAll((error) =>
        error instanceof SpecificationFailed
          ? Effect.fail(error)
          : fail(`building the layer failed: ${describe(error)}`)
      )
    ) as Effect.Effect<void, SpecificationFailed>

  const succeeded = (outcome: Outcome) => outcome.failures.length === 0 ? Effect.void : fail(failed(outcome.failures))

  const expectCommands = (outcome: Outcome, expected: ReadonlyArray<Command.Any>) =>
    Effect.gen(function*() {
      const wanted = yield* Effect.forEach(expected, (command) => encoded(command, classOf(command)))
      const actual = yield* Effect.forEach(
        outcome.sent,
        (sent) => encoded(sent.command, sent.definition ?? classOf(sent.command))
      )
      if (Command.canonicalJson(actual) !== Command.canonicalJson(wanted)) {
        return yield* fail(`expected commands ${shown(wanted)}\n     but got ${shown(actual)}`)
      }
      for (const sent of outcome.sent) {
        const differences = unfollowed(sent)
        if (differences.length > 0) {
          return yield* fail(
            `${sent.command._tag}, sent by reaction "${sent.reaction}" on ${sent.envelope.type}, does not carry its ` +
              `follow-up (spread the FollowUp into the command): ${differences.join("; ")}`
          )
        }
      }
    })

  return {
    then: (...expected) =>
      run((outcome) =>
        Effect.gen(function*() {
          yield* succeeded(outcome)
          yield* expectCommands(outcome, expected.filter((step) => !Effect.isEffect(step)) as Array<Command.Any>)
          for (const step of expected) {
            if (!Effect.isEffect(step)) continue
            yield* Effect.mapError(step, (error) =>
              error instanceof SpecificationFailed
                ? error
                : new SpecificationFailed({ message: `a check failed: ${describe(error)}` }))
          }
        })
      ),
    thenNothing: () =>
      run((outcome) =>
        Effect.gen(function*() {
          yield* succeeded(outcome)
          if (outcome.sent.length > 0) {
            const actual = yield* Effect.forEach(
              outcome.sent,
              (sent) => encoded(sent.command, sent.definition ?? classOf(sent.command))
            )
            return yield* fail(`expected no command but got ${shown(actual)}`)
          }
        })
      ),
    thenFails: (...expected) =>
      run((outcome) => {
        const wanted = expected.map(describeExpected).join(", ")
        if (outcome.failures.length === 0) return fail(`expected failure ${wanted} but no reaction failed`)
        const actual: Array<unknown> = []
        for (const failure of outcome.failures) {
          const error = Cause.failureOption(failure.cause)
          if (Option.isNone(error)) return fail(`expected failure ${wanted} but ${failed([failure])}`)
          actual.push(error.value)
        }
        const matches = actual.length === expected.length && actual.every((error, i) => {
          const wanted = expected[i]
          return typeof wanted === "function"
            ? error instanceof wanted
            : Command.canonicalJson(error) === Command.canonicalJson(wanted)
        })
        return matches ? Effect.void : fail(
          `expected failure ${wanted}\n     but got ${
            outcome.failures.map((failure, i) => `${describe(actual[i])} (reaction "${failure.reaction}")`).join(", ")
          }`
        )
      })
  }
}

// Envelopes for the events of one run of a scenario: one aggregate's,
// numbered in order, unless they say otherwise.
const stamper = () => {
  const aggregateId = randomUUID()
  let version = 0
  return (event: Event): Effect.Effect<DomainEvent.Envelope> => {
    if (event instanceof DomainEvent.Envelope) return Effect.succeed(event)
    const draft = "_tag" in event
      ? DomainEvent.draft({ aggregateType: "Specification", aggregateId, aggregateVersion: ++version }, event)
      : event
    // Each event as its own command's: a follow-up that carries another
    // event's correlation is told apart.
    return Effect.flatMap(DateTime.now, (timestamp) =>
      Effect.map(
        DomainEvent.stamp({ commandId: randomUUID(), correlationId: randomUUID(), timestamp }, [draft]),
        (stamped) => stamped[0]!
      ))
  }
}

// Two reactions of one name would share their idempotency keys: `start` and
// `follow` refuse such a list, and so does a specification.
const duplicateName = (reactions: ReadonlyArray<Reaction.Any>): string | undefined => {
  const names = new Set<string>()
  for (const reaction of reactions) {
    if (names.has(reaction.name)) {
      return `two reactions are named "${reaction.name}"; give each its own name (the \`name\` option)`
    }
    names.add(reaction.name)
  }
  return undefined
}

const classOf = (command: Command.Any) => command.constructor as Command.AnyClass

// A command as it is compared: its tag, its payload, encoded, and the user
// it acts for (what authorization checks), without the ids and time it was
// made with (nor its tag twice).
const encoded = (command: Command.Any, definition: Command.AnyClass) =>
  Effect.map(
    Command.encodePayload(definition, command),
    ({ _tag: _, ...payload }) => ({
      type: command._tag,
      payload,
      ...(command.userId === undefined ? {} : { userId: command.userId })
    })
  ).pipe(
    Effect.catchAll((error: ParseResult.ParseError) =>
      fail(`${command._tag} does not encode with its schema: ${error.message}`)
    )
  )

// How a sent command's metadata differs from what its event gave it.
const unfollowed = (sent: FollowUpDispatch): Array<string> => {
  const { causationId, correlationId } = Command.causedBy(sent.envelope)
  const { command } = sent
  const differences: Array<string> = []
  if (command.correlationId !== correlationId) {
    differences.push(`correlationId ${command.correlationId}, not the event's ${correlationId}`)
  }
  if (command.causationId !== causationId) {
    differences.push(`causationId ${command.causationId ?? "none"}, not the event's id ${causationId}`)
  }
  if (command.idempotencyKey !== sent.followUp.idempotencyKey) {
    differences.push(`idempotencyKey ${command.idempotencyKey ?? "none"}, not ${sent.followUp.idempotencyKey}`)
  }
  return differences
}

const failed = (failures: ReadonlyArray<Failed>): string =>
  failures.map((failure) => {
    const error = Cause.failureOption(failure.cause)
    const what = Option.isSome(error) ? `failed with ${describe(error.value)}` : `died: ${Cause.pretty(failure.cause)}`
    return `reaction "${failure.reaction}" on ${failure.envelope.type} ${what}`
  }).join("\n")

const describeExpected = (expected: unknown): string =>
  typeof expected === "function" ? `any ${expected.name}` : describe(expected)

const fail = (message: string) => Effect.fail(new SpecificationFailed({ message }))
