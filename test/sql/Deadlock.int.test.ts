/**
 * A transaction PostgreSQL ends to break a deadlock (40P01) is transient: the
 * unit of work reports it as `StoreUnavailable`, as an outage (its work was
 * rolled back, and a retry may pass), not as a defect. Server only: the
 * embedded database runs one transaction at a time.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { CommandError, UnitOfWork } from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const world = SqlUnitOfWork.layer.pipe(Layer.provideMerge(TestDatabase.layer()))

if (TestDatabase.serverUrl === undefined) {
  it.skip("deadlocks (needs DATABASE_URL: the embedded database runs one transaction at a time)", () => {})
} else {
  layer(world, { excludeTestServices: true })((it) => {
    it.effect("the loser of a deadlock fails with StoreUnavailable, the winner commits", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const unitOfWork = yield* UnitOfWork.UnitOfWork
        yield* sql`CREATE TABLE deadlock_rows (id integer PRIMARY KEY, v integer NOT NULL)`
        yield* sql`INSERT INTO deadlock_rows VALUES (1, 0), (2, 0)`
        const first = yield* Deferred.make<void>()
        const second = yield* Deferred.make<void>()
        // Each locks one row, waits until the other holds the other row, then asks for it.
        const crossing = (
          mine: number,
          theirs: number,
          locked: Deferred.Deferred<void>,
          other: Deferred.Deferred<void>
        ) =>
          unitOfWork.transactional(
            Effect.gen(function*() {
              yield* sql`UPDATE deadlock_rows SET v = v + 1 WHERE id = ${mine}`
              yield* Deferred.succeed(locked, undefined)
              yield* Deferred.await(other)
              yield* sql`UPDATE deadlock_rows SET v = v + 1 WHERE id = ${theirs}`
            }).pipe(Effect.orDie)
          )
        const exits = yield* Effect.all([
          Effect.exit(crossing(1, 2, first, second)),
          Effect.exit(crossing(2, 1, second, first))
        ], { concurrency: "unbounded" })
        expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
        const failed = exits.find(Exit.isFailure)!
        expect(Cause.isDie(failed.cause)).toBe(false)
        const error = Cause.failureOption(failed.cause)
        expect(error._tag === "Some" && error.value instanceof CommandError.StoreUnavailable).toBe(true)
        expect(error._tag === "Some" && (error.value as CommandError.StoreUnavailable).reason).toBe("deadlock detected")
        const rows = yield* sql<{ readonly v: number }>`SELECT v FROM deadlock_rows ORDER BY id`
        expect(rows.map((row) => row.v)).toEqual([1, 1])
      }))
  })
}
