/**
 * Handlers: one `Effect`-returning function per command. A handler asks for
 * what it needs (repositories, inventory, clock) as Context tags, and its
 * error channel is exactly its command's declared failure type.
 *
 * @since 0.1.0
 */
import type * as Effect from "effect/Effect"
import type * as Command from "./Command.js"
import type * as DomainEvent from "./DomainEvent.js"

/**
 * What a handler returns: the command's success value and the events it
 * raised, which the bus stamps and appends after the handler succeeds.
 *
 * @since 0.1.0
 * @category models
 */
export interface Result<A> {
  readonly value: A
  readonly events: ReadonlyArray<DomainEvent.Draft>
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const result = <A>(value: A, events: ReadonlyArray<DomainEvent.Draft> = []): Result<A> => ({ value, events })

/**
 * A handler of command `C` that requires services `R`.
 *
 * @since 0.1.0
 * @category models
 */
export type Handler<C extends Command.Any, R = never> = (
  command: C
) => Effect.Effect<Result<Command.Success<C>>, Command.Failure<C>, R>

/**
 * The services a handler requires.
 *
 * @since 0.1.0
 * @category models
 */
export type Context<H> = H extends (command: any) => Effect.Effect<any, any, infer R> ? R : never

/**
 * Types a standalone handler against its command class, so it can be written
 * (and tested) apart from the bus that registers it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <C extends Command.AnyClass, R>(
  _command: C,
  handle: (command: InstanceType<C>) => Effect.Effect<
    Result<Command.Success<InstanceType<C>>>,
    Command.Failure<InstanceType<C>>,
    R
  >
): Handler<InstanceType<C>, R> => handle
