/**
 * Who is dispatching: the authenticated principal an edge (HTTP, a job)
 * provides. Absent, the caller is code inside the process, trusted to name the
 * user a command acts for (see `CurrentUser`).
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
 * Defaults to no principal, so dispatching without one needs no setup. With
 * none, nothing checks a command's `userId`: a trusted caller inside the
 * process (a scheduled command, a reaction) acts as the user it names, as an
 * edge that authenticated that user would. An edge that serves untrusted
 * callers must provide their principal (the HTTP server does), and then a
 * `userId` that is not theirs is `Forbidden`.
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
