/**
 * Pruning finished processes on a real database (PGlite, or the server in
 * `DATABASE_URL`): the store deletes done processes last written before a
 * time (not at it), with their rows in `process_applied`, never one under
 * way or held by a run, nor another manager's, a batch at a time; the
 * process manager prunes by age while an event of another process runs.
 * Times are set explicitly in `updated_at`, not waited for.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { ProcessManager } from "../../src/index.js"
import { SqlProcesses, SqlScheduledCommands, SqlStores } from "../../src/sql/index.js"
import { makeCheckoutOnBus, paid, pruningOnClaim, started } from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"

const Shared = Layer.mergeAll(
  SqlStores.layer({ relay: false }),
  SqlScheduledCommands.layer,
  SqlProcesses.layer
).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
)

const T = DateTime.unsafeMake("2026-03-01T12:00:00.000Z")

const done = { state: { status: "shipped", amount: 1 }, done: true, version: 2, deadlines: [] }

/** `manager`'s process `key` saved with the event `event-<key>` applied, last written at `at`. */
const savedAt = (manager: string, key: string, process: ProcessManager.Stored, at: DateTime.Utc) =>
  Effect.gen(function*() {
    const store = yield* ProcessManager.Processes
    expect(yield* store.save(manager, key, process, 0, undefined, `event-${key}`)).toBe(true)
    const sql = yield* SqlClient.SqlClient
    yield* sql`UPDATE processes SET updated_at = ${DateTime.formatIso(at)}::timestamptz
      WHERE manager = ${manager} AND key = ${key}`
  })

const keys = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(
    sql<{ readonly manager: string; readonly key: string }>`
      SELECT manager, key FROM processes ORDER BY manager, key`.withoutTransform,
    (rows) => rows.map((row) => `${row.manager}/${row.key}`)
  ))

const appliedKeys = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(
    sql<{ readonly manager: string; readonly key: string }>`
      SELECT manager, key FROM process_applied ORDER BY manager, key`.withoutTransform,
    (rows) => rows.map((row) => `${row.manager}/${row.key}`)
  ))

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `ProcessManager.prune (${TestDatabase.kind})`,
  (it) => {
    it.effect("deletes done processes written before the time, not at it, with the events applied to them", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* ProcessManager.Processes
        const running = { ...done, done: false, version: 1 }
        yield* savedAt("checkout", "old", done, DateTime.subtract(T, { millis: 1 }))
        yield* savedAt("checkout", "at", done, T)
        yield* savedAt("checkout", "running", running, DateTime.subtract(T, { days: 30 }))
        yield* savedAt("checkout", "held", { ...done, applying: "event-9" }, DateTime.subtract(T, { days: 30 }))
        yield* savedAt("other", "old", done, DateTime.subtract(T, { days: 30 }))

        expect(yield* store.prune!("checkout", T, 100)).toBe(1)
        expect(yield* keys).toEqual(["checkout/at", "checkout/held", "checkout/running", "other/old"])
        expect(yield* appliedKeys).toEqual(["checkout/at", "checkout/held", "checkout/running", "other/old"])
        expect(yield* store.load("checkout", "old", "event-old")).toEqual(Option.none())

        expect(yield* store.prune!("checkout", DateTime.add(T, { millis: 1 }), 100)).toBe(1)
        expect(yield* keys).toEqual(["checkout/held", "checkout/running", "other/old"])
      }))

    it.effect("a batch at a time, the oldest first", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* ProcessManager.Processes
        for (const [i, key] of ["e", "d", "c", "b", "a"].entries()) {
          yield* savedAt("checkout", key, done, DateTime.subtract(T, { hours: 5 - i }))
        }
        expect(yield* store.prune!("checkout", T, 2)).toBe(2)
        expect(yield* keys).toEqual(["checkout/a", "checkout/b", "checkout/c"])
        expect(yield* store.prune!("checkout", T, 2)).toBe(2)
        expect(yield* store.prune!("checkout", T, 2)).toBe(1)
        expect(yield* store.prune!("checkout", T, 2)).toBe(0)
        expect(yield* keys).toEqual([])
        expect(yield* appliedKeys).toEqual([])
      }))

    // On the server, whose connections run at once (PGlite has one).
    it.effect.skipIf(TestDatabase.serverUrl === undefined)(
      "skips a process whose row another transaction holds, without waiting for it",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          const sql = yield* SqlClient.SqlClient
          const store = yield* ProcessManager.Processes
          yield* savedAt("checkout", "a", done, DateTime.subtract(T, { hours: 2 }))
          yield* savedAt("checkout", "b", done, DateTime.subtract(T, { hours: 1 }))
          const locked = yield* Deferred.make<void>()
          const release = yield* Deferred.make<void>()
          const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function*() {
            yield* sql`SELECT 1 FROM processes WHERE key = 'a' FOR UPDATE`
            yield* Deferred.succeed(locked, undefined)
            yield* Deferred.await(release)
          })))
          yield* Deferred.await(locked)
          const pruned = yield* store.prune!("checkout", T, 100).pipe(
            Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("prune waited for the lock") })
          )
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(holder)
          expect(pruned).toBe(1)
          expect(yield* keys).toEqual(["checkout/a"])
          expect(yield* store.prune!("checkout", T, 100)).toBe(1)
        })
    )

    it.effect("prunes by age while an event of another process runs, which saves as if nothing happened", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const sql = yield* SqlClient.SqlClient
        const { checkout, ran } = makeCheckoutOnBus()
        for (const key of ["a1", "a2", "a3"]) {
          yield* started(checkout, key)
          yield* paid(checkout, key)
        }
        yield* started(checkout, "b")
        yield* started(checkout, "c")
        yield* paid(checkout, "c")
        // Ended two hours ago, all but "c"; "b" is under way.
        yield* sql`UPDATE processes SET updated_at = updated_at - interval '2 hours' WHERE key <> 'c'`

        const prunedMeanwhile = yield* pruningOnClaim(paid(checkout, "b"), checkout, {
          olderThan: "1 hour",
          batchSize: 2
        })
        expect(prunedMeanwhile).toBe(3)
        expect(yield* keys).toEqual(["checkout/b", "checkout/c"])
        const b = Option.getOrThrow(yield* checkout.process("b"))
        expect([b.state.status, b.done, b.version]).toEqual(["shipped", true, 2])
        expect(ran.filter((line) => line.endsWith(" b"))).toEqual(["TakePayment b", "ShipOrder b"])
        // "b" ended just now: kept.
        expect(yield* checkout.prune({ olderThan: "1 hour" })).toBe(0)
        expect(yield* appliedKeys).toEqual(["checkout/b", "checkout/b", "checkout/c", "checkout/c"])

        // A payment of a pruned order: ignored, as for an order never placed.
        yield* paid(checkout, "a1")
        expect(yield* checkout.process("a1")).toEqual(Option.none())
        expect(ran.filter((line) => line.endsWith(" a1"))).toEqual(["TakePayment a1", "ShipOrder a1"])
      }))
  }
)
