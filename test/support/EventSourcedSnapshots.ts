/**
 * Snapshots of event-sourced aggregates, for the in-memory store and the SQL
 * one alike: a dispatch that folds a snapshot and the events after it
 * decides as one that folds the whole stream (a property over command
 * sequences and `every`), and reads no more than `every` events; a
 * snapshot of another key (version, state schema), one that does not
 * decode, and one ahead of its stream are ignored; a dispatch that rolls
 * back leaves none; two dispatches in one transaction go on from each other;
 * `pruneSnapshots` deletes those under keys the decider no longer reads.
 */
import { assert, expect } from "@effect/vitest"
import type { Vitest } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as Schema from "effect/Schema"
import fc from "fast-check"
import {
  Command,
  CommandBus,
  CommandError,
  EventSourced,
  EventStore,
  Handler,
  Middleware,
  type Outbox,
  type UnitOfWork
} from "../../src/index.js"
import * as Ledger from "./Ledger.js"

type World = EventStore.EventStore | Outbox.Outbox | UnitOfWork.UnitOfWork

const streamId = (ledgerId: string): EventStore.StreamId => ({ aggregateType: "Ledger", aggregateId: ledgerId })

/** The stream's committed events (read outside any transaction). */
export const streamOf = (ledgerId: string) =>
  Effect.flatMap(EventStore.EventStore, (store) => store.read(streamId(ledgerId)))

const snapshotsOf = Effect.map(EventStore.EventStore, (store) => {
  assert(store.snapshots !== undefined, "the store keeps snapshots")
  return store.snapshots
})

/** The stream's snapshot under `decider`'s key. */
export const snapshotOf = (decider: Ledger.Decider, ledgerId: string) =>
  Effect.flatMap(
    snapshotsOf,
    (snapshots) => snapshots.load(streamId(ledgerId), EventSourced.snapshotSchemaVersion(decider)!)
  )

/** Saves a snapshot outside any dispatch: one a test plants. */
export const plant = (decider: Ledger.Decider, ledgerId: string, version: number, state: unknown) =>
  Effect.flatMap(
    snapshotsOf,
    (snapshots) =>
      snapshots.save(streamId(ledgerId), {
        schemaVersion: EventSourced.snapshotSchemaVersion(decider)!,
        version,
        state
      })
  )

/** The state the stream's events up to `version` fold into. */
export const foldTo = (ledgerId: string, version: number) =>
  Effect.map(streamOf(ledgerId), (stored) => {
    const folded = EventSourced.fold(
      Ledger.deciderWith(),
      streamId(ledgerId),
      stored.filter((event) => event.aggregateVersion <= version)
    )
    assert(Either.isRight(folded))
    return folded.right.state
  })

const decodeState = Schema.decodeUnknownSync(Ledger.State)

const plain = Ledger.busOf(Ledger.deciderWith())

// The store, recording how many events each read of a stream returned.
const counting = (store: EventStore.Service, reads: Array<number>): EventStore.Service => ({
  ...store,
  read: (stream, options) =>
    Effect.tap(store.read(stream, options), (events) => Effect.sync(() => reads.push(events.length)))
})

const commandArbitrary = fc.oneof(
  fc.record({
    _tag: fc.constant("Credit" as const),
    amount: fc.integer({ min: 0, max: 20 }),
    tag: fc.constantFrom("a", "b", "c", "d"),
    times: fc.integer({ min: 1, max: 4 })
  }),
  fc.record({ _tag: fc.constant("Debit" as const), amount: fc.integer({ min: 0, max: 40 }) })
)

type CommandSpec = typeof commandArbitrary extends fc.Arbitrary<infer A> ? A : never

const commandOf = (spec: CommandSpec, ledgerId: string): Ledger.LedgerCommand =>
  spec._tag === "Credit"
    ? new Ledger.Credit({ ledgerId, amount: spec.amount, tag: spec.tag, times: spec.times })
    : new Ledger.Debit({ ledgerId, amount: spec.amount })

/** Poison: a state the stream's events never fold into, to see whether a dispatch read it. */
const poison = { balance: 999, tags: ["poison"], last: [] }

let runs = 0
const freshId = (prefix: string) => `${prefix}-${++runs}-${Math.random().toString(36).slice(2, 8)}`

