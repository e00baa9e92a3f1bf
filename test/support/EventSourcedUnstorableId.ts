/**
 * An event-sourced command whose aggregate id is text a database cannot
 * store (a NUL character, a lone surrogate), on an aggregate whose events do
 * not repeat the id: the same clear defect in memory and on PostgreSQL.
 */
import { expect } from "@effect/vitest"
import type { Vitest } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import {
  Command,
  CommandBus,
  CommandError,
  DomainEvent,
  EventSourced,
  type EventStore,
  Middleware,
  type Outbox,
  type UnitOfWork
} from "../../src/index.js"

class Pinged extends DomainEvent.Class<Pinged>()("Pinged", {}) {}

class Ping extends Command.Class<Ping>()("Ping", {
  payload: { target: Schema.String },
  success: Schema.Int,
  failure: CommandError.ConcurrencyConflict
}) {}

const Target = EventSourced.make({
  aggregateType: "Target",
  commands: [Ping],
  events: [Pinged],
  initialState: 0,
  evolve: (pings) => pings + 1,
  decide: { Ping: () => Effect.succeed([new Pinged()]) }
})

const bus = CommandBus.make([Ping], {
  Ping: EventSourced.handler(Ping, { decider: Target, aggregateId: (command) => command.target, success: (n) => n })
}).pipe(CommandBus.withMiddleware(Middleware.transaction))

export const unstorableIdCases = <X extends boolean>(
  it: Vitest.MethodsNonLive<EventStore.EventStore | Outbox.Outbox | UnitOfWork.UnitOfWork, X>
) => {
  for (const [label, target] of [["a NUL character", "a\u0000b"], ["a lone surrogate", "a\uD800b"]] as const) {
    it.effect(`an aggregate id with ${label} is a defect that says to refuse it in the command's schema`, () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(bus.dispatch(new Ping({ target })))
        const defect = Exit.isFailure(exit) ? Cause.dieOption(exit.cause) : Option.none()
        expect(Option.map(defect, (error) => (error as Error).message)).toEqual(
          Option.some(
            "EventSourced: the aggregate id of Ping is a string with a NUL character or a lone surrogate, which a " +
              "database does not store: refuse such text in the command's schema (Command.Text)"
          )
        )
        // The stream of a storable id is unaffected.
        expect(yield* bus.dispatch(new Ping({ target: `storable, beside ${label}` }))).toBe(1)
      }))
  }
}
