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
