/**
 * A state that is a string (its schema encodes it to a JSON string)
 * is snapshotted, and read back, on a database as in memory.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware } from "../../src/index.js"
import { SqlStores } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

class Renamed extends DomainEvent.Class<Renamed>()("Renamed", { itemId: Schema.String, name: Schema.String }) {}

class Rename extends Command.Class<Rename>()("Rename", {
  payload: { itemId: Schema.String, name: Schema.String },
  success: Schema.String,
  failure: CommandError.ConcurrencyConflict
}) {}

// The state is the item's name.
const decider = EventSourced.make({
  aggregateType: "Item",
  commands: [Rename],
  events: [Renamed],
  initialState: "",
  evolve: (_: string, event: Renamed): string => event.name,
  decide: { Rename: (command) => Effect.succeed([new Renamed({ itemId: command.itemId, name: command.name })]) },
  snapshot: { state: Schema.String, every: 1 }
})

const bus = CommandBus.make([Rename], {
  Rename: EventSourced.handler(Rename, { decider, aggregateId: (c) => c.itemId, success: (state) => state })
}).pipe(CommandBus.withMiddleware(Middleware.transaction))

const scenario = Effect.gen(function*() {
  const names: Array<string> = []
  for (const name of ["hello", "world", "again"]) names.push(yield* bus.dispatch(new Rename({ itemId: "i", name })))
  return names
})

layer(InMemory.layer)("in memory", (it) => {
  it.effect("each rename succeeds", () =>
    Effect.map(scenario, (names) => expect(names).toEqual(["hello", "world", "again"])))
})

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), {
  excludeTestServices: true,
  timeout: "60 seconds"
})(`on ${TestDatabase.kind}`, (it) => {
  it.effect("each rename succeeds, as in memory", () =>
    Effect.map(scenario, (names) => expect(names).toEqual(["hello", "world", "again"])))
})
