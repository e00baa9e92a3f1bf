// The README's example of an event-sourced aggregate, verbatim between the markers, run as a test.

// README:begin
import { it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware } from "effect-command-bus"
import { InMemory, Specification } from "effect-command-bus/testing"

class Deposited extends DomainEvent.Class<Deposited>()("Deposited", { account: Schema.String, amount: Schema.Int }) {}
class Withdrawn extends DomainEvent.Class<Withdrawn>()("Withdrawn", { account: Schema.String, amount: Schema.Int }) {}

class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  balance: Schema.Int
}) {}

class Withdraw extends Command.Class<Withdraw>()("Withdraw", {
  payload: { account: Schema.String, amount: Schema.Int },
  success: Schema.Int,
  // The stream's guard fails a dispatch that lost a race with ConcurrencyConflict: retried on fresh state.
  failure: Schema.Union(InsufficientFunds, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"]
}) {}

const Account = EventSourced.make({
  aggregateType: "Account",
  commands: [Withdraw],
  events: [Deposited, Withdrawn],
  initialState: 0,
  evolve: (balance, event) => event._tag === "Deposited" ? balance + event.amount : balance - event.amount,
  // Optional: a dispatch folds only the events after the latest snapshot of the balance.
  snapshot: { state: Schema.Int, every: 100 },
  decide: {
    Withdraw: (command, balance) =>
      balance < command.amount
        ? Effect.fail(new InsufficientFunds({ balance }))
        : Effect.succeed([new Withdrawn({ account: command.account, amount: command.amount })])
  }
})

const bus = CommandBus.make([Withdraw], {
  Withdraw: EventSourced.handler(Withdraw, {
    decider: Account,
    aggregateId: (command) => command.account,
    success: (balance) => balance
  })
}).pipe(CommandBus.withMiddleware(Middleware.retry(), Middleware.transaction))

const spec = Specification.make({
  bus,
  layer: InMemory.layer,
  evolve: EventSourced.given(Account, (event) => event.account)
})

it.effect("withdraws from what was deposited", () =>
  spec.given(new Deposited({ account: "alice", amount: 10 }))
    .when(new Withdraw({ account: "alice", amount: 4 }))
    .thenSucceeds(6, new Withdrawn({ account: "alice", amount: 4 })))

it.effect("refuses more than the balance", () =>
  spec.given(new Deposited({ account: "alice", amount: 10 }), new Withdrawn({ account: "alice", amount: 8 }))
    .when(new Withdraw({ account: "alice", amount: 4 }))
    .thenFails(new InsufficientFunds({ balance: 2 })))
// README:end
