/**
 * Dispatch overhead: one small synchronous handler behind every way of
 * calling it, per command, as a ratio to calling the handler directly.
 *
 * Run alone with `npx tsx bench/dispatch.ts`, or with every bench through
 * `npm run bench`.
 */
import "reflect-metadata"
import { Module } from "@nestjs/common"
import { NestFactory } from "@nestjs/core"
import { CommandBus as NestCommandBus, CommandHandler, CqrsModule, type ICommandHandler } from "@nestjs/cqrs"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Tracer from "effect/Tracer"
import {
  Command,
  CommandBus,
  CommandError,
  CurrentUser,
  DomainEvent,
  Handler,
  Middleware,
  UnitOfWork
} from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { defaultOptions, measure, type Options, type Variant } from "./lib/measure.js"
import { format, type Report, type Row } from "./lib/report.js"

// -----------------------------------------------------------------------------
// the command and the handler work every variant shares
// -----------------------------------------------------------------------------

class InvalidStock extends Schema.TaggedError<InvalidStock>()("InvalidStock", { available: Schema.Number }) {}

// Declares a role, a business rule and a retryable error, so that
// authorization, validation and retry do their work in the full stack rather
// than stepping aside for a command that asks nothing of them.
class Restock extends Command.Class<Restock>()("Restock", {
  payload: { productId: Schema.String, available: Schema.Number },
  success: Schema.Struct({ productId: Schema.String, available: Schema.Number }),
  failure: Schema.Union(InvalidStock, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"],
  requiredRole: "admin",
  validate: ({ productId }) =>
    productId.length > 0 ? [] : [new Command.ValidationIssue({ path: ["productId"], message: "Empty product id" })]
}) {}

class StockSet extends DomainEvent.Class<StockSet>()("StockSet", {
  productId: Schema.String,
  available: Schema.Number
}) {}

interface Stock {
  readonly productId: string
  readonly available: number
}

/** The handler's work, the same in every variant: validate a number, return a result. */
const restock = (command: Restock): Stock | InvalidStock =>
  Number.isInteger(command.available) && command.available >= 0
    ? { productId: command.productId, available: command.available }
    : new InvalidStock({ available: command.available })

const command = new Restock({ productId: "sku-1", available: 7 })
const admin: CurrentUser.Principal = { userId: "bench-admin", roles: ["admin"] }

// -----------------------------------------------------------------------------
// NestJS: the handler as a class; "direct call" calls its `execute`
// -----------------------------------------------------------------------------

@CommandHandler(Restock)
class RestockHandler implements ICommandHandler<Restock, Stock> {
  async execute(restockCommand: Restock): Promise<Stock> {
    const outcome = restock(restockCommand)
    if (outcome instanceof InvalidStock) throw outcome
    return outcome
  }
}

@Module({ imports: [CqrsModule.forRoot()], providers: [RestockHandler] })
class BenchModule {}

// -----------------------------------------------------------------------------
// Effect: the same work as an Effect handler, on several buses
// -----------------------------------------------------------------------------

const restockEffect = (restockCommand: Restock) => {
  const outcome = restock(restockCommand)
  return outcome instanceof InvalidStock ? Effect.fail(outcome) : Effect.succeed(Handler.result(outcome))
}

const restockWithEvent = (restockCommand: Restock) => {
  const outcome = restock(restockCommand)
  return outcome instanceof InvalidStock ? Effect.fail(outcome) : Effect.succeed(Handler.result(outcome, [
    DomainEvent.draft(
      { aggregateType: "Product", aggregateId: outcome.productId, aggregateVersion: 1 },
      new StockSet(outcome, { disableValidation: true })
    )
  ]))
}

const bare = CommandBus.make([Restock], { Restock: restockEffect })
const full = bare.pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
const bareWithEvent = CommandBus.make([Restock], { Restock: restockWithEvent })
const fullWithEvent = bareWithEvent.pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))

