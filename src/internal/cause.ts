import * as Cause from "effect/Cause"
import * as Option from "effect/Option"

/** The failure of a cause, if it has one. */
export const failureOf = (cause: Cause.Cause<unknown>): unknown => Option.getOrUndefined(Cause.failureOption(cause))

/**
 * A failure as an operator reads it from a store: at most 4000 characters,
 * since a defect's stack helps and a page of it does not.
 */
export const stored = (text: string): string => text.length > 4000 ? `${text.slice(0, 3999)}…` : text
