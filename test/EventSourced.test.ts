/**
 * Event-sourced aggregates in memory: the decider's fold and decisions, the
 * versions of the events its handler returns, typed failures, stored events
 * that do not decode, and two dispatches from one version of a stream.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { CommandBus, CommandError, DomainEvent, EventSourced, EventStore, Middleware, Outbox } from "../src/index.js"
import { InMemory, Specification } from "../src/testing/index.js"
import {
  commands,
  Counter,
  handlers,
  Increment,
  IncrementEach,
  Incremented,
  NothingToReset,
  Reset,
  ResetCounter,
  TooHigh
} from "./support/Counter.js"
import * as RacingReads from "./support/RacingReads.js"

class Rollback extends Schema.TaggedError<Rollback>()("Rollback", {}) {}

const bare = CommandBus.make(commands, handlers)
const transactional = bare.pipe(
  CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(10) }), Middleware.transaction)
)

const streamOf = (counterId: string) =>
  Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 1000 })).pipe(
    Effect.map((stored) =>
      stored
        .filter((s) => s.event.aggregateType === "Counter" && s.event.aggregateId === counterId)
        .map((s) => ({ type: s.event.type, version: s.event.aggregateVersion, payload: s.event.payload }))
    )
  )

const stored = (counterId: string, version: number, type: string, payload: unknown) =>
  Effect.flatMap(Outbox.Outbox, (outbox) =>
    outbox.append([
      new DomainEvent.Envelope({
        eventId: crypto.randomUUID(),
        type,
        aggregateType: "Counter",
        aggregateId: counterId,
        aggregateVersion: version,
        occurredAt: new Date(0) as never,
        correlationId: "c",
        causationId: "c",
        payload
      }, { disableValidation: true })
    ]))

const defectOf = (exit: Exit.Exit<unknown, unknown>): string => {
  assert(Exit.isFailure(exit))
  const defect = Cause.dieOption(exit.cause)
  assert(defect._tag === "Some")
  return String((defect.value as Error).message)
}

// The in-memory world, whose stream reads wait until the first `racers` have read: those all
// read the same version before any of them decides.
const racingWorld = (racers: number) =>
  Layer.effect(
    EventStore.EventStore,
    RacingReads.racingReads(racers)
  ).pipe(Layer.provideMerge(InMemory.layer))

describe("EventSourced", () => {
  describe("fold", () => {
    it("folds a stream with evolve from the initial state, to its last event's version", () => {
      const envelopes = [
        { type: "Incremented", payload: { counterId: "a", by: 2 }, version: 1 },
        { type: "Incremented", payload: { counterId: "a", by: 5 }, version: 2 },
        { type: "Reset", payload: { counterId: "a" }, version: 3 },
        { type: "Incremented", payload: { counterId: "a", by: 7 }, version: 4 }
      ].map((e) =>
        new DomainEvent.Envelope({
          eventId: crypto.randomUUID(),
          type: e.type,
          aggregateType: "Counter",
          aggregateId: "a",
          aggregateVersion: e.version,
          occurredAt: new Date(0) as never,
          correlationId: "c",
          causationId: "c",
          payload: e.payload
        }, { disableValidation: true })
      )
      const folded = EventSourced.fold(Counter, { aggregateType: "Counter", aggregateId: "a" }, envelopes)
      expect(folded).toEqual(Either.right({ state: { count: 7 }, version: 4 }))
      expect(EventSourced.fold(Counter, { aggregateType: "Counter", aggregateId: "a" }, [])).toEqual(
        Either.right({ state: { count: 0 }, version: 0 })
      )
    })
  })

  describe("handler", () => {
    it.effect("appends each decision's events at the versions after the stream's last, and succeeds with the state", () =>
      Effect.gen(function*() {
        expect(yield* bare.dispatch(new Increment({ counterId: "a", by: 2 }))).toEqual({ count: 2, version: 1 })
        expect(yield* bare.dispatch(new IncrementEach({ counterId: "a", by: 3, times: 3 }))).toBe(11)
        expect(yield* bare.dispatch(new Increment({ counterId: "a", by: 1 }))).toEqual({ count: 12, version: 5 })
        expect(yield* bare.dispatch(new ResetCounter({ counterId: "a" }))).toBe(0)
        // Another stream starts at 1.
        expect(yield* bare.dispatch(new Increment({ counterId: "b", by: 4 }))).toEqual({ count: 4, version: 1 })
        expect((yield* streamOf("a")).map((e) => [e.type, e.version])).toEqual([
          ["Incremented", 1],
          ["Incremented", 2],
          ["Incremented", 3],
          ["Incremented", 4],
          ["Incremented", 5],
          ["Reset", 6]
        ])
        expect((yield* streamOf("b")).map((e) => e.version)).toEqual([1])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("fails with the command's own typed failure and appends nothing", () =>
      Effect.gen(function*() {
        yield* bare.dispatch(new Increment({ counterId: "a", by: 99 }))
        const tooHigh = yield* Effect.flip(bare.dispatch(new Increment({ counterId: "a", by: 2 })))
        expect(tooHigh).toEqual(new TooHigh({ counterId: "a", count: 99 }))
        const nothing = yield* Effect.flip(bare.dispatch(new ResetCounter({ counterId: "b" })))
        expect(nothing).toEqual(new NothingToReset({ counterId: "b" }))
        expect((yield* streamOf("a")).map((e) => e.version)).toEqual([1])
        expect(yield* streamOf("b")).toEqual([])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("a decision of no events moves no version", () =>
      Effect.gen(function*() {
        expect(yield* bare.dispatch(new IncrementEach({ counterId: "a", by: 1, times: 0 }))).toBe(0)
        expect(yield* bare.dispatch(new Increment({ counterId: "a", by: 1 }))).toEqual({ count: 1, version: 1 })
      }).pipe(Effect.provide(InMemory.layer)))

    // A fiber yields every few steps here, so each read's catch-up of the log is
    // interleaved with the others', as a long-running one's is at the default limit.
    it.effect("reads that catch up with the log at once each see a stream's events once, and it folds as before", () =>
      Effect.gen(function*() {
        yield* bare.dispatch(new IncrementEach({ counterId: "a", by: 1, times: 3 }))
        const store = yield* EventStore.EventStore
        const reads = yield* Effect.all(
          Array.from({ length: 4 }, () => store.read({ aggregateType: "Counter", aggregateId: "a" })),
          { concurrency: "unbounded" }
        ).pipe(Effect.withMaxOpsBeforeYield(20))
        expect(reads.map((events) => events.map((event) => event.aggregateVersion))).toEqual(
          Array.from({ length: 4 }, () => [1, 2, 3])
        )
        expect(yield* bare.dispatch(new Increment({ counterId: "a", by: 1 }))).toEqual({ count: 4, version: 4 })
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("a stored event that does not decode is a defect naming the event and why", () =>
      Effect.gen(function*() {
        yield* stored("a", 1, "Incremented", { counterId: "a", by: "two" })
        const message = defectOf(yield* Effect.exit(bare.dispatch(new Increment({ counterId: "a", by: 1 }))))
        expect(message).toContain("EventSourced: Counter \"a\": its stored event Incremented at version 1")
        expect(message).toContain("does not decode")
        expect(message).toContain("Expected number, actual \"two\"")
        yield* stored("b", 1, "Decremented", { counterId: "b" })
        expect(defectOf(yield* Effect.exit(bare.dispatch(new Increment({ counterId: "b", by: 1 }))))).toContain(
          "its stored event Decremented at version 1 (event id"
        )
        expect(defectOf(yield* Effect.exit(bare.dispatch(new Increment({ counterId: "b", by: 1 }))))).toContain(
          "is of none of the decider's event types (Incremented, Reset)"
        )
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("two dispatches from one version: the second fails with ConcurrencyConflict and publishes nothing", () =>
      Effect.gen(function*() {
        const racing = CommandBus.make(commands, handlers).pipe(CommandBus.withMiddleware(Middleware.transaction))
        const exits = yield* Effect.all([
          Effect.exit(racing.dispatch(new Increment({ counterId: "a", by: 1 }))),
          Effect.exit(racing.dispatch(new Increment({ counterId: "a", by: 2 })))
        ], { concurrency: "unbounded" })
        expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
        const failed = exits.find(Exit.isFailure)!
        expect(failed).toEqual(
          Exit.fail(
            new CommandError.ConcurrencyConflict({ aggregateType: "Counter", aggregateId: "a", expectedVersion: 0 })
          )
        )
        expect((yield* streamOf("a")).map((e) => e.version)).toEqual([1])
      }).pipe(Effect.provide(racingWorld(2))))

    it.effect("with retry, N dispatches from one version all succeed once, at versions 1..N", () =>
      Effect.gen(function*() {
        const n = 6
        const results = yield* Effect.all(
          Array.from({ length: n }, (_, i) => transactional.dispatch(new Increment({ counterId: "a", by: i + 1 }))),
          { concurrency: "unbounded" }
        )
        expect(results.map((r) => r.version).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6])
        const stream = yield* streamOf("a")
        expect(stream.map((e) => e.version)).toEqual([1, 2, 3, 4, 5, 6])
        expect(stream.map((e) => (e.payload as { by: number }).by).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6])
      }).pipe(Effect.provide(racingWorld(6))))

    it.effect("a dispatch that rolls back gives its version back: the next one appends at it", () =>
      Effect.gen(function*() {
        // Fails after the handler, inside the transaction.
        const failing = Middleware.make<Rollback>(
          "rollback",
          (self) => Effect.zipRight(self, Effect.fail(new Rollback()))
        )
        const rolledBack = CommandBus.make(commands, handlers).pipe(
          CommandBus.withMiddleware(Middleware.transaction, failing)
        )
        yield* transactional.dispatch(new Increment({ counterId: "a", by: 1 }))
        expect(yield* Effect.flip(rolledBack.dispatch(new Increment({ counterId: "a", by: 1 })))).toEqual(
          new Rollback()
        )
        expect(yield* transactional.dispatch(new Increment({ counterId: "a", by: 1 }))).toEqual({
          count: 2,
          version: 2
        })
        expect((yield* streamOf("a")).map((e) => e.version)).toEqual([1, 2])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("handlers are tested with a mock EventStore", () =>
      Effect.gen(function*() {
        const conflict = new CommandError.ConcurrencyConflict({
          aggregateType: "Counter",
          aggregateId: "a",
          expectedVersion: 0
        })
        const store = Layer.succeed(EventStore.EventStore, {
          read: () => Effect.succeed([]),
          advance: () => Effect.fail(conflict)
        })
        const result = yield* Effect.flip(handlers.Increment(new Increment({ counterId: "a", by: 1 })))
          .pipe(Effect.provide(store))
        expect(result).toEqual(conflict)
      }))
  })

  describe("Specification", () => {
    const spec = Specification.make({
      bus: transactional,
      layer: InMemory.layer,
      evolve: EventSourced.given(Counter, (event) => event.counterId)
    })

    it.effect("given prior events, when a command, then its events", () =>
      spec.given(new Incremented({ counterId: "a", by: 40 }), new Incremented({ counterId: "a", by: 2 }))
        .when(new Increment({ counterId: "a", by: 8 }))
        .then(new Incremented({ counterId: "a", by: 8 })))

    it.effect("given prior events, when a command, then its value", () =>
      spec.given(new Incremented({ counterId: "a", by: 40 }), new Reset({ counterId: "a" }))
        .when(new Increment({ counterId: "a", by: 8 }))
        .thenSucceeds({ count: 8, version: 3 }, new Incremented({ counterId: "a", by: 8 })))

    it.effect("given prior events, when a command, then its typed failure", () =>
      spec.given(new Incremented({ counterId: "a", by: 95 }))
        .when(new Increment({ counterId: "a", by: 8 }))
        .thenFails(new TooHigh({ counterId: "a", count: 95 })))

    it.effect("another aggregate's events are not this one's history", () =>
      spec.given(new Incremented({ counterId: "b", by: 95 }))
        .when(new Increment({ counterId: "a", by: 8 }))
        .thenSucceeds({ count: 8, version: 1 }, new Incremented({ counterId: "a", by: 8 })))
  })
})
