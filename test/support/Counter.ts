/**
 * An event-sourced counter (`EventSourced`) for the tests of the decider,
 * its handler and its streams, in memory and on the databases.
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { Command, CommandError, DomainEvent, EventSourced } from "../../src/index.js"

export class Incremented extends DomainEvent.Class<Incremented>()("Incremented", {
  counterId: Schema.String,
  by: Schema.Int
}) {}

export class Reset extends DomainEvent.Class<Reset>()("Reset", { counterId: Schema.String }) {}

export class TooHigh
  extends Schema.TaggedError<TooHigh>()("TooHigh", { counterId: Schema.String, count: Schema.Int })
{}

export class NothingToReset extends Schema.TaggedError<NothingToReset>()("NothingToReset", {
  counterId: Schema.String
}) {}

/** Adds `by`, refused past 100; retried on a conflict. */
export class Increment extends Command.Class<Increment>()("Increment", {
  payload: { counterId: Schema.String, by: Schema.Int },
  success: Schema.Struct({ count: Schema.Int, version: Schema.Int }),
  failure: Schema.Union(TooHigh, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"]
}) {}

/** Adds `by` in `times` events at once; not retried. */
export class IncrementEach extends Command.Class<IncrementEach>()("IncrementEach", {
  payload: { counterId: Schema.String, by: Schema.Int, times: Schema.Int },
  success: Schema.Int,
  failure: Schema.Union(TooHigh, CommandError.ConcurrencyConflict)
}) {}

export class ResetCounter extends Command.Class<ResetCounter>()("ResetCounter", {
  payload: { counterId: Schema.String },
  success: Schema.Int,
  failure: Schema.Union(NothingToReset, CommandError.ConcurrencyConflict)
}) {}

export interface State {
  readonly count: number
}

export const Counter = EventSourced.make({
  aggregateType: "Counter",
  commands: [Increment, IncrementEach, ResetCounter],
  events: [Incremented, Reset],
  initialState: { count: 0 } as State,
  evolve: (state, event) => {
    switch (event._tag) {
      case "Incremented":
        return { count: state.count + event.by }
      case "Reset":
        return { count: 0 }
    }
  },
  decide: {
    Increment: (command, state) =>
      state.count + command.by > 100
        ? Effect.fail(new TooHigh({ counterId: command.counterId, count: state.count }))
        : Effect.succeed([new Incremented({ counterId: command.counterId, by: command.by })]),
    IncrementEach: (command, state) =>
      state.count + command.by * command.times > 100
        ? Effect.fail(new TooHigh({ counterId: command.counterId, count: state.count }))
        : Effect.succeed(
          Array.from({ length: command.times }, () => new Incremented({ counterId: command.counterId, by: command.by }))
        ),
    ResetCounter: (command, state) =>
      state.count === 0
        ? Effect.fail(new NothingToReset({ counterId: command.counterId }))
        : Effect.succeed([new Reset({ counterId: command.counterId })])
  }
})

export const handlers = {
  Increment: EventSourced.handler(Increment, {
    decider: Counter,
    aggregateId: (command) => command.counterId,
    success: (state, _events, version) => ({ count: state.count, version })
  }),
  IncrementEach: EventSourced.handler(IncrementEach, {
    decider: Counter,
    aggregateId: (command) => command.counterId,
    success: (state) => state.count
  }),
  ResetCounter: EventSourced.handler(ResetCounter, {
    decider: Counter,
    aggregateId: (command) => command.counterId,
    success: (state) => state.count
  })
}

export const commands = [Increment, IncrementEach, ResetCounter] as const
