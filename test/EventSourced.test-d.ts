import { Context, Effect, Schema } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { CommandError, EventStore, Handler } from "../src/index.js"
import { Command, CommandBus, EventSourced } from "../src/index.js"
import { InMemory, Specification } from "../src/testing/index.js"
import { commands, Counter, handlers, Increment, Incremented, Reset, ResetCounter, TooHigh } from "./support/Counter.js"

class Clock extends Context.Tag("Clock")<Clock, { readonly now: number }>() {}

// A number schema whose decoding needs the Clock service.
const needsClock: Schema.Schema<number, number, Clock> = Schema.transformOrFail(Schema.Number, Schema.Number, {
  strict: true,
  decode: (n) => Effect.map(Clock, () => n),
  encode: (n) => Effect.succeed(n)
})

class Unlisted extends Schema.TaggedClass<Unlisted>()("Unlisted", { counterId: Schema.String }) {}

class NoConflict extends Command.Class<NoConflict>()("NoConflict", {
  payload: { counterId: Schema.String },
  success: Schema.Int,
  failure: TooHigh
}) {}

describe("EventSourced types", () => {
  it("a handler fails with exactly its command's failures, and needs the EventStore", () => {
    expectTypeOf(handlers.Increment).toEqualTypeOf<Handler.Handler<Increment, EventStore.EventStore>>()
    type Failure = Effect.Effect.Error<ReturnType<typeof handlers.ResetCounter>>
    expectTypeOf<Failure>().toEqualTypeOf<Command.Failure<ResetCounter>>()
    const bus = CommandBus.make(commands, handlers)
    type DispatchError = Effect.Effect.Error<ReturnType<typeof bus.dispatch<Increment>>>
    expectTypeOf<DispatchError>().toEqualTypeOf<
      TooHigh | CommandError.ConcurrencyConflict | CommandError.StoreUnavailable
    >()
  })

  it("a decider's evolve and decide take its own events and commands", () => {
    expectTypeOf<Parameters<typeof Counter.evolve>[1]>().toEqualTypeOf<Incremented | Reset>()
    expectTypeOf<Parameters<typeof Counter.decide.ResetCounter>[0]>().toEqualTypeOf<ResetCounter>()
  })

  it("a decide's services are the handler's, beside the EventStore", () => {
    const timed = EventSourced.make({
      aggregateType: "Counter",
      commands: [Increment],
      events: [Incremented],
      initialState: 0,
      evolve: (count, event) => count + event.by,
      decide: {
        Increment: (command) =>
          Effect.map(Clock, () => [new Incremented({ counterId: command.counterId, by: command.by })])
      }
    })
    const handler = EventSourced.handler(Increment, {
      decider: timed,
      aggregateId: (command) => command.counterId,
      success: (count, _events, version) => ({ count, version })
    })
    expectTypeOf(handler).toEqualTypeOf<Handler.Handler<Increment, Clock | EventStore.EventStore>>()
  })

  it("refuses a decide that fails with an error its command does not declare", () => {
    EventSourced.make({
      aggregateType: "Counter",
      commands: [ResetCounter],
      events: [Reset],
      initialState: 0,
      evolve: () => 0,
      decide: {
        // @ts-expect-error -- ResetCounter does not declare TooHigh
        ResetCounter: (command, count) => Effect.fail(new TooHigh({ counterId: command.counterId, count }))
      }
    })
  })

  it("refuses a decide that returns an event the decider does not list", () => {
    EventSourced.make({
      aggregateType: "Counter",
      commands: [ResetCounter],
      events: [Reset],
      initialState: 0,
      evolve: () => 0,
      decide: {
        // @ts-expect-error -- Unlisted is not one of the decider's events
        ResetCounter: (command) => Effect.succeed([new Unlisted({ counterId: command.counterId })])
      }
    })
  })

  it("refuses a decider without a decide for one of its commands, or with one for another", () => {
    EventSourced.make({
      aggregateType: "Counter",
      commands: [ResetCounter, Increment],
      events: [Reset],
      initialState: 0,
      evolve: () => 0,
      // @ts-expect-error -- no decide for Increment
      decide: { ResetCounter: (command) => Effect.succeed([new Reset({ counterId: command.counterId })]) }
    })
    EventSourced.make({
      aggregateType: "Counter",
      commands: [ResetCounter],
      events: [Reset],
      initialState: 0,
      evolve: () => 0,
      decide: {
        ResetCounter: (command) => Effect.succeed([new Reset({ counterId: command.counterId })]),
        // @ts-expect-error -- Increment is not one of the decider's commands
        Increment: () => Effect.succeed([])
      }
    })
  })

  it("refuses a handler of a command that cannot fail with ConcurrencyConflict, or that the decider does not decide", () => {
    const decider = EventSourced.make({
      aggregateType: "Counter",
      commands: [NoConflict],
      events: [Reset],
      initialState: 0,
      evolve: () => 0,
      decide: { NoConflict: () => Effect.succeed([]) }
    })
    // @ts-expect-error -- NoConflict's failure does not include ConcurrencyConflict
    EventSourced.handler(NoConflict, { decider, aggregateId: (c) => c.counterId, success: (count) => count })
    // @ts-expect-error -- the decider has no decide for ResetCounter
    EventSourced.handler(ResetCounter, { decider, aggregateId: (c) => c.counterId, success: (count) => count })
  })

  it("a snapshot's schema is the state's, which initialState settles; a handler of it needs no more", () => {
    const counting = {
      aggregateType: "Counter",
      commands: [Increment],
      events: [Incremented],
      initialState: 0 as number,
      evolve: (count: number, event: Incremented) => count + event.by,
      decide: { Increment: () => Effect.succeed([]) }
    } as const
    const snapshotted = EventSourced.make({ ...counting, snapshot: { state: Schema.Int, every: 100 } })
    expectTypeOf(snapshotted.snapshot).toEqualTypeOf<EventSourced.SnapshotOptions<number> | undefined>()
    const handler = EventSourced.handler(Increment, {
      decider: snapshotted,
      aggregateId: (command) => command.counterId,
      success: (count, _events, version) => ({ count, version })
    })
    expectTypeOf(handler).toEqualTypeOf<Handler.Handler<Increment, EventStore.EventStore>>()
    // @ts-expect-error -- a schema of another type than the state's
    EventSourced.make({ ...counting, snapshot: { state: Schema.String, every: 100 } })
    // @ts-expect-error -- a schema that needs a service
    EventSourced.make({ ...counting, snapshot: { state: Schema.Int.pipe(Schema.compose(needsClock)), every: 1 } })
  })

  it("a Specification's given takes the decider's events when evolve is EventSourced.given", () => {
    const spec = Specification.make({
      bus: CommandBus.make(commands, handlers),
      layer: InMemory.layer,
      evolve: EventSourced.given(Counter, (event) => event.counterId)
    })
    spec.given(new Incremented({ counterId: "a", by: 1 }), new Reset({ counterId: "a" }))
    // @ts-expect-error -- not an event of the decider
    spec.given(new Unlisted({ counterId: "a" }))
  })
})

