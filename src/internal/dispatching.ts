import type * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import type * as Command from "../Command.js"
import type * as DomainEvent from "../DomainEvent.js"

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
