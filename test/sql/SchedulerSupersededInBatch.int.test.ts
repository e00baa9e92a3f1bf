/**
 * On a real database (PGlite, or the server in `DATABASE_URL`): a keyed
 * command a runner claimed in a batch, replaced under its key while it waits
 * its turn behind a slow one, is not started (a debounce fires once).
 */
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandScheduler, Handler } from "../../src/index.js"
import { SqlScheduledCommands } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

class Slow extends Command.Class<Slow>()("Slow", {
  payload: { name: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { name: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const Shared = SqlScheduledCommands.layer.pipe(
  Layer.provideMerge(InMemory.layer),
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `superseded in a batch (${TestDatabase.kind})`,
  (it) => {
    it.scoped("a keyed command replaced while it waits its turn in a batch is not run", () =>
      Effect.gen(function*() {
        const runs: Array<string> = []
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const bus = CommandBus.make([Slow, Remind], {
          Slow: (command) =>
            Effect.sync(() => runs.push(command.name)).pipe(
              Effect.zipRight(Deferred.succeed(started, undefined)),
              Effect.zipRight(Deferred.await(release)),
              Effect.as(Handler.result(undefined))
            ),
          Remind: (command) => Effect.sync(() => runs.push(command.name)).pipe(Effect.as(Handler.result(undefined)))
        })
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
