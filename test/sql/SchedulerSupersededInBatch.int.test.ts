/**
 * On a real database (PGlite, or the server in `DATABASE_URL`): a keyed
 * command a runner claimed in a batch, replaced under its key while it waits
 * its turn behind a slow one, is not started (a debounce fires once).
 */
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { CommandScheduler } from "../../src/index.js"
import * as TestDatabase from "../support/Database.js"
import { heldBatch, Remind, Slow, sqlStores } from "../support/SchedulerBatch.js"

layer(sqlStores, { excludeTestServices: true, timeout: "60 seconds" })(
  `superseded in a batch (${TestDatabase.kind})`,
  (it) => {
    it.scoped("a keyed command replaced while it waits its turn in a batch is not run", () =>
      Effect.gen(function*() {
        const { bus, release, runs, started } = yield* heldBatch()
        const key = "unpaid:o-1"
        yield* CommandScheduler.schedule(new Slow({ name: "slow" }), { at: new Date(Date.now() - 2000) })
        yield* CommandScheduler.schedule(new Remind({ name: "old" }), { at: new Date(Date.now() - 1000) }, { key })
        yield* CommandScheduler.start(bus, { pollInterval: "50 millis" })
        yield* Deferred.await(started)
        // "old" is claimed in the runner's batch and waits behind "slow": replaced an hour on.
        yield* CommandScheduler.schedule(new Remind({ name: "next" }), { after: "1 hour" }, { key })
        yield* Deferred.succeed(release, undefined)
        // Until the runner has dealt with "old" (it is gone from the pending ones).
        const store = yield* CommandScheduler.ScheduledCommands
        yield* store.list({ state: "pending" }).pipe(
          Effect.filterOrFail((listed) => listed.length === 1, () => "not yet"),
          Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 })
        )
        expect(runs).toEqual(["slow"])
        const failed = yield* store.list({ state: "failed" })
        expect(failed.map((scheduled) => scheduled.commandType)).toEqual(["Remind"])
        expect(failed[0]!.lastError).toMatch(/^Superseded: /)
      }))
  }
)