export const snapshotCases = <X extends boolean>(
  it: Vitest.MethodsNonLive<World, X>,
  options: { readonly numRuns: number }
) => {
  it.effect("a snapshot and the events after it decide as the whole stream does, reading at most `every` events", () =>
    Effect.gen(function*() {
      const runtime = yield* Effect.runtime<World>()
      const store = yield* EventStore.EventStore
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(
            fc.integer({ min: 1, max: 6 }),
            fc.array(commandArbitrary, { minLength: 1, maxLength: 25 }),
            (every, specs) => {
              const decider = Ledger.deciderWith({ state: Ledger.State, every })
              const snapshotting = Ledger.busOf(decider)
              const withSnapshots = freshId("s")
              const without = freshId("p")
              const reads: Array<number> = []
              return Runtime.runPromise(runtime)(Effect.gen(function*() {
                for (const spec of specs) {
                  const exit = yield* Effect.exit(
                    Effect.provideService(
                      snapshotting.dispatch(commandOf(spec, withSnapshots)),
                      EventStore.EventStore,
                      counting(store, reads)
                    )
                  )
                  expect(exit).toEqual(yield* Effect.exit(plain.dispatch(commandOf(spec, without))))
                  const stream = yield* streamOf(withSnapshots)
                  const head = stream.length === 0 ? 0 : stream[stream.length - 1]!.aggregateVersion
                  const snapshot = yield* snapshotOf(decider, withSnapshots)
                  // Taken as soon as a dispatch folded `every` events past the last one.
                  expect(head - Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.version })).toBeLessThan(
                    every
                  )
                  if (Option.isSome(snapshot)) {
                    expect(decodeState(snapshot.value.state)).toEqual(
                      yield* foldTo(withSnapshots, snapshot.value.version)
                    )
                  }
                }
                // The snapshot's own event and those after it, fewer than `every` of them.
                expect(Math.max(...reads)).toBeLessThanOrEqual(every)
              }))
            }
          ),
          { numRuns: options.numRuns }
        )
      )
    }))

  it.effect("the handler reads the stream after its snapshot's version, from the snapshot's own event", () =>
    Effect.gen(function*() {
      const decider = Ledger.deciderWith({ state: Ledger.State, every: 4 })
      const ledgerId = freshId("after")
      const store = yield* EventStore.EventStore
      const seen: Array<number | undefined> = []
      const spying: EventStore.Service = {
        ...store,
        read: (stream, options) => {
          seen.push(options?.after)
          return store.read(stream, options)
        }
      }
      const bus = Ledger.busOf(decider)
      for (let i = 0; i < 6; i++) {
        yield* Effect.provideService(
          bus.dispatch(new Ledger.Credit({ ledgerId, amount: 1, tag: "a", times: 1 })),
          EventStore.EventStore,
          spying
        )
      }
      // None until version 4, then from the snapshot at 4.
      expect(seen).toEqual([undefined, undefined, undefined, undefined, 3, 3])
      expect(Option.map(yield* snapshotOf(decider, ledgerId), (s) => s.version)).toEqual(Option.some(4))
    }))

  it.effect("a snapshot of another version, or of another state schema, is never read; each key has its own", () =>
    Effect.gen(function*() {
      const first = Ledger.deciderWith({ state: Ledger.State, every: 100 })
      const bumped = Ledger.deciderWith({ state: Ledger.State, every: 100, version: 2 })
      // The same type, another encoding: `last` stored newest first. A state the first schema
      // encoded decodes under it, reversed: only the key tells them apart.
      const reversed = Ledger.deciderWith({
        state: Schema.Struct({
          balance: Schema.Int,
          tags: Schema.ReadonlySet(Schema.String),
          last: Schema.transform(Schema.Array(Schema.Int), Schema.Array(Schema.Int), {
            strict: true,
            decode: (last) => [...last].reverse(),
            encode: (last) => [...last].reverse()
          })
        }),
        every: 100
      })
      const keys = [first, bumped, reversed].map(EventSourced.snapshotSchemaVersion)
      expect(new Set(keys).size).toBe(3)
      expect(keys[0]).toMatch(/^1:[0-9a-f]{16}$/)
      expect(keys[1]).toMatch(/^2:/)

      const ledgerId = freshId("keys")
      yield* plain.dispatch(new Ledger.Credit({ ledgerId, amount: 5, tag: "a", times: 1 }))
      yield* plant(first, ledgerId, 1, poison)
      const credit = new Ledger.Credit({ ledgerId, amount: 1, tag: "b", times: 1 })
      const expected = new Ledger.Summary({ balance: 6, tags: ["a", "b"], last: [5, 1], version: 2 })
      // Read under its own key: the planted state is what that decider goes on from.
      expect(yield* Ledger.busOf(first).dispatch(credit)).toEqual(
        new Ledger.Summary({ balance: 1000, tags: ["b", "poison"], last: [1], version: 2 })
      )
      expect(yield* Ledger.busOf(bumped).dispatch(credit)).toEqual(
        new Ledger.Summary({ ...expected, balance: 7, last: [5, 1, 1], version: 3 })
      )
      expect(yield* Ledger.busOf(reversed).dispatch(credit)).toEqual(
        new Ledger.Summary({ ...expected, balance: 8, last: [1, 1, 1], version: 4 })
      )
    }))

  it.effect("a snapshot whose state does not decode is ignored, and replaced", () =>
    Effect.gen(function*() {
      const decider = Ledger.deciderWith({ state: Ledger.State, every: 2 })
      const ledgerId = freshId("undecodable")
      yield* plain.dispatch(new Ledger.Credit({ ledgerId, amount: 5, tag: "a", times: 3 }))
      yield* plant(decider, ledgerId, 3, { balance: "lots" })
      expect(yield* Ledger.busOf(decider).dispatch(new Ledger.Debit({ ledgerId, amount: 2 }))).toEqual(
        new Ledger.Summary({ balance: 13, tags: ["a"], last: [5, 5, -2], version: 4 })
      )
      const snapshot = yield* snapshotOf(decider, ledgerId)
      assert(Option.isSome(snapshot))
      expect(snapshot.value.version).toBe(4)
      expect(decodeState(snapshot.value.state)).toEqual(yield* foldTo(ledgerId, 4))
    }))

  it.effect("a snapshot ahead of its stream is ignored: the dispatch goes on from the stream's last event", () =>
    Effect.gen(function*() {
      const decider = Ledger.deciderWith({ state: Ledger.State, every: 3 })
      const ledgerId = freshId("ahead")
      yield* plain.dispatch(new Ledger.Credit({ ledgerId, amount: 5, tag: "a", times: 2 }))
      // As a dispatch outside a transaction leaves one whose events then failed to append.
      yield* plant(decider, ledgerId, 7, poison)
      expect(yield* Ledger.busOf(decider).dispatch(new Ledger.Credit({ ledgerId, amount: 1, tag: "b", times: 1 })))
        .toEqual(new Ledger.Summary({ balance: 11, tags: ["a", "b"], last: [5, 5, 1], version: 3 }))
      expect((yield* streamOf(ledgerId)).map((event) => event.aggregateVersion)).toEqual([1, 2, 3])
      // Folded from the start, 3 events: the snapshot is replaced by one at the stream's version.
      expect(Option.map(yield* snapshotOf(decider, ledgerId), (s) => s.version)).toEqual(Option.some(3))
    }))

  it.effect("a dispatch that rolls back leaves no snapshot; one that commits leaves it", () =>
    Effect.gen(function*() {
      const decider = Ledger.deciderWith({ state: Ledger.State, every: 1 })
      const ledgerId = freshId("rolled")
      const rolledBack = CommandBus.make([Ledger.Credit, Ledger.Debit], Ledger.handlersOf(decider)).pipe(
        CommandBus.withMiddleware(
          Middleware.transaction,
          Middleware.make<Rollback>("rollback", (self) => Effect.zipRight(self, Effect.fail(new Rollback())))
        )
      )
      const credit = new Ledger.Credit({ ledgerId, amount: 5, tag: "a", times: 2 })
      expect(yield* Effect.flip(rolledBack.dispatch(credit))).toEqual(new Rollback())
      expect(yield* snapshotOf(decider, ledgerId)).toEqual(Option.none())
      expect(yield* Ledger.busOf(decider).dispatch(credit)).toEqual(
        new Ledger.Summary({ balance: 10, tags: ["a"], last: [5, 5], version: 2 })
      )
      expect(yield* Effect.flip(rolledBack.dispatch(credit))).toEqual(new Rollback())
      const snapshot = yield* snapshotOf(decider, ledgerId)
      assert(Option.isSome(snapshot))
      expect(snapshot.value.version).toBe(2)
      expect(decodeState(snapshot.value.state)).toEqual(yield* foldTo(ledgerId, 2))
    }))

  it.effect("two dispatches in one transaction, each taking a snapshot: the second goes on from the first", () =>
    Effect.gen(function*() {
      const decider = Ledger.deciderWith({ state: Ledger.State, every: 1 })
      const ledgerId = freshId("twice")
      const handlers = Ledger.handlersOf(decider)
      const inner = CommandBus.make([Ledger.Credit, Ledger.Debit], handlers).pipe(
        CommandBus.withMiddleware(Middleware.transaction)
      )
      const twice = Handler.make(Twice, (command) =>
        Effect.gen(function*() {
          const credit = new Ledger.Credit({ ledgerId: command.ledgerId, amount: 3, tag: "t", times: 1 })
          const first = yield* Effect.orDie(inner.dispatch(credit))
          const second = yield* Effect.orDie(inner.dispatch(credit))
          return Handler.result([first.version, second.version, second.balance])
        }))
      const outer = CommandBus.make([Twice], { Twice: twice }).pipe(CommandBus.withMiddleware(Middleware.transaction))
      expect(yield* outer.dispatch(new Twice({ ledgerId }))).toEqual([1, 2, 6])
      expect((yield* streamOf(ledgerId)).map((event) => event.aggregateVersion)).toEqual([1, 2])
      const snapshot = yield* snapshotOf(decider, ledgerId)
      assert(Option.isSome(snapshot))
      expect(snapshot.value.version).toBe(2)
      expect(decodeState(snapshot.value.state)).toEqual(yield* foldTo(ledgerId, 2))
      expect((yield* inner.dispatch(new Ledger.Debit({ ledgerId, amount: 1 }))).balance).toBe(5)
    }))

  pruneSnapshotsCase(it)
}

