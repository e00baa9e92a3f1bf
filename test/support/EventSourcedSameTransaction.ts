/**
 * Two event-sourced dispatches on one stream in one transaction, for the
 * in-memory store and the SQL one alike: a handler that dispatches two
 * (savepoints of its transaction), a caller that runs two in its own
 * transaction, and such a transaction rolled back.
 */
import { expect } from "@effect/vitest"
import type { Vitest } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import {
  Command,
  CommandBus,
  CommandError,
  EventStore,
  Handler,
  Middleware,
  type Outbox,
  UnitOfWork
} from "../../src/index.js"
import { handlers, Increment, TooHigh } from "./Counter.js"

class Rollback extends Schema.TaggedError<Rollback>()("Rollback", {}) {}

/** Increments its counter twice, by dispatching Increment twice, in its own transaction. */
class Twice extends Command.Class<Twice>()("Twice", {
  payload: { counterId: Schema.String, fail: Schema.Boolean },
  success: Schema.Array(Schema.Int),
  failure: Schema.Union(TooHigh, CommandError.ConcurrencyConflict, Rollback)
}) {}

type Dispatch = (command: Increment) => Effect.Effect<
  { readonly count: number; readonly version: number },
  TooHigh | CommandError.ConcurrencyConflict | CommandError.StoreUnavailable
>
let dispatchIncrement: Dispatch = () => Effect.dieMessage("not yet")

const twice = Handler.make(Twice, (command) =>
  Effect.gen(function*() {
    const first = yield* Effect.orDie(dispatchIncrement(new Increment({ counterId: command.counterId, by: 1 })))
    const second = yield* Effect.orDie(dispatchIncrement(new Increment({ counterId: command.counterId, by: 1 })))
    if (command.fail) return yield* new Rollback()
    return Handler.result([first.version, second.version])
  }))

const bus = CommandBus.make([Increment, Twice], { Increment: handlers.Increment, Twice: twice }).pipe(
  CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(3) }), Middleware.transaction)
)
dispatchIncrement = (command) => bus.dispatch(command) as ReturnType<Dispatch>

// Without the transaction middleware: the caller's transaction is the dispatches'.
const plain = CommandBus.make([Increment], { Increment: handlers.Increment })

// The stream's committed events' versions (read outside any transaction).
const versionsOf = (counterId: string) =>
  Effect.flatMap(EventStore.EventStore, (store) => store.read({ aggregateType: "Counter", aggregateId: counterId }))
    .pipe(
      Effect.map((events) => events.map((event) => event.aggregateVersion))
    )

export const sameTransactionCases = <X extends boolean>(
  it: Vitest.MethodsNonLive<EventStore.EventStore | Outbox.Outbox | UnitOfWork.UnitOfWork, X>
) => {
  it.effect("a handler that dispatches two commands on one stream: both commit, at versions 1 and 2", () =>
    Effect.gen(function*() {
      expect(yield* Effect.exit(bus.dispatch(new Twice({ counterId: "nested", fail: false })))).toEqual(
        Exit.succeed([1, 2])
      )
      expect(yield* versionsOf("nested")).toEqual([1, 2])
      expect(yield* bus.dispatch(new Increment({ counterId: "nested", by: 1 }))).toEqual({ count: 3, version: 3 })
    }))

  it.effect("two dispatches in the caller's transaction: the second goes on from the first", () =>
    Effect.gen(function*() {
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const exit = yield* Effect.exit(unitOfWork.transactional(Effect.all([
        plain.dispatch(new Increment({ counterId: "caller", by: 1 })),
        plain.dispatch(new Increment({ counterId: "caller", by: 2 }))
      ])))
      expect(exit).toEqual(Exit.succeed([{ count: 1, version: 1 }, { count: 3, version: 2 }]))
      expect(yield* versionsOf("caller")).toEqual([1, 2])
    }))

  it.effect("such a transaction rolled back gives back every version it moved", () =>
    Effect.gen(function*() {
      expect(yield* Effect.exit(bus.dispatch(new Twice({ counterId: "undone", fail: true })))).toEqual(
        Exit.fail(new Rollback())
      )
      expect(yield* versionsOf("undone")).toEqual([])
      expect(yield* bus.dispatch(new Increment({ counterId: "undone", by: 1 }))).toEqual({ count: 1, version: 1 })
    }))
}