/**
 * A first Effect bus: find the handler, run it inside `Effect.withSpan`
 * with its default settings (call-site stack capture on), carrying the same
 * attributes as the tracing middleware.
 */
const naiveDispatch = (restockCommand: Restock) =>
  Effect.withSpan(
    Effect.map(restockEffect(restockCommand), (result) => result.value),
    `CommandBus.dispatch ${restockCommand._tag}`,
    {
      attributes: {
        "command.type": restockCommand._tag,
        "command.id": restockCommand.commandId,
        "command.correlation_id": restockCommand.correlationId
      }
    }
  )

/**
 * A floor for the full stack: one middleware that does only what tracing
 * cannot do without (a span, with it as the parent of the handler's spans,
 * ended in one uninterruptible region) plus the authorization check; no
 * timeout, metrics, logging or retry. Not a usable stack: it shows what the
 * target leaves for the rest.
 */
const floor = bare.pipe(CommandBus.withMiddleware(Middleware.make(
  "floor",
  <A, E, R>(self: Effect.Effect<A, E, R>, { command }: Middleware.Dispatch) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.withFiberRuntime<A, E, R>((fiber) => {
        if (Option.isNone(Context.unsafeGet(fiber.currentContext, CurrentUser.CurrentUser))) {
          return Effect.dieMessage("no user")
        }
        const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
        const span = fiber.currentTracer.span(
          `CommandBus.dispatch ${command._tag}`,
          Option.none(),
          Context.empty(),
          [],
          clock.unsafeCurrentTimeNanos(),
          "internal",
          { captureStackTrace: false }
        )
        span.attribute("command.id", command.commandId)
        span.attribute("command.correlation_id", command.correlationId)
        const outer = fiber.currentContext
        return Effect.onExit(
          Effect.zipRight(
            FiberRef.set(FiberRef.currentContext, Context.add(outer, Tracer.ParentSpan, span)),
            restore(self)
          ),
          (exit) =>
            Effect.zipRight(
              FiberRef.set(FiberRef.currentContext, outer),
              Effect.sync(() => span.end(clock.unsafeCurrentTimeNanos(), exit))
            )
        )
      })
    )
)))

/**
 * The world every Effect variant runs in, built once: in-memory stores with
 * no unit of work (`UnitOfWork.layerNone`: the transaction middleware runs,
 * with no transaction to hold), an admin principal, and a minimum log level
 * of Error, so every log of the logging middleware (started Debug,
 * completed Info, failed Warning) is below it. Tracing is on with Effect's
 * default (native) tracer, which records spans and exports them nowhere.
 */
const environment = Layer.mergeAll(
  InMemory.layer,
  UnitOfWork.layerNone,
  Layer.succeed(CurrentUser.CurrentUser, Option.some(admin)),
  Logger.minimumLogLevel(LogLevel.Error)
)

/** The same with `InMemory.layer`'s own unit of work, which holds a dispatch's events until it succeeds. */
const environmentHoldingEvents = Layer.mergeAll(
  InMemory.layer,
  Layer.succeed(CurrentUser.CurrentUser, Option.some(admin)),
  Logger.minimumLogLevel(LogLevel.Error)
)

type Environment = Layer.Layer.Success<typeof environment>

const effectVariant = (
  id: string,
  runtime: ManagedRuntime.ManagedRuntime<Environment, never>,
  dispatch: (restockCommand: Restock) => Effect.Effect<unknown, unknown, Environment>,
  minimumLogLevel: LogLevel.LogLevel = LogLevel.Error
): Variant => ({
  id,
  // N dispatches inside one fiber: the figure per operation is the dispatch,
  // not the start of a fiber and the promise that reports its end.
  batch: (n) =>
    runtime.runPromise(
      Effect.forEach(new Array<Restock>(n).fill(command), dispatch, { discard: true }).pipe(
        Logger.withMinimumLogLevel(minimumLogLevel)
      )
    )
})

