import * as Duration from "effect/Duration"

/**
 * A list's page size as the stores take it: a whole number from 0 up, the
 * default when none (or no number) is given, so a negative or fractional
 * limit means the same in memory (`slice`) and in SQL (`LIMIT`, which
 * refuses a negative one).
 *
 * @internal
 */
export const pageSize = (limit: number | undefined, fallback = 100): number =>
  limit === undefined || Number.isNaN(limit) ? fallback : Math.max(0, Math.min(Math.floor(limit), 2 ** 31 - 1))

/**
 * The longest delay Node's timers take: a longer one fires at once.
 *
 * @internal
 */
export const maxTimerMillis = 2 ** 31 - 1

/**
 * The longest a store keeps a time for: 100 years. PostgreSQL's timestamps
 * end in the year 294276 and its intervals refuse an infinite one, so a
 * longer retention, lease or delay (`Duration.infinity` too) counts as this
 * long, in every store alike.
 *
 * @internal
 */
export const maxStoredMillis = 36_500 * 24 * 3600 * 1000

/**
 * A duration as the stores keep it: whole milliseconds, from 0 up to
 * `maxStoredMillis`.
 *
 * @internal
 */
export const storedMillis = (duration: Duration.Duration): number =>
  Math.max(0, Math.min(Math.round(Duration.toMillis(duration)), maxStoredMillis))

/**
 * A duration as the stores keep it (`storedMillis`), as a `Duration`.
 *
 * @internal
 */
export const storedDuration = (duration: Duration.DurationInput): Duration.Duration =>
  Duration.millis(storedMillis(Duration.decode(duration)))

/**
 * The earliest time the stores keep, the first of January of the year 1:
 * PostgreSQL's timestamps start in 4713 BC, JavaScript's earlier. Anything
 * before it is due at once either way.
 *
 * @internal
 */
export const minStoredEpochMillis = new Date("0001-01-01T00:00:00Z").getTime()
