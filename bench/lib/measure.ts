/**
 * Timing for benchmarks: calibrated batches, warm-up, interleaved rounds,
 * median per variant.
 */
import { performance } from "node:perf_hooks"

/**
 * One thing to time. `batch(n)` performs `n` operations and resolves when
 * they are done; its cost per operation is what is reported, so whatever a
 * variant must set up once (a runtime, an application context) happens
 * before, never inside it.
 */
export interface Variant {
  readonly id: string
  readonly batch: (n: number) => Promise<void>
}

export interface Options {
  /** Timed rounds; each round runs every variant once. */
  readonly rounds: number
  /** Warm-up per variant before any round, so the JIT has settled. */
  readonly warmupMs: number
  /** Wall time a batch should take; the batch size is calibrated to it. */
  readonly batchMs: number
}

export interface Stats {
  /** Operations per batch, as calibrated. */
  readonly batchSize: number
  /** Nanoseconds per operation, one figure per round. */
  readonly samples: ReadonlyArray<number>
  readonly median: number
  readonly min: number
  readonly max: number
}

export const defaultOptions: Options = { rounds: 15, warmupMs: 500, batchMs: 40 }

const timeBatch = async (variant: Variant, n: number): Promise<number> => {
  const start = performance.now()
  await variant.batch(n)
  return (performance.now() - start) * 1e6
}

const calibrate = async (variant: Variant, batchMs: number): Promise<number> => {
  let n = 100
  for (;;) {
    const ns = await timeBatch(variant, n)
    if (ns >= batchMs * 1e6 || n >= 1 << 24) return Math.max(100, Math.round((n * batchMs * 1e6) / ns))
    n *= ns < batchMs * 1e5 ? 8 : 2
  }
}

export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/**
 * Calibrates and warms up every variant, then runs the rounds. Within a
 * round the variants run in an order rotated by the round number, so drift
 * (GC pressure, thermal, a neighbour process) spreads over all of them
 * rather than landing on whichever always runs last.
 */
export const measure = async (
  variants: ReadonlyArray<Variant>,
  options: Options = defaultOptions
): Promise<ReadonlyMap<string, Stats>> => {
  const sizes = new Map<string, number>()
  for (const variant of variants) {
    const n = await calibrate(variant, options.batchMs)
    const until = performance.now() + options.warmupMs
    while (performance.now() < until) await variant.batch(n)
    sizes.set(variant.id, n)
  }
  const samples = new Map<string, Array<number>>(variants.map((variant) => [variant.id, []]))
  for (let round = 0; round < options.rounds; round++) {
    for (let i = 0; i < variants.length; i++) {
      const variant = variants[(i + round) % variants.length]!
      const n = sizes.get(variant.id)!
      samples.get(variant.id)!.push((await timeBatch(variant, n)) / n)
    }
  }
  return new Map(variants.map((variant) => {
    const values = samples.get(variant.id)!
    return [variant.id, {
      batchSize: sizes.get(variant.id)!,
      samples: values,
      median: median(values),
      min: Math.min(...values),
      max: Math.max(...values)
    }]
  }))
}
