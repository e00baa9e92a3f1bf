/**
 * An event-sourced ledger (`EventSourced`) whose state has a set and a list
 * in it, for the tests of snapshots: a state that its schema must encode
 * (a set is not JSON) and decode back, made by deciders alike but for their
 * `snapshot` options, so that buses with and without snapshots, or with
 * snapshots of another key, run on the same streams.
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware } from "../../src/index.js"

export class Credited extends DomainEvent.Class<Credited>()("Credited", {
  ledgerId: Schema.String,
  amount: Schema.Int,
  tag: Schema.String
}) {}

export class Debited extends DomainEvent.Class<Debited>()("Debited", {
  ledgerId: Schema.String,
  amount: Schema.Int
}) {}

export class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  balance: Schema.Int
}) {}

export class Summary extends Schema.Class<Summary>("Summary")({
  balance: Schema.Int,
  tags: Schema.Array(Schema.String),
  last: Schema.Array(Schema.Int),
  version: Schema.Int
}) {}

/** Credits `amount` in `times` events, tagged; retried on a conflict. */
export class Credit extends Command.Class<Credit>()("Credit", {
  payload: { ledgerId: Schema.String, amount: Schema.Int, tag: Schema.String, times: Schema.Int },
  success: Summary,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

/** Debits `amount`, refused past the balance; retried on a conflict. */
export class Debit extends Command.Class<Debit>()("Debit", {
  payload: { ledgerId: Schema.String, amount: Schema.Int },
  success: Summary,
  failure: Schema.Union(InsufficientFunds, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"]
}) {}

export const State = Schema.Struct({
  balance: Schema.Int,
  tags: Schema.ReadonlySet(Schema.String),
  /** The last three amounts, credits positive, debits negative. */
  last: Schema.Array(Schema.Int)
})
export type State = typeof State.Type

export const initialState: State = { balance: 0, tags: new Set(), last: [] }

const evolve = (state: State, event: Credited | Debited): State =>
  event._tag === "Credited"
    ? {
      balance: state.balance + event.amount,
      tags: new Set([...state.tags, event.tag]),
      last: [...state.last, event.amount].slice(-3)
    }
    // `0 - amount`, not `-amount`: JSON has no -0, so a debit of 0 would come back from a
    // snapshot as 0, and the property that a snapshot folds as the stream does fail on it.
    : { balance: state.balance - event.amount, tags: state.tags, last: [...state.last, 0 - event.amount].slice(-3) }

/** A ledger's decider, with the given snapshots (none when not given). */
export const deciderWith = (
  snapshot?: EventSourced.SnapshotOptions<State>
) =>
  EventSourced.make({
    aggregateType: "Ledger",
    commands: [Credit, Debit],
    events: [Credited, Debited],
    initialState,
    evolve,
    decide: {
      Credit: (command) =>
        Effect.succeed(
          Array.from(
            { length: command.times },
            () => new Credited({ ledgerId: command.ledgerId, amount: command.amount, tag: command.tag })
          )
        ),
      Debit: (command, state) =>
        state.balance < command.amount
          ? Effect.fail(new InsufficientFunds({ balance: state.balance }))
          : Effect.succeed([new Debited({ ledgerId: command.ledgerId, amount: command.amount })])
    },
    ...(snapshot === undefined ? {} : { snapshot })
  })

export type Decider = ReturnType<typeof deciderWith>

export const summary = (state: State, version: number) =>
  new Summary({ balance: state.balance, tags: [...state.tags].sort(), last: state.last, version })

/** The handlers of a ledger's commands on `decider`. */
export const handlersOf = (decider: Decider) => ({
  Credit: EventSourced.handler(Credit, {
    decider,
    aggregateId: (command) => command.ledgerId,
    success: (state, _events, version) => summary(state, version)
  }),
  Debit: EventSourced.handler(Debit, {
    decider,
    aggregateId: (command) => command.ledgerId,
    success: (state, _events, version) => summary(state, version)
  })
})

/** A bus of a ledger's commands on `decider`, under the `transaction` middleware (and `retry`). */
export const busOf = (decider: Decider, retries = 10) =>
  CommandBus.make([Credit, Debit], handlersOf(decider)).pipe(
    CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(retries) }), Middleware.transaction)
  )

export type Bus = ReturnType<typeof busOf>

export type LedgerCommand = Credit | Debit
