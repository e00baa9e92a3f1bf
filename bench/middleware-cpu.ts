/**
 * Node CPU per `CreateOrder` at 16 in flight on a throwaway PostgreSQL, for
 * the full stack and for the stack without each middleware in turn (the
 * transaction kept), beside the same bus with no idempotency key and the bare
 * bus with only the transaction. Where `steps.ts` counts fiber steps, this
 * times them with everything else a dispatch spends (the driver, sockets,
 * garbage collection), so it says which middleware is worth working on.
 * Timed, so noisy: variants alternate over rounds, and the figures are read
 * side by side from one run.
 *
 * Run with `npx tsx bench/middleware-cpu.ts` (not part of `npm run bench`).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { CommandBus } from "../src/index.js"
import { CreateOrder } from "../src/orders/Commands.js"
import * as Migrations from "../src/orders/Migrations.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import * as Persistence from "../src/orders/Persistence.js"
import { median } from "./lib/measure.js"
import * as Postgres from "./lib/postgres.js"
import { customerId, randomLines, resetTables, seedInventory, shippingAddress } from "./sql-baseline.js"
import { serverLayer } from "./sql.js"

const concurrency = 16
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 3)
const warmupMs = 800
const measuredMs = 3000

const layerFor = (url: string) =>
  Persistence.layerSql(false).pipe(
    Layer.provideMerge(Layer.effectDiscard(Migrations.run).pipe(Layer.provideMerge(serverLayer(url, concurrency))))
  )

interface Bus {
  readonly dispatch: (
    command: CreateOrder
  ) => Effect.Effect<unknown, unknown, Layer.Layer.Success<ReturnType<typeof layerFor>>>
}

interface Variant {
  readonly label: string
  readonly bus: Bus
  readonly withKey: boolean
}

let n = 0
const newOrder = (withKey: boolean) =>
  new CreateOrder({
    userId: "bench-middleware-cpu",
    customerId,
    items: randomLines(),
    shippingAddress,
    ...(withKey ? { idempotencyKey: `bench-middleware-cpu-${Date.now()}-${n++}` } : {})
  })

const stack = CommandBus.defaultMiddleware()
// The generic stack, narrowed to a subset of itself: the bus's type is not what is measured.
const withStack = (middleware: ReadonlyArray<(typeof stack)[number]>): Bus =>
  OrderBus.bare.pipe(CommandBus.withMiddleware(...(middleware as unknown as typeof stack)))

const variants: ReadonlyArray<Variant> = [
  { label: "full stack", bus: OrderBus.make(), withKey: true },
  { label: "full stack, no idempotency key", bus: OrderBus.make(), withKey: false },
  { label: "transaction only, no key", bus: withStack(stack.filter((m) => m.name === "transaction")), withKey: false },
  ...stack.flatMap((middleware, i) =>
    middleware.name === "transaction" ? [] : [{
      label: `without ${middleware.name}`,
      bus: withStack(stack.filter((_, j) => j !== i)),
      withKey: true
    }]
  )
]

/** Orders per second and Node CPU (user + system) per order, from `concurrency` fibers. */
const measure = ({ bus, withKey }: Variant) =>
  Effect.gen(function*() {
    let done = 0
    let failed = 0
    let measuring = false
    let stop = false
    const worker = Effect.gen(function*() {
      while (!stop) {
        // Back to the event loop between orders, as requests arriving over I/O are.
        yield* Effect.async<void>((resume) => void setImmediate(() => resume(Effect.void)))
        const exit = yield* Effect.exit(bus.dispatch(newOrder(withKey)))
        if (exit._tag === "Failure") failed++
        else if (measuring) done++
      }
    })
    const fibers = yield* Effect.forEach(Array.from({ length: concurrency }), () => Effect.fork(worker))
    yield* Effect.sleep(Duration.millis(warmupMs))
    measuring = true
    const cpuFrom = process.cpuUsage()
    const start = Date.now()
    yield* Effect.sleep(Duration.millis(measuredMs))
    const cpu = process.cpuUsage(cpuFrom)
    const elapsed = (Date.now() - start) / 1000
    stop = true
    yield* Fiber.joinAll(fibers)
    if (failed > 0) return yield* Effect.dieMessage(`${failed} dispatches failed`)
    return { perSecond: done / elapsed, cpuMicros: (cpu.user + cpu.system) / done }
  })

const database = await Postgres.start()
try {
  await resetTables(database.url)
  await seedInventory(database.url)
  const results = await Effect.gen(function*() {
    const figures = new Map<string, Array<{ readonly perSecond: number; readonly cpuMicros: number }>>()
    for (let round = 0; round < rounds; round++) {
      // Alternating order, so a slow stretch of a shared machine does not land on one variant.
      for (const variant of round % 2 === 0 ? variants : [...variants].reverse()) {
        figures.set(variant.label, [...(figures.get(variant.label) ?? []), yield* measure(variant)])
      }
    }
    return figures
  }).pipe(
    Effect.scoped,
    Effect.provide(layerFor(database.url)),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
  const full = median(results.get("full stack")!.map((figure) => figure.cpuMicros))
  console.log(`CreateOrder at ${concurrency} in flight, median of ${rounds} rounds (${measuredMs} ms each)\n`)
  console.log(`${"variant".padEnd(32)} ${"orders/s".padStart(9)} ${"CPU/order".padStart(10)} ${"vs full".padStart(9)}`)
  for (const { label } of variants) {
    const figures = results.get(label)!
    const cpu = median(figures.map((figure) => figure.cpuMicros))
    const perSecond = median(figures.map((figure) => figure.perSecond))
    const delta = label === "full stack" ? "" : `${cpu - full > 0 ? "+" : ""}${(cpu - full).toFixed(0)} µs`
    console.log(
      `${label.padEnd(32)} ${perSecond.toFixed(0).padStart(9)} ${`${cpu.toFixed(0)} µs`.padStart(10)} ${
        delta.padStart(9)
      }`
    )
  }
} finally {
  await database.stop()
}
