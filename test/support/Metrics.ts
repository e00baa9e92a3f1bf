/**
 * Reading the process's metrics in tests.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"

/**
 * The count (and sum, for histograms) of the metric with exactly these tags;
 * zeros when it was never updated.
 */
export const read = (name: string, tags: Readonly<Record<string, string>>) =>
  Effect.map(Metric.snapshot, (pairs) => {
    const pair = pairs.find((pair) =>
      pair.metricKey.name === name &&
      pair.metricKey.tags.length === Object.keys(tags).length &&
      pair.metricKey.tags.every((label) => tags[label.key] === label.value)
    )
    const state = pair?.metricState as { readonly count?: number | bigint; readonly sum?: number } | undefined
    return { count: Number(state?.count ?? 0), sum: state?.sum ?? 0 }
  })

/** The value of a counter with exactly these tags. */
export const count = (name: string, tags: Readonly<Record<string, string>>) =>
  Effect.map(read(name, tags), (state) => state.count)