// -----------------------------------------------------------------------------
// checks: every variant returns the same result, and the full stack really
// traces and logs nothing
// -----------------------------------------------------------------------------

const expected: Stock = { productId: "sku-1", available: 7 }

const assertSame = (label: string, actual: unknown) => {
  const value = actual as Stock | undefined
  if (value?.productId !== expected.productId || value.available !== expected.available) {
    throw new Error(`${label} returned ${JSON.stringify(actual)}, not ${JSON.stringify(expected)}`)
  }
}

const checkFullStack = async (
  runtime: ManagedRuntime.ManagedRuntime<Environment, never>,
  minimumLogLevel: LogLevel.LogLevel
) => {
  const spans: Array<Tracer.Span> = []
  const logs: Array<unknown> = []
  const native = await runtime.runPromise(Effect.tracer)
  const recording: Tracer.Tracer = {
    ...native,
    span: (...args) => {
      const span = native.span(...args)
      spans.push(span)
      return span
    }
  }
  const result = await runtime.runPromise(
    full.dispatch(command).pipe(
      Effect.withTracer(recording),
      Effect.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => logs.push(message)))),
      Logger.withMinimumLogLevel(minimumLogLevel)
    )
  )
  assertSame("full stack", result)
  const span = spans.find((candidate) => candidate.name === "CommandBus.dispatch Restock")
  if (
    span === undefined || span.status._tag !== "Ended" || span.attributes.get("command.id") !== command.commandId ||
    span.attributes.get("command.correlation_id") !== command.correlationId
  ) {
    throw new Error("full stack: no ended dispatch span with the command's attributes")
  }
  if (logs.length > 0) throw new Error(`full stack: logged ${JSON.stringify(logs)}`)
}

// -----------------------------------------------------------------------------
// run
// -----------------------------------------------------------------------------

