/**
 * Given/when/then specifications for handlers, in the manner of Emmett's
 * `DeciderSpecification`: given prior events, state or commands, when a
 * command is dispatched, then these events, or then this typed failure.
 *
 * ```ts
 * const spec = Specification.make({ bus, layer: TestWorld })
 *
 * it.effect("cancels", () =>
 *   spec.given(new OrderCreated({ ... }))
 *     .when(new CancelOrder({ ... }))
 *     .then(new OrderCancelled({ ... })))
 * ```
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Command from "../Command.js"
import type * as CommandBus from "../CommandBus.js"
import * as DomainEvent from "../DomainEvent.js"
import { Outbox } from "../Outbox.js"
import * as UnitOfWork from "../UnitOfWork.js"
import { describe, shown } from "./internal/shown.js"

/**
 * A specification that did not hold; its message says what differed.
 *
 * @since 0.1.0
 * @category errors
 */
export class SpecificationFailed extends Schema.TaggedError<SpecificationFailed>()("SpecificationFailed", {
  message: Schema.String
}) {}

/**
 * What a scenario starts from: a domain event of those `evolve` takes
 * (applied with it), a command of the bus (dispatched; it must succeed), or
 * any effect that sets up state.
 *
 * @since 0.1.0
 * @category models
 */
export type Given<B extends CommandBus.Any, R, Ev extends DomainEvent.Any = DomainEvent.Any> =
  | Ev
  | CommandBus.Commands<B>
  | Effect.Effect<unknown, unknown, R>

/**
 * The services dispatching any command of the bus `B` requires.
 *
 * @since 0.1.0
 * @category models
 */
export type BusContext<B> = B extends CommandBus.CommandBus<infer C, infer H, infer _E, infer R>
  ? CommandBus.Requirements<H, C["_tag"], R>
  : never

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<B extends CommandBus.Any, R, LE, Ev extends DomainEvent.Any = DomainEvent.Any> {
  readonly bus: B
  /**
   * Everything the bus needs, built fresh for each scenario: in memory or on
   * a database (the events checked are the ones the command's transaction
   * committed, published or not).
   */
  readonly layer: Layer.Layer<R, LE>
  /**
   * Applies a prior event to the stores, for `given(event)`. The events its
   * parameter names (`(event: OrderCreated | OrderCancelled) => ...`) are
   * the ones `given` takes; without `evolve`, `given` takes none.
   */
  readonly evolve?: (event: Ev) => Effect.Effect<void, never, NoInfer<R>>
}

/**
 * Nothing when the layer provides every service the bus needs; else a
 * property named after the gap, so that `make` does not compile. A bus typed
 * `CommandBus.Any` is not checked. A helper generic over its bus type cannot
 * be checked either (the compiler cannot know that bus's services yet): give
 * `make` the bus as `CommandBus.Any` there.
 *
 * @since 0.1.0
 * @category models
 */
