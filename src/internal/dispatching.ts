import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import * as Schedule from "effect/Schedule"
import * as Command from "../Command.js"
import type * as DomainEvent from "../DomainEvent.js"
import { IdempotencyKeyInFlight } from "../Idempotency.js"

/** A follow-up command that a `Reaction.dispatch` reaction is about to send. */
export interface FollowUpDispatch {
  readonly reaction: string
  readonly envelope: DomainEvent.Envelope
  /** What the reaction handed `toCommand`, for the command to carry. */
  readonly followUp: {
    readonly correlationId: string
    readonly causationId: string
    readonly idempotencyKey: string
  }
  readonly command: Command.Any
  /** The command's class on the reaction's bus, when the bus has one of its tag. */
  readonly definition: Command.AnyClass | undefined
}

/**
 * Sends a follow-up command in place of the reaction's bus. It runs in the
 * reacting fiber, so it finds the services that fiber has.
 */
export type Interceptor = (dispatch: FollowUpDispatch) => Effect.Effect<unknown, unknown, unknown>

/**
 * The test kit's hold on `Reaction.dispatch`: a reaction captures its bus
 * when it is made, so a specification that wants to see its commands
 * without running their handlers (or to run them on another bus) cannot
 * swap the bus; it sets this around the reactions it runs instead. Unset
 * (always, outside `ReactionSpecification`), the command goes to the bus.
 */
export const currentInterceptor = globalValue(
  Symbol.for("effect-command-bus/internal/dispatching/currentInterceptor"),
  () => FiberRef.unsafeMake<Interceptor | undefined>(undefined)
)

/** What a follow-up sender needs of a bus. */
interface Bus<E, R> {
  readonly definitions: ReadonlyMap<string, Command.AnyClass>
  readonly dispatch: (command: Command.Any) => Effect.Effect<unknown, E, R>
}

/**
 * How `Reaction.dispatch` and process managers send follow-up commands: each
 * through `bus`, or the test kit's interceptor when one is set; a key still
 * in flight (the same command sent by a run that has not ended) waited out
 * every second for `inFlightWait` (default 2 minutes); and each failure
 * judged an outcome of the command or not (`isOutcome`), for the reaction's
 * `retryable`.
 */
export const followUpSender = <E, R>(bus: Bus<E, R>, inFlightWait: Duration.DurationInput | undefined) => {
  const definitions = [...bus.definitions.values()]
  const waitOut = Schedule.spaced(Duration.seconds(1)).pipe(Schedule.upTo(inFlightWait ?? "2 minutes"))
  // Whether a failure is an outcome depends on the command that failed: a
  // tag one command marks retryable may be another's outcome. Each failure
  // of a send is judged by its own command's definition and remembered; one
  // never seen, by every command of the bus.
  const outcomes = new WeakMap<object, boolean>()
  const send = (
    reaction: string,
    envelope: DomainEvent.Envelope,
    followUp: FollowUpDispatch["followUp"],
    command: Command.Any
  ): Effect.Effect<void, E, R> => {
    const definition = bus.definitions.get(command._tag)
    const sent = Effect.flatMap(FiberRef.get(currentInterceptor), (intercept) =>
      intercept === undefined
        ? bus.dispatch(command)
        : intercept({ reaction, envelope, followUp, command, definition }) as Effect.Effect<unknown, E>)
    return Effect.retry(sent, Schedule.whileInput(waitOut, (error: E) => error instanceof IdempotencyKeyInFlight)).pipe(
      Effect.asVoid,
      Effect.tapError((error) =>
        Effect.sync(() => {
          if (definition !== undefined && typeof error === "object" && error !== null) {
            outcomes.set(error, Command.isOutcome(definition, error))
          }
        })
      )
    )
  }
  const isOutcome = (error: unknown): boolean =>
    typeof error === "object" && error !== null && outcomes.has(error)
      ? outcomes.get(error)!
      : definitions.some((definition) => Command.isOutcome(definition, error))
  return { send, isOutcome }
}
