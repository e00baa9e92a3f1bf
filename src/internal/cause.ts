import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as HashSet from "effect/HashSet"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"

/** An error's message, for a sentence that names what failed: any thrown value's. */
export const messageOf = (error: unknown): string =>
  Predicate.hasProperty(error, "message") && typeof error.message === "string" ? error.message : String(error)

/** The failure of a cause, if it has one. */
export const failureOf = (cause: Cause.Cause<unknown>): unknown => Option.getOrUndefined(Cause.failureOption(cause))

/**
 * A failure as an operator reads it from a store: at most 4000 characters,
 * since a defect's stack helps and a page of it does not, and no NUL, which
 * PostgreSQL's text refuses (so the record of a failure would fail too).
 */
export const stored = (text: string): string => {
  const clean = text.includes("\u0000") ? text.replaceAll("\u0000", "\uFFFD") : text
  return clean.length > 4000 ? `${clean.slice(0, 3999)}…` : clean
}

/**
 * Whether the current fiber was interrupted: a cause of interruption alone
 * that is not (the work joined a fiber someone interrupted, or called
 * `Effect.interrupt`) is that work's failure, not a shutdown.
 */
export const interruptedItself: Effect.Effect<boolean> = Effect.descriptorWith((descriptor) =>
  Effect.succeed(HashSet.size(descriptor.interruptors) > 0)
)

/**
 * `onFailure` for a cause, unless it is the current fiber's own interruption,
 * which goes on as it is.
 */
export const unlessInterrupted = <A, E, R>(
  cause: Cause.Cause<unknown>,
  onFailure: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Cause.isInterruptedOnly(cause)
    ? Effect.flatMap(interruptedItself, (itself) => itself ? Effect.failCause(cause as Cause.Cause<never>) : onFailure)
    : onFailure

/**
 * What a long-running loop does with a step that failed: an outage (a
 * typed failure) is logged as a warning, anything else (a statement the
 * database refused, a bug, work that ended interrupted) as an error; either
 * way the loop goes on after its wait, where a defect would have ended its
 * fiber unseen. Its own interruption ends it.
 */
export const survived = (unavailable: string, failed: string) => (cause: Cause.Cause<unknown>): Effect.Effect<void> =>
  unlessInterrupted(
    cause,
    Cause.isFailure(cause) && !Cause.isDie(cause)
      ? Effect.logWarning(unavailable, Cause.squash(cause))
      : Effect.logError(failed, cause)
  )
