/**
 * On a real database (PGlite, or the server in `DATABASE_URL`): a command a
 * runner claimed in a batch, cancelled while it waits its turn behind one
 * that runs, is dropped and not run; one whose run has started is not
 * cancelled, nor is one an earlier release claimed (it cannot tell).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { CommandScheduler } from "../../src/index.js"
import * as TestDatabase from "../support/Database.js"
import { heldBatch, names, Remind, Slow, sqlStores } from "../support/SchedulerBatch.js"

layer(sqlStores, { excludeTestServices: true, timeout: "60 seconds" })(
  `cancelled in a batch (${TestDatabase.kind})`,
  (it) => {
    it.scoped("a command claimed in a batch and cancelled before its turn is dropped and not run; a started one is not", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, last, release, runs, started } = yield* heldBatch()
        // Due in this order, so that one batch claims all four and runs them so.
        const at = (secondsAgo: number) => ({ at: new Date(Date.now() - secondsAgo * 1000) })
        const slow = yield* CommandScheduler.schedule(new Slow({ name: "slow" }), at(4), { key: "slow" })
        const byId = yield* CommandScheduler.schedule(new Remind({ name: "by-id" }), at(3))
        yield* CommandScheduler.schedule(new Remind({ name: "by-key" }), at(2), { key: "deadline" })
        yield* CommandScheduler.schedule(new Remind({ name: "last" }), at(1))
        yield* CommandScheduler.start(bus, { pollInterval: "50 millis" })
        yield* Deferred.await(started)
        // "slow" has started: too late, by id or by key.
        expect(yield* CommandScheduler.cancel(slow)).toBe(false)
        expect(yield* CommandScheduler.cancelKey("slow")).toBe(false)
        // The others are claimed in its batch, waiting their turn: still cancelled.
        expect(yield* CommandScheduler.cancel(byId)).toBe(true)
        expect(yield* CommandScheduler.cancelKey("deadline")).toBe(true)
        const store = yield* CommandScheduler.ScheduledCommands
        expect(names(yield* store.list())).toEqual(["slow", "last"])
        yield* Deferred.succeed(release, undefined)
        // "last" runs after the turns of the cancelled ones have come and gone.
        yield* Deferred.await(last)
        expect(runs).toEqual(["slow", "last"])
        // Until its runner has recorded "last".
        const left = yield* store.list().pipe(
          Effect.filterOrFail((listed) => listed.length === 0, () => "not yet"),
          Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 })
        )
        expect(left).toEqual([])
      }))

    it.effect("the store: a claimed command is cancelled until it is renewed to start, and then its renewal finds it gone", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* CommandScheduler.ScheduledCommands
        const first = yield* CommandScheduler.schedule(new Remind({ name: "first" }), {
          at: new Date(Date.now() - 2000)
        })
        const second = yield* CommandScheduler.schedule(new Remind({ name: "second" }), {
          at: new Date(Date.now() - 1000)
        }, { key: "k" })
        const [a, b] = yield* store.claim(10, Duration.minutes(1))
        expect([a?.id, b?.id]).toEqual([first, second])
        expect(yield* store.renew(a!, Duration.minutes(1))).toBeDefined()
        expect(yield* store.cancel(first), "started").toBe(false)
        expect(yield* store.cancelKey!("k"), "claimed, not started").toBe(true)
        expect(yield* store.renew(b!, Duration.minutes(1))).toBeUndefined()
        expect((yield* store.list()).map((scheduled) => scheduled.id)).toEqual([first])
      }))

    it.effect("a command an earlier release claimed counts as running while its lease holds", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* CommandScheduler.ScheduledCommands
        const id = yield* CommandScheduler.schedule(new Remind({ name: "old" }), { at: new Date(Date.now() - 1000) })
        yield* store.claim(10, Duration.minutes(1))
        // As an earlier release's claim leaves the row: the claimed lease not kept.
        const sql = yield* SqlClient.SqlClient
        yield* sql`UPDATE scheduled_commands SET claimed_lease_expires_at = NULL`
        expect(yield* store.cancel(id)).toBe(false)
      }))
  }
)
