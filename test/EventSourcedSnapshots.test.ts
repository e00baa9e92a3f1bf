/**
 * Snapshots of event-sourced aggregates in memory: the cases shared with the
 * databases (test/support/EventSourcedSnapshots.ts), and what only a test
 * sees here: a `Specification` of a decider with snapshots, a store without
 * snapshots (a test's stand-in), and a state whose schema does not encode
 * to JSON, which takes none and says why.
 */
import { assert, describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { EventSourced, EventStore } from "../src/index.js"
import { InMemory, Specification } from "../src/testing/index.js"
import { snapshotCases, snapshotOf, streamOf } from "./support/EventSourcedSnapshots.js"
import * as Ledger from "./support/Ledger.js"

layer(InMemory.layer)("EventSourced snapshots in memory", (it) => {
  snapshotCases(it, { numRuns: 100 })
})

describe("EventSourced snapshots, in memory only", () => {
  const decider = Ledger.deciderWith({ state: Ledger.State, every: 2 })

  describe("Specification", () => {
    const spec = Specification.make({
      bus: Ledger.busOf(decider),
      layer: InMemory.layer,
      evolve: EventSourced.given(decider, (event) => event.ledgerId)
    })

    it.effect("given prior events, when a command, then its value: the snapshot's decider decides as before", () =>
      spec.given(
        new Ledger.Credited({ ledgerId: "l", amount: 5, tag: "a" }),
        new Ledger.Credited({ ledgerId: "l", amount: 5, tag: "b" }),
        new Ledger.Debited({ ledgerId: "l", amount: 3 })
      )
        .when(new Ledger.Debit({ ledgerId: "l", amount: 4 }))
        .thenSucceeds(
          new Ledger.Summary({ balance: 3, tags: ["a", "b"], last: [5, -3, -4], version: 4 }),
          new Ledger.Debited({ ledgerId: "l", amount: 4 })
        ))

    it.effect("given prior events, when a command, then its typed failure", () =>
      spec.given(new Ledger.Credited({ ledgerId: "l", amount: 5, tag: "a" }))
        .when(new Ledger.Debit({ ledgerId: "l", amount: 6 }))
        .thenFails(new Ledger.InsufficientFunds({ balance: 5 })))
  })

  it.effect("a store without snapshots reads every stream whole, and decides the same", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const without: EventStore.Service = { read: store.read, advance: store.advance }
      const bus = Ledger.busOf(decider)
      const credit = new Ledger.Credit({ ledgerId: "bare", amount: 2, tag: "a", times: 3 })
      yield* Effect.provideService(bus.dispatch(credit), EventStore.EventStore, without)
      expect(yield* Effect.provideService(bus.dispatch(credit), EventStore.EventStore, without)).toEqual(
        new Ledger.Summary({ balance: 12, tags: ["a"], last: [2, 2, 2], version: 6 })
      )
      expect(yield* snapshotOf(decider, "bare")).toEqual(Option.none())
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("pruneSnapshots: none to delete on a store without snapshots; refused on one that cannot delete them", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const without: EventStore.Service = { read: store.read, advance: store.advance }
      expect(yield* Effect.provideService(EventSourced.pruneSnapshots(decider), EventStore.EventStore, without)).toBe(0)
      const { prune: _, ...snapshots } = store.snapshots!
      const older: EventStore.Service = { ...store, snapshots }
      expect(
        yield* Effect.flip(Effect.provideService(EventSourced.pruneSnapshots(decider), EventStore.EventStore, older))
      ).toEqual(new EventSourced.SnapshotPruneUnsupported({ aggregateType: "Ledger" }))
      const badBatch = yield* Effect.exit(EventSourced.pruneSnapshots(decider, { batchSize: 0 }))
      expect(String(badBatch)).toContain("batchSize must be a positive integer, got 0")
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("a state whose schema does not encode to JSON takes no snapshot, says why, and the dispatch commits", () =>
    Effect.gen(function*() {
      const logs: Array<string> = []
      const notJson = Ledger.deciderWith({
        state: Schema.Struct({
          balance: Schema.Int,
          tags: Schema.ReadonlySetFromSelf(Schema.String),
          last: Schema.Array(Schema.Int)
        }),
        every: 1
      })
      const result = yield* Ledger.busOf(notJson).dispatch(
        new Ledger.Credit({ ledgerId: "set", amount: 1, tag: "a", times: 1 })
      ).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => logs.push(String(message)))))
      )
      expect(result).toEqual(new Ledger.Summary({ balance: 1, tags: ["a"], last: [1], version: 1 }))
      expect((yield* streamOf("set")).map((event) => event.aggregateVersion)).toEqual([1])
      expect(yield* snapshotOf(notJson, "set")).toEqual(Option.none())
      assert(logs.length === 1)
      expect(logs[0]).toContain(
        `EventSourced: Ledger "set": no snapshot taken at version 1: the state, encoded, $.tags is a Set`
      )
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("a snapshot interval that is no positive integer fails each dispatch, saying so, and writes nothing", () =>
    Effect.gen(function*() {
      for (const every of [0, -1, 1.5, Number.NaN]) {
        const bad = Ledger.deciderWith({ state: Ledger.State, every })
        const exit = yield* Effect.exit(
          Ledger.busOf(bad).dispatch(new Ledger.Credit({ ledgerId: "bad", amount: 1, tag: "a", times: 1 }))
        )
        assert(exit._tag === "Failure")
        expect(String(exit.cause)).toContain(
          `EventSourced: Ledger's snapshot.every must be a positive integer, got ${String(every)}`
        )
      }
      expect(yield* streamOf("bad")).toEqual([])
    }).pipe(Effect.provide(InMemory.layer)))

  it("the key is of the schemas and the version, not of code: the same whatever evolve's source, so a build does not change it", () => {
    const decider = Ledger.deciderWith({ state: Ledger.State, every: 2 })
    // The same fold written otherwise (as another build's output would read), and a fold that computes otherwise.
    const rewritten = {
      ...decider,
      evolve: (state: Ledger.State, event: Ledger.Credited | Ledger.Debited) => decider.evolve(state, event)
    }
    const other = { ...decider, evolve: (state: Ledger.State) => state }
    const keys = [decider, rewritten, other].map(EventSourced.snapshotSchemaVersion)
    expect(new Set(keys).size).toBe(1)
    // Which is why a fold that computes otherwise bumps the version.
    const bumped = { ...other, snapshot: { ...decider.snapshot!, version: 2 } }
    expect(EventSourced.snapshotSchemaVersion(bumped)).not.toBe(keys[0])
  })
})
