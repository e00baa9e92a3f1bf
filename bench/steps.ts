/**
 * Fiber steps per `CreateOrder` through the full middleware stack on a
 * throwaway PostgreSQL, and what each middleware adds (the stack without it,
 * the transaction kept). A step is one instruction of Effect's fiber runtime,
 * counted by a tracer whose `context` hook sees every one. Not a timing: the
 * count does not move with the machine's load, so it shows what a change to
 * the write path saves where the timed benches' noise would hide it.
 *
 * Run with `npx tsx bench/steps.ts` (not part of `npm run bench`).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Tracer from "effect/Tracer"
import { CommandBus } from "../src/index.js"
import { CreateOrder } from "../src/orders/Commands.js"
import * as Migrations from "../src/orders/Migrations.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import * as Persistence from "../src/orders/Persistence.js"
import * as Postgres from "./lib/postgres.js"
import { customerId, randomLines, resetTables, seedInventory, shippingAddress } from "./sql-baseline.js"
import { serverLayer } from "./sql.js"

const orders = 20

let steps = 0
let counting = false
let n = 0

const newOrder = () =>
  new CreateOrder({
    userId: "bench-steps",
    customerId,
    items: randomLines(),
    shippingAddress,
    idempotencyKey: `bench-steps-${n++}`
  })

/** Steps per order of `bus`, after one dispatch that warms it up. */
const stepsPerOrder = <R>(bus: { readonly dispatch: (command: CreateOrder) => Effect.Effect<unknown, unknown, R> }) =>
  Effect.gen(function*() {
    const native = yield* Effect.tracer
    const tracer = Tracer.make({
      span: native.span,
      context: (f) => {
        if (counting) steps++
        return f()
      }
    })
    yield* bus.dispatch(newOrder())
    steps = 0
    yield* Effect.gen(function*() {
      counting = true
      for (let i = 0; i < orders; i++) yield* bus.dispatch(newOrder())
      counting = false
    }).pipe(Effect.withTracer(tracer))
    return steps / orders
  })

const database = await Postgres.start()
try {
  await resetTables(database.url)
  await seedInventory(database.url)
  const stack = CommandBus.defaultMiddleware()
  const lines = await Effect.gen(function*() {
    const full = yield* stepsPerOrder(OrderBus.make())
    const out = [`full stack: ${full} steps per CreateOrder (with an idempotency key, ${orders} orders)`]
    for (const [i, { name }] of stack.entries()) {
      // Every dispatch runs in the transaction: it is kept.
      if (name === "transaction") continue
      const without = stack.filter((_, j) => j !== i) as unknown as typeof stack
      const count = yield* stepsPerOrder(OrderBus.bare.pipe(CommandBus.withMiddleware(...without)))
      out.push(`  without ${name.padEnd(14)} ${String(count).padStart(6)}  (${name} adds ${full - count})`)
    }
    return out
  }).pipe(
    Effect.scoped,
    Effect.provide(
      Persistence.layerSql(false).pipe(
        Layer.provideMerge(Layer.effectDiscard(Migrations.run).pipe(Layer.provideMerge(serverLayer(database.url, 4))))
      )
    ),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
  console.log(lines.join("\n"))
} finally {
  await database.stop()
}