describe("EventSourced: a state of a union type", () => {
  type State = { readonly status: "open" } | { readonly status: "closed"; readonly reason: string }
  class Opened extends Schema.TaggedClass<Opened>()("Opened", { id: Schema.String }) {}
  class Closed extends Schema.TaggedClass<Closed>()("Closed", { id: Schema.String, reason: Schema.String }) {}
  class Close extends Command.Class<Close>()("Close", {
    payload: { id: Schema.String, reason: Schema.String },
    success: Schema.String,
    failure: Schema.Never
  }) {}

  it("is initialState's type, as the README says to give it", () => {
    const Ticket = EventSourced.make({
      aggregateType: "Ticket",
      commands: [Close],
      events: [Opened, Closed],
      initialState: { status: "open" } as State,
      evolve: (state, event): State => event._tag === "Closed" ? { status: "closed", reason: event.reason } : state,
      decide: {
        Close: (command, state) =>
          Effect.succeed(state.status === "closed" ? [] : [new Closed({ id: command.id, reason: command.reason })])
      }
    })
    expectTypeOf(Ticket.initialState).toEqualTypeOf<State>()
  })

  it("is not widened by an annotation of evolve's return alone", () => {
    EventSourced.make({
      aggregateType: "Ticket",
      commands: [Close],
      events: [Opened, Closed],
      initialState: { status: "open" },
      // @ts-expect-error: the state is `{ status: string }`, from initialState, which a State is not
      evolve: (state, event): State => event._tag === "Closed" ? { status: "closed", reason: event.reason } : state,
      decide: { Close: () => Effect.succeed([]) }
    })
  })
})