export const run = async (options: Options = defaultOptions): Promise<Report> => {
  const app = await NestFactory.createApplicationContext(BenchModule, { logger: false })
  const runtime = ManagedRuntime.make(environment)
  const runtimeHoldingEvents = ManagedRuntime.make(environmentHoldingEvents)
  try {
    const nestBus = app.get(NestCommandBus)
    const handler = new RestockHandler()

    assertSame("direct call", await handler.execute(command))
    assertSame("@nestjs/cqrs", await nestBus.execute(command))
    assertSame("handler alone", (await runtime.runPromise(restockEffect(command))).value)
    assertSame("bus, no middleware", await runtime.runPromise(bare.dispatch(command)))
    assertSame("naive withSpan bus", await runtime.runPromise(naiveDispatch(command)))
    assertSame("a span and one region", await runtime.runPromise(floor.dispatch(command)))
    assertSame("bus with an event", await runtime.runPromise(fullWithEvent.dispatch(command)))
    await checkFullStack(runtime, LogLevel.Error)
    await checkFullStack(runtime, LogLevel.Warning)

    let sink: unknown
    const variants: ReadonlyArray<Variant> = [
      {
        id: "direct",
        batch: async (n) => {
          for (let i = 0; i < n; i++) sink = await handler.execute(command)
        }
      },
      {
        id: "direct-sync",
        batch: async (n) => {
          for (let i = 0; i < n; i++) sink = restock(command)
        }
      },
      {
        id: "nest",
        batch: async (n) => {
          for (let i = 0; i < n; i++) sink = await nestBus.execute(command)
        }
      },
      effectVariant("handler", runtime, restockEffect),
      effectVariant("bare", runtime, bare.dispatch),
      effectVariant("full", runtime, full.dispatch),
      effectVariant("full-warning", runtime, full.dispatch, LogLevel.Warning),
      effectVariant("naive", runtime, naiveDispatch),
      effectVariant("floor", runtime, floor.dispatch),
      effectVariant("bare-event", runtime, bareWithEvent.dispatch),
      effectVariant("full-event", runtime, fullWithEvent.dispatch),
      effectVariant("full-holding", runtimeHoldingEvents, full.dispatch)
    ]
    const stats = await measure(variants, options)
    assertSame("last direct call", sink)

    const row = (id: string, label: string, options: Pick<Row, "short" | "target"> = {}): Row => {
      const { batchSize, max, median, min } = stats.get(id)!
      return { id, label, nsPerOp: median, min, max, batchSize, ...options }
    }
    return {
      title: `dispatch: one command, median ns per dispatch over ${options.rounds} rounds`,
      baseline: "direct",
      rows: [
        row("direct", "direct call: await handler.execute(command)", { short: "direct call" }),
        row("direct-sync", "  (info) the handler's work alone, not awaited"),
        row("nest", "@nestjs/cqrs CommandBus.execute"),
        row("handler", "  (info) the Effect handler alone, no bus"),
        row("bare", "bus, no middleware", { target: { of: "direct", maxRatio: 3 } }),
        row("full", "bus, full middleware stack", { target: { of: "naive", maxRatio: 0.25 } }),
        row("full-warning", "  (info) full stack, minimum log level Warning"),
        row("naive", "naive Effect bus: Effect.withSpan defaults", { short: "naive bus" }),
        row("floor", "  (info) a span and one region, nothing else"),
        row("bare-event", "  (info) bus, no middleware, 1 event"),
        row("full-event", "  (info) bus, full middleware stack, 1 event"),
        row("full-holding", "  (info) full stack, InMemory.layer's unit of work")
      ],
      notes: [
        "Same work in every variant, on the same command instance: validate a number, return " +
        "{ productId, available }. The command also declares a role, a business rule and a retryable error, " +
        "so authorization, validation and retry do their work in the full stack.",
        "Direct call and @nestjs/cqrs: N awaited calls in a loop (the handler's `async execute`, and " +
        "CommandBus.execute on it). Effect variants: N dispatches in one fiber, " +
        "Effect.forEach(commands, dispatch, { discard: true }) in one ManagedRuntime.runPromise; the runtime " +
        "(in-memory stores, admin principal, log level) is built once, before timing.",
        "Full stack: CommandBus.defaultMiddleware() (tracing, logging, metrics, authorization, validation, " +
        "idempotency, timeout 10 s, retry, transaction) over InMemory.layer's stores (no unit of work, see " +
        "below); tracing on with Effect's native " +
        "tracer and no exporter; no idempotency key, so no claim. Minimum log level Error: every command log " +
        "(started Debug, completed Info, failed Warning) is below it; the logging middleware still sets the " +
        "command's annotations for the dispatch (a handler's error log carries them). The Warning row also " +
        "arms command.failed. Checked before timing: one ended span with the command's attributes, no log line.",
        "Naive bus: the handler inside Effect.withSpan(name, { attributes }), no other option, so its " +
        "call-site stack capture is on.",
        "A span and one region: one middleware that makes the dispatch's span, sets it as the parent of the " +
        "handler's spans, ends it in one uninterruptible region, and checks for a user; no timeout, metrics, " +
        "logging or retry. Not a usable stack: a floor for the full stack's target.",
        "1 event: the handler returns one event, which the bus stamps and appends to the in-memory outbox " +
        "(which publishes it).",
        "Every Effect variant runs over InMemory.layer's stores with UnitOfWork.layerNone, as the full stack's " +
        "row always has. The last row runs over InMemory.layer's own unit of work, which holds a dispatch's " +
        "events (in a fiber ref set for the dispatch) until it succeeds, as PostgreSQL's transaction does.",
        `Batch size calibrated to ~${options.batchMs} ms per variant, ${options.warmupMs} ms warm-up each, ` +
        "variants interleaved in rotating order each round; min – max is the spread over rounds."
      ]
    }
  } finally {
    await runtime.dispose()
    await runtimeHoldingEvents.dispose()
    await app.close()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(format(await run()))
}