export type Covers<B, R> = {
  readonly [
    K in [Exclude<BusContext<B>, R>] extends [never] ? never
      : 0 extends (1 & BusContext<B>) ? never
      : "the layer does not provide these services of the bus"
  ]: Exclude<BusContext<B>, R>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Specification<B extends CommandBus.Any, R, Ev extends DomainEvent.Any = DomainEvent.Any> {
  // A method, so that a specification of some events still passes for a
  // `Specification<B, R>` (of any event), as it did before `Ev`; a call
  // takes only `Ev` all the same.
  given(...steps: ReadonlyArray<Given<B, R, Ev>>): When<B>
  readonly when: When<B>["when"]
}

/**
 * @since 0.1.0
 * @category models
 */
export interface When<B extends CommandBus.Any> {
  readonly when: <C extends CommandBus.Commands<B>>(command: C) => Then<C, CommandBus.DispatchError<B, C>>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Then<C extends Command.Any, E = unknown> {
  /**
   * The command succeeds and appends exactly these events, in order (those
   * of the commands its handler dispatched included).
   */
  readonly then: (...events: ReadonlyArray<DomainEvent.Any>) => Effect.Effect<void, SpecificationFailed>
  /** The command succeeds with this value (and, optionally, these events). */
  readonly thenSucceeds: (
    value: Command.Success<C>,
    ...events: ReadonlyArray<DomainEvent.Any>
  ) => Effect.Effect<void, SpecificationFailed>
  /**
   * The command fails with this error and appends no event. The error is
   * one the bus's `dispatch` of this command may fail with: the command's
   * own, its middleware's or `StoreUnavailable`.
   */
  readonly thenFails: (error: E) => Effect.Effect<void, SpecificationFailed>
}

/**
 * A specification of `bus`, each scenario on a fresh `layer`. With `evolve`,
 * `given` takes the events its parameter names (any event, for one that
 * takes `DomainEvent.Any` or leaves its parameter to be inferred); without
 * it, none. A layer that misses a service of the bus does not compile.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: {
  // Two signatures, as one cannot tell an `evolve` left out (no event to
  // take) from one whose parameter is left to be inferred (any event, as
  // before `given` was typed by it).
  <B extends CommandBus.Any, R, LE, Ev extends DomainEvent.Any = DomainEvent.Any>(
    options: Options<B, R, LE, Ev> & Required<Pick<Options<B, R, LE, Ev>, "evolve">> & Covers<B, R>
  ): Specification<B, R, Ev>
  <B extends CommandBus.Any, R, LE>(
    options: Options<B, R, LE, never> & { readonly evolve?: undefined } & Covers<B, R>
  ): Specification<B, R, never>
} = <B extends CommandBus.Any, R, LE>(
  options: Options<B, R, LE, never>
): Specification<B, R> => {
  const given = (...steps: ReadonlyArray<Given<B, R>>): When<B> => ({
    when: (command) => scenario(options, steps, command)
  })
  return { given, when: given().when }
}

interface Outcome {
  readonly exit: Exit.Exit<unknown, unknown>
  readonly events: ReadonlyArray<DomainEvent.Envelope>
}

const scenario = <B extends CommandBus.Any, R, LE, C extends Command.Any>(
  options: Options<B, R, LE, never>,
  steps: ReadonlyArray<Given<B, R>>,
  command: C
): Then<C> => {
  const run: Effect.Effect<Outcome, SpecificationFailed> = Effect.gen(function*() {
    const committed: Array<DomainEvent.Envelope> = []
    const exit = yield* Effect.gen(function*() {
      for (const step of steps) yield* applyStep(options, step)
      committed.length = 0
      return yield* Effect.exit(options.bus.dispatch(command) as Effect.Effect<unknown, unknown, R>)
    }).pipe(Effect.provide(recording(committed)))
    return { exit, events: [...committed] }
  }).pipe(
    Effect.catchAll((error) => fail(`setting up the scenario failed: ${describe(error)}`)),
    Effect.provide(options.layer as Layer.Layer<R | Outbox, LE>),
    Effect.catchAll((error) =>
      error instanceof SpecificationFailed ? Effect.fail(error) : fail(`building the layer failed: ${describe(error)}`)
    )
  ) as Effect.Effect<Outcome, SpecificationFailed>

  const expectEvents = (outcome: Outcome, expected: ReadonlyArray<DomainEvent.Any>) =>
    Effect.gen(function*() {
      const expectedEncoded = yield* Effect.forEach(expected, (event) =>
        Effect.map(DomainEvent.encode(event), (payload) => ({ type: event._tag, payload })))
      const actual = outcome.events.map((event) => ({ type: event.type, payload: event.payload }))
      if (Command.canonicalJson(actual) !== Command.canonicalJson(expectedEncoded)) {
        return yield* fail(
          `expected events ${shown(expectedEncoded)}\n     but got ${shown(actual)}`
        )
      }
      // The bus stamps a dispatch's events with its command's id as their
      // causation: those of a command the handler dispatched carry that
      // command's, and, given `Command.causedBy(command)`, this correlation.
      for (const event of outcome.events) {
        if (event.correlationId !== command.correlationId) {
          return yield* fail(
            `event ${event.type} carries correlation id ${event.correlationId}, not the command's ` +
              `${command.correlationId} (a command the handler dispatches takes it with Command.causedBy)`
          )
        }
      }
    })

  const expectSuccess = (outcome: Outcome) =>
    Exit.isSuccess(outcome.exit)
      ? Effect.succeed(outcome.exit.value)
      : fail(`expected success but the command failed: ${Cause.pretty(outcome.exit.cause)}`)

  return {
    then: (...events) =>
      Effect.flatMap(run, (outcome) => Effect.zipRight(expectSuccess(outcome), expectEvents(outcome, events))),
    thenSucceeds: (value, ...events) =>
      Effect.flatMap(
        run,
        (outcome) =>
          Effect.flatMap(expectSuccess(outcome), (actual) =>
            Command.canonicalJson(actual) === Command.canonicalJson(value)
              ? expectEvents(outcome, events)
              : fail(`expected ${shown(value)}\n     but got ${shown(actual)}`))
      ),
    thenFails: (expected) =>
      Effect.flatMap(run, (outcome) => {
        if (Exit.isSuccess(outcome.exit)) {
          return fail(`expected failure ${describe(expected)} but the command succeeded`)
        }
        const failure = Cause.failureOption(outcome.exit.cause)
        if (Option.isNone(failure)) return fail(`expected failure but got ${Cause.pretty(outcome.exit.cause)}`)
        if (Command.canonicalJson(failure.value) !== Command.canonicalJson(expected)) {
          return fail(`expected failure ${describe(expected)}\n     but got ${describe(failure.value)}`)
        }
        return outcome.events.length === 0
          ? Effect.void
          : fail(`a failed command appended ${outcome.events.length} event(s)`)
      })
  }
}

// The layer's outbox, noting the events of each append once they are
// committed: at the end of the transaction they were appended in (nothing
// when it rolls back, as a retried attempt's does), or at once where the
// unit of work cannot say (none, or one without `afterEnd`). A database's
// outbox reads back only what its relay published; this sees what the
// command committed.
const recording = (committed: Array<DomainEvent.Envelope>) =>
  Layer.effect(
    Outbox,
    Effect.gen(function*() {
      const outbox = yield* Outbox
      return {
        read: outbox.read,
        append: (events) =>
          Effect.zipRight(
            outbox.append(events),
            UnitOfWork.onCommit(Effect.sync(() => void committed.push(...events)))
          )
      }
    })
  )

const applyStep = <B extends CommandBus.Any, R, LE>(options: Options<B, R, LE, never>, step: Given<B, R>) => {
  if (Effect.isEffect(step)) return Effect.asVoid(step)
  const tag = (step as { readonly _tag: string })._tag
  if (options.bus.definitions.has(tag)) {
    return Effect.asVoid(options.bus.dispatch(step as Command.Any) as Effect.Effect<unknown, unknown, R>)
  }
  if (options.evolve === undefined) {
    return fail(`given(${tag}) is an event, but the specification has no evolve to apply it`)
  }
  // `make`'s types let through only the events this evolve takes.
  return options.evolve(step as never)
}

const fail = (message: string) => Effect.fail(new SpecificationFailed({ message }))
