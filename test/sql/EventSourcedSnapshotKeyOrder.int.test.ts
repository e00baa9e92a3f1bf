/**
 * A snapshot read back from PostgreSQL must give the state the fold
 * made, property order included (a decision may depend on it), as the
 * in-memory store does.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware } from "../../src/index.js"
import { SqlStores } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

class Opened extends DomainEvent.Class<Opened>()("Opened", { bookId: Schema.String, account: Schema.String }) {}

class Open extends Command.Class<Open>()("Open", {
  payload: { bookId: Schema.String, account: Schema.String },
  success: Schema.Array(Schema.String),
  failure: CommandError.ConcurrencyConflict
}) {}

const State = Schema.Struct({ accounts: Schema.Record({ key: Schema.String, value: Schema.Number }) })
type State = typeof State.Type

const decider = EventSourced.make({
  aggregateType: "Book",
  commands: [Open],
  events: [Opened],
  initialState: { accounts: {} } as State,
  evolve: (state: State, event: Opened): State => ({ accounts: { ...state.accounts, [event.account]: 0 } }),
  decide: { Open: (command) => Effect.succeed([new Opened({ bookId: command.bookId, account: command.account })]) },
  snapshot: { state: State, every: 2 }
})

const bus = CommandBus.make([Open], {
  // The accounts in the order they were opened: what the fold made.
  Open: EventSourced.handler(Open, {
    decider,
    aggregateId: (command) => command.bookId,
    success: (state) => Object.keys(state.accounts)
  })
}).pipe(CommandBus.withMiddleware(Middleware.transaction))

const scenario = Effect.gen(function*() {
  yield* bus.dispatch(new Open({ bookId: "b", account: "zz" }))
  yield* bus.dispatch(new Open({ bookId: "b", account: "a" })) // snapshot at 2
  return yield* bus.dispatch(new Open({ bookId: "b", account: "m" })) // read from it
})

layer(InMemory.layer)("in memory", (it) => {
  it.effect("the accounts in opening order", () =>
    Effect.map(scenario, (keys) => expect(keys).toEqual(["zz", "a", "m"])))
})

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), {
  excludeTestServices: true,
  timeout: "60 seconds"
})(`on ${TestDatabase.kind}`, (it) => {
  it.effect("the accounts in opening order, as the whole stream folds (and as in memory)", () =>
    Effect.map(scenario, (keys) => expect(keys).toEqual(["zz", "a", "m"])))
})
