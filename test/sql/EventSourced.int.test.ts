/**
 * Event-sourced aggregates on a database: the stream's guard
 * (`event_streams`, `SqlEventStore`) holds under concurrent dispatches. On
 * the server, N dispatches that all read the same version before any
 * decides: with retry all commit once, at versions 1..N; without, one
 * commits and the others fail with `ConcurrencyConflict` and leave nothing.
 * The embedded database runs one transaction at a time, so there the same
 * dispatches never read one version, and all commit in turn. On both, a
 * dispatch that rolls back leaves no version behind, and a stream written
 * before the guard existed goes on from its last event.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { CommandBus, CommandError, DomainEvent, Middleware, Outbox } from "../../src/index.js"
import { SqlStores } from "../../src/sql/index.js"
import { commands, handlers, Increment, IncrementEach, Incremented } from "../support/Counter.js"
import * as TestDatabase from "../support/Database.js"
import * as RacingReads from "../support/RacingReads.js"

class Rollback extends Schema.TaggedError<Rollback>()("Rollback", {}) {}

const n = 8
const onServer = TestDatabase.serverUrl !== undefined

const retried = CommandBus.make(commands, handlers).pipe(
  CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(2 * n) }), Middleware.transaction)
)
const once = CommandBus.make(commands, handlers).pipe(CommandBus.withMiddleware(Middleware.transaction))
// Fails after the handler, inside the transaction: the dispatch rolls back.
const rolledBack = CommandBus.make(commands, handlers).pipe(
  CommandBus.withMiddleware(
    Middleware.transaction,
    Middleware.make<Rollback>("rollback", (self) => Effect.zipRight(self, Effect.fail(new Rollback())))
  )
)

// On the server, the first `racers` reads of the stream wait for one another: each of those
// dispatches has read the same version, in its own open transaction, before any decides.
const racing = <A, E, R>(racers: number, self: Effect.Effect<A, E, R>) =>
  !onServer ? self : RacingReads.racing(racers, self)

const streamRows = (counterId: string) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql<{ readonly aggregate_version: number; readonly event_id: string; readonly payload: { readonly by: number } }>`
      SELECT aggregate_version, event_id, payload FROM outbox
      WHERE aggregate_type = 'Counter' AND aggregate_id = ${counterId} ORDER BY aggregate_version, id`.withoutTransform
  )

const guard = (counterId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(
      sql<{ readonly version: number }>`SELECT version FROM event_streams
        WHERE aggregate_type = 'Counter' AND aggregate_id = ${counterId}`.withoutTransform,
      (rows) => rows.map((row) => row.version)
    ))

const range = (k: number) => Array.from({ length: k }, (_, i) => i + 1)

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), { excludeTestServices: true })(
  `EventSourced on ${TestDatabase.kind}`,
  (it) => {
    it.effect(`${n} concurrent dispatches on one stream, with retry: each commits once, at versions 1..${n}`, () =>
      Effect.gen(function*() {
        const results = yield* racing(
          n,
          Effect.all(
            range(n).map((by) => retried.dispatch(new Increment({ counterId: "retried", by }))),
            { concurrency: "unbounded" }
          )
        )
        expect(results.map((result) => result.version).sort((a, b) => a - b)).toEqual(range(n))
        expect(Math.max(...results.map((result) => result.count))).toBe((n * (n + 1)) / 2)
        const rows = yield* streamRows("retried")
        expect(rows.map((row) => row.aggregate_version)).toEqual(range(n))
        // Each command's event once: every amount, no event twice.
        expect(rows.map((row) => row.payload.by).sort((a, b) => a - b)).toEqual(range(n))
        expect(new Set(rows.map((row) => row.event_id)).size).toBe(n)
        expect(yield* guard("retried")).toEqual([n])
      }))

    it.effect(`${n} concurrent dispatches on one stream, without retry: ${onServer ? "one commits, the others fail with ConcurrencyConflict and leave nothing" : "they commit in turn (one transaction at a time)"}`, () =>
      Effect.gen(function*() {
        // Two events each: a loser's would show as versions past the winner's.
        const exits = yield* racing(
          n,
          Effect.all(
            range(n).map((by) => Effect.exit(once.dispatch(new IncrementEach({ counterId: "once", by, times: 2 })))),
            { concurrency: "unbounded" }
          )
        )
        const rows = yield* streamRows("once")
        if (onServer) {
          expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
          const conflict = Exit.fail(
            new CommandError.ConcurrencyConflict({ aggregateType: "Counter", aggregateId: "once", expectedVersion: 0 })
          )
          expect(exits.filter(Exit.isFailure)).toEqual(Array.from({ length: n - 1 }, () => conflict))
          expect(rows.map((row) => row.aggregate_version)).toEqual([1, 2])
          expect(new Set(rows.map((row) => row.payload.by)).size).toBe(1)
          expect(yield* guard("once")).toEqual([2])
        } else {
          expect(exits.every(Exit.isSuccess)).toBe(true)
          expect(rows.map((row) => row.aggregate_version)).toEqual(range(2 * n))
          expect(yield* guard("once")).toEqual([2 * n])
        }
      }))

    it.effect("a dispatch that rolls back leaves no stream version behind", () =>
      Effect.gen(function*() {
        expect(yield* Effect.flip(rolledBack.dispatch(new Increment({ counterId: "rolled", by: 1 })))).toEqual(
          new Rollback()
        )
        expect(yield* guard("rolled")).toEqual([])
        expect(yield* streamRows("rolled")).toEqual([])
        expect(yield* retried.dispatch(new Increment({ counterId: "rolled", by: 1 }))).toEqual({ count: 1, version: 1 })
        expect(yield* Effect.flip(rolledBack.dispatch(new Increment({ counterId: "rolled", by: 1 })))).toEqual(
          new Rollback()
        )
        expect(yield* guard("rolled")).toEqual([1])
        expect(yield* retried.dispatch(new Increment({ counterId: "rolled", by: 1 }))).toEqual({ count: 2, version: 2 })
        expect((yield* streamRows("rolled")).map((row) => row.aggregate_version)).toEqual([1, 2])
        expect(yield* guard("rolled")).toEqual([2])
      }))

    it.effect("a stream whose events were written without the guard goes on from its last event", () =>
      Effect.gen(function*() {
        const outbox = yield* Outbox.Outbox
        const envelopes = yield* DomainEvent.stamp(
          { commandId: crypto.randomUUID(), correlationId: crypto.randomUUID(), timestamp: DateTime.unsafeNow() },
          [1, 2].map((version) =>
            DomainEvent.draft(
              { aggregateType: "Counter", aggregateId: "legacy", aggregateVersion: version },
              new Incremented({ counterId: "legacy", by: 10 })
            )
          )
        )
        yield* outbox.append(envelopes)
        expect(yield* guard("legacy")).toEqual([])
        expect(yield* retried.dispatch(new Increment({ counterId: "legacy", by: 1 }))).toEqual({
          count: 21,
          version: 3
        })
        expect(yield* guard("legacy")).toEqual([3])
      }))
  }
)
