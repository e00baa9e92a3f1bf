/**
 * A keyed command dispatched inside a savepoint that rolls back while the
 * outermost transaction commits (A dispatches B, B dispatches C and then
 * fails, A goes on): C's work did not commit, so its key must not replay.
 */
import { assert, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Command, CommandBus, DomainEvent, Handler, Idempotency, Outbox } from "../../src/index.js"
import { InMemory } from "../../src/testing/index.js"

class Noted extends Schema.TaggedClass<Noted>()("Noted", { note: Schema.String }) {}

class Refused extends Schema.TaggedError<Refused>()("Refused", {}) {}

class Inner extends Command.Class<Inner>()("Inner", {
  payload: { note: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Middle extends Command.Class<Middle>()("Middle", {
  payload: { key: Schema.String },
  success: Schema.Void,
  failure: Refused
}) {}

class Outer extends Command.Class<Outer>()("Outer", {
  payload: { key: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const makeBus = () => {
  const runs = { inner: 0 }
  const bus: any = CommandBus.make([Inner, Middle, Outer], {
    Inner: (command) =>
      Effect.sync(() => {
        runs.inner++
        return Handler.result(undefined, [
          DomainEvent.draft(
            { aggregateType: "Note", aggregateId: command.note, aggregateVersion: 1 },
            new Noted({ note: command.note })
          )
        ])
      }),
    // Dispatches Inner, then fails: its savepoint rolls back, Inner's work with it.
    Middle: (command) =>
      Effect.gen(function*() {
        yield* Effect.orDie(
          bus.dispatch(new Inner({ note: "inner", userId: "alice", idempotencyKey: command.key })) as Effect.Effect<
            void,
            unknown
          >
        )
        return yield* new Refused()
      }),
    // Goes on past Middle's failure, and commits.
    Outer: (command) =>
      Effect.gen(function*() {
        yield* Effect.ignore(
          bus.dispatch(new Middle({ key: command.key, userId: "alice" })) as Effect.Effect<void, unknown>
        )
        return Handler.result(undefined)
      })
  }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
  return {
    dispatch: (command: Inner | Middle | Outer) =>
      bus.dispatch(command) as Effect.Effect<void, unknown, Layer.Layer.Success<typeof InMemory.layer>>,
    runs
  }
}

it.live("a keyed dispatch in a savepoint that rolled back is run again, not replayed, though the outer committed", () =>
  Effect.gen(function*() {
    const { dispatch, runs } = makeBus()
    yield* dispatch(new Outer({ key: "k-1", userId: "alice" }))
    const outbox = yield* Outbox.Outbox
    // Inner's event went with Middle's savepoint.
    expect((yield* outbox.read({ after: 0, limit: 10 })).length).toBe(0)
    const again = yield* Idempotency.observeReplay(
      dispatch(new Inner({ note: "inner", userId: "alice", idempotencyKey: "k-1" }))
    )
    assert.isFalse(again.replayed, "Inner's key replayed a success that never committed")
    expect(runs.inner).toBe(2)
  }).pipe(Effect.provide(InMemory.layer)))
