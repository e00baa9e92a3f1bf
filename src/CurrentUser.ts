/**
 * Who is dispatching: the authenticated principal an edge (HTTP, a job)
 * provides. Absent means anonymous; authorization decides what that may do.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Option from "effect/Option"

/**
 * @since 0.1.0
 * @category models
 */
export interface Principal {
  readonly userId: string
  readonly roles: ReadonlyArray<string>
}

/**
 * Defaults to no principal, so dispatching without one needs no setup and
 * gets only what anonymous callers may do.
 *
 * @since 0.1.0
 * @category tags
 */
export class CurrentUser extends Context.Reference<CurrentUser>()("effect-command-bus/CurrentUser", {
  defaultValue: (): Option.Option<Principal> => Option.none()
}) {}

/**
 * @since 0.1.0
 * @category predicates
 */
export const hasRole = (principal: Option.Option<Principal>, role: string): boolean =>
  Option.isSome(principal) && principal.value.roles.includes(role)

/**
 * Runs `self` as the given principal.
 *
 * @since 0.1.0
 * @category combinators
 */
export const as: {
  (principal: Principal): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, principal: Principal): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, principal: Principal): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentUser, Option.some(principal))
)
