/**
 * Snapshots of event-sourced aggregates on a database (the server in
 * `DATABASE_URL`, else PGlite): the cases shared with the in-memory store
 * (test/support/EventSourcedSnapshots.ts), the rows of `event_snapshots`
 * (migration 16), and the stream's guard with snapshots: on the server, N
 * dispatches that all read the same version before any decides; with retry
 * all commit once, at versions 1..N, the snapshots folding what committed;
 * without, one commits, and only its snapshot is there.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { CommandError, EventSourced } from "../../src/index.js"
import { SqlStores } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { foldTo, snapshotCases, snapshotOf, streamOf } from "../support/EventSourcedSnapshots.js"
import * as Ledger from "../support/Ledger.js"
import * as RacingReads from "../support/RacingReads.js"

const n = 8
const onServer = TestDatabase.serverUrl !== undefined

// On the server, the first `racers` reads of the stream wait for one another: each of those
// dispatches has read the same version, in its own open transaction, before any decides.
const racing = <A, E, R>(racers: number, self: Effect.Effect<A, E, R>) =>
  !onServer ? self : RacingReads.racing(racers, self)

const snapshotRows = (ledgerId: string) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql<{ readonly schema_version: string; readonly version: number; readonly state: unknown }>`
      SELECT schema_version, version, state FROM event_snapshots
      WHERE aggregate_type = 'Ledger' AND aggregate_id = ${ledgerId} ORDER BY schema_version`.withoutTransform
  )

const decodeState = Schema.decodeUnknownSync(Ledger.State)

const range = (k: number) => Array.from({ length: k }, (_, i) => i + 1)

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), {
  excludeTestServices: true,
  timeout: "120 seconds"
})(
  `EventSourced snapshots on ${TestDatabase.kind}`,
  (it) => {
    snapshotCases(it, { numRuns: 12 })

    it.effect("a snapshot is a row of event_snapshots: the state encoded as JSON, under its key, at its version", () =>
      Effect.gen(function*() {
        const decider = Ledger.deciderWith({ state: Ledger.State, every: 3 })
        const bus = Ledger.busOf(decider)
        for (const tag of ["x", "y", "x", "z"]) {
          yield* bus.dispatch(new Ledger.Credit({ ledgerId: "rows", amount: 2, tag, times: 1 }))
        }
        expect(yield* snapshotRows("rows")).toEqual([{
          schema_version: EventSourced.snapshotSchemaVersion(decider),
          version: 3,
          state: { balance: 6, tags: ["x", "y"], last: [2, 2, 2] }
        }])
        // Another key beside it, not in its place.
        const bumped = Ledger.deciderWith({ state: Ledger.State, every: 3, version: 2 })
        yield* Ledger.busOf(bumped).dispatch(new Ledger.Debit({ ledgerId: "rows", amount: 1 }))
        expect((yield* snapshotRows("rows")).map((row) => row.version).sort()).toEqual([3, 5])
      }))

    it.effect(`${n} concurrent dispatches on one stream with snapshots, with retry: each commits once, at versions 1..${n}`, () =>
      Effect.gen(function*() {
        const decider = Ledger.deciderWith({ state: Ledger.State, every: 2 })
        const bus = Ledger.busOf(decider, 2 * n)
        const results = yield* racing(
          n,
          Effect.all(
            range(n).map((amount) =>
              bus.dispatch(new Ledger.Credit({ ledgerId: "raced", amount, tag: `t${amount}`, times: 1 }))
            ),
            { concurrency: "unbounded" }
          )
        )
        expect(results.map((result) => result.version).sort((a, b) => a - b)).toEqual(range(n))
        const stream = yield* streamOf("raced")
        expect(stream.map((event) => event.aggregateVersion)).toEqual(range(n))
        expect(stream.map((event) => (event.payload as { amount: number }).amount).sort((a, b) => a - b)).toEqual(
          range(n)
        )
        const snapshot = yield* snapshotOf(decider, "raced")
        assert(Option.isSome(snapshot))
        expect(n - snapshot.value.version).toBeLessThan(2)
        expect(decodeState(snapshot.value.state)).toEqual(yield* foldTo("raced", snapshot.value.version))
        expect((yield* bus.dispatch(new Ledger.Debit({ ledgerId: "raced", amount: 0 }))).balance).toBe(
          (n * (n + 1)) / 2
        )
      }))

    it.effect(`${n} concurrent dispatches on one stream with snapshots, without retry: ${onServer ? "one commits, and only its snapshot is there" : "they commit in turn"}`, () =>
      Effect.gen(function*() {
        // Every dispatch would take one: two events each, `every` 2.
        const decider = Ledger.deciderWith({ state: Ledger.State, every: 2 })
        const bus = Ledger.busOf(decider, 0)
        const exits = yield* racing(
          n,
          Effect.all(
            range(n).map((amount) =>
              Effect.exit(bus.dispatch(new Ledger.Credit({ ledgerId: "once", amount, tag: "t", times: 2 })))
            ),
            { concurrency: "unbounded" }
          )
        )
        const stream = yield* streamOf("once")
        if (onServer) {
          expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
          expect(exits.filter(Exit.isFailure)).toEqual(Array.from({ length: n - 1 }, () =>
            Exit.fail(
              new CommandError.ConcurrencyConflict({ aggregateType: "Ledger", aggregateId: "once", expectedVersion: 0 })
            )))
          expect(stream.map((event) => event.aggregateVersion)).toEqual([1, 2])
        } else {
          expect(exits.every(Exit.isSuccess)).toBe(true)
          expect(stream.map((event) => event.aggregateVersion)).toEqual(range(2 * n))
        }
        const rows = yield* snapshotRows("once")
        expect(rows.map((row) => row.version)).toEqual([stream.length])
        expect(decodeState(rows[0]!.state)).toEqual(yield* foldTo("once", stream.length))
      }))
  }
)
