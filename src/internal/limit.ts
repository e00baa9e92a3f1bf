import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"

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

/**
 * Refuses, as a defect naming `where` and the option, a count option that
 * is not a positive whole number: a batch of 0 would loop without waiting,
 * a negative one fail in SQL at every turn. Checked where the caller sees
 * it, before any fiber starts.
 *
 * @internal
 */
export const positiveCounts = <A, E, R>(
  where: string,
  counts: Readonly<Record<string, number | undefined>>,
  self: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => {
  for (const [option, value] of Object.entries(counts)) {
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) {
      return Effect.dieMessage(`${where}: ${option} must be a positive integer, got ${String(value)}`)
    }
  }
  return self()
}

/**
 * Refuses, as `positiveCounts` does, a lease under 1 second: one shorter
 * than a claim and its renewal take lapses before its holder can act on it,
 * so nothing would ever run.
 *
 * @internal
 */
export const leaseOfASecond = <A, E, R>(
  where: string,
  lease: Duration.DurationInput | undefined,
  self: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  lease !== undefined && !(Duration.toMillis(Duration.decode(lease)) >= 1000)
    ? Effect.dieMessage(`${where}: lease must be at least 1 second, got ${Duration.format(lease)}`)
    : self()

/**
 * Runs `batch` with a limit of `batchSize` (default 500) until one answers
 * fewer than the limit, and answers the total: the prunes, which delete a
 * bounded batch per statement so that a large backlog holds no locks for
 * long.
 *
 * @internal
 */
export const inBatches = <E, R>(
  batchSize: number | undefined,
  batch: (limit: number) => Effect.Effect<number, E, R>
): Effect.Effect<number, E, R> =>
  Effect.gen(function*() {
    const limit = batchSize ?? 500
    let total = 0
    for (;;) {
      const done = yield* batch(limit)
      total += done
      if (done < limit) return total
    }
  })
