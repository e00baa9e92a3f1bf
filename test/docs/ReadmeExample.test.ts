// The library example of the README, verbatim between the markers, run as a test.
import { expect, it } from "@effect/vitest"
// README:begin
import { Context, Effect, Layer, Schema } from "effect"
import { Command, CommandBus, Handler } from "effect-command-bus"
import { InMemory } from "effect-command-bus/testing"

class OutOfStock extends Schema.TaggedError<OutOfStock>()("OutOfStock", { sku: Schema.String }) {}

class ReserveStock extends Command.Class<ReserveStock>()("ReserveStock", {
  payload: { sku: Schema.String, quantity: Schema.Int },
  success: Schema.Struct({ left: Schema.Int }),
  failure: OutOfStock
}) {}

class Stock extends Context.Tag("Stock")<Stock, {
  readonly take: (sku: string, quantity: number) => Effect.Effect<number, OutOfStock>
}>() {}

const bus = CommandBus.make([ReserveStock], {
  ReserveStock: (command) =>
    Effect.flatMap(Stock, (stock) => stock.take(command.sku, command.quantity)).pipe(
      Effect.map((left) => Handler.result({ left }))
    )
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))

// In a test: a mock Stock, and the in-memory stores of the test kit.
const StockMock = Layer.succeed(Stock, {
  take: (sku, quantity) => quantity <= 10 ? Effect.succeed(10 - quantity) : Effect.fail(new OutOfStock({ sku }))
})
const reserve = (quantity: number) =>
  bus.dispatch(new ReserveStock({ sku: "apple", quantity })).pipe(Effect.provide([StockMock, InMemory.layer]))
// README:end

it.effect("the README example dispatches with mock layers", () =>
  Effect.gen(function*() {
    expect(yield* reserve(3)).toEqual({ left: 7 })
    expect(yield* Effect.flip(reserve(11))).toEqual(new OutOfStock({ sku: "apple" }))
  }))