// The snapshots of the type `pruneSnapshots(decider)` deletes, counted in batches of 2.
const pruneSnapshotsCase = <X extends boolean>(it: Vitest.MethodsNonLive<World, X>) =>
  it.effect("pruneSnapshots deletes the type's snapshots under other keys, in batches, and keeps its own", () =>
    Effect.gen(function*() {
      const current = Ledger.deciderWith({ state: Ledger.State, every: 100, version: 3 })
      const previous = Ledger.deciderWith({ state: Ledger.State, every: 100, version: 2 })
      // What earlier cases left under other keys goes first, so the count below is this case's.
      yield* EventSourced.pruneSnapshots(current)
      const ids = [freshId("prune"), freshId("prune"), freshId("prune")]
      const state = { balance: 1, tags: [], last: [1] }
      for (const ledgerId of ids) yield* plant(previous, ledgerId, 1, state)
      yield* plant(current, ids[0]!, 1, state)

      expect(yield* EventSourced.pruneSnapshots(current, { batchSize: 2 })).toBe(3)
      for (const ledgerId of ids) expect(yield* snapshotOf(previous, ledgerId)).toEqual(Option.none())
      expect(Option.map(yield* snapshotOf(current, ids[0]!), (snapshot) => snapshot.version)).toEqual(Option.some(1))
      expect(yield* EventSourced.pruneSnapshots(current)).toBe(0)
      // A decider without snapshots reads none: all of its type's go.
      expect(yield* EventSourced.pruneSnapshots(Ledger.deciderWith())).toBe(1)
      expect(yield* snapshotOf(current, ids[0]!)).toEqual(Option.none())
    }))

class Rollback extends Schema.TaggedError<Rollback>()("Rollback", {}) {}

class Twice extends Command.Class<Twice>()("Twice", {
  payload: { ledgerId: Schema.String },
  success: Schema.Array(Schema.Int),
  failure: CommandError.ConcurrencyConflict
}) {}
