/**
 * A keyed command a runner claimed in a batch, replaced under its key while it
 * waits its turn behind a slow one: not started (a debounce fires once).
 */
import { assert, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as TestClock from "effect/TestClock"
import { CommandScheduler } from "../src/index.js"
import * as Metrics from "./support/Metrics.js"
import { heldBatch, memoryStores, Remind, Slow } from "./support/SchedulerBatch.js"

const settle = Effect.repeatN(Effect.yieldNow(), 200)

// A keyed command claimed in a runner's batch, waiting its turn behind a slow
// one, is replaced under its key before its run begins: the debounce must fire once.
it.scoped("a keyed command replaced while it waits its turn in a batch is not run, and is reported superseded", () =>
  Effect.gen(function*() {
    const logs: Array<string> = []
    const failedBefore = yield* Metrics.count("command_bus_scheduled_commands_total", {
      command: "Remind",
      outcome: "failed"
    })
    const { bus, runs } = yield* heldBatch({ hold: Effect.sleep("10 seconds") })
    const key = "unpaid:o-1"
    yield* CommandScheduler.schedule(new Slow({ name: "slow" }), { after: 0 })
    yield* TestClock.adjust("1 millis")
    const old = yield* CommandScheduler.schedule(new Remind({ name: "old" }), { after: 0 }, { key })
    yield* TestClock.adjust("1 millis")
    yield* CommandScheduler.start(bus, { pollInterval: "1 second" }).pipe(
      Effect.provide(Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ message }) => logs.push(String(Array.isArray(message) ? message[0] : message)))
      ))
    )
    yield* settle
    assert.deepStrictEqual(runs, ["slow"]) // "old" claimed in the same batch, not started
    // The debounce: a change to the order pushes the reminder back an hour.
    const next = yield* CommandScheduler.schedule(new Remind({ name: "next" }), { after: "1 hour" }, { key })
    assert.notStrictEqual(next, old)
    for (let i = 0; i < 30; i++) {
      yield* TestClock.adjust("1 second")
      yield* settle
    }
    // "old" was replaced before its run began: not run, kept as failed (superseded).
    assert.deepStrictEqual(runs, ["slow"])
    const store = yield* CommandScheduler.ScheduledCommands
    const failed = yield* store.list({ state: "failed" })
    assert.deepStrictEqual(failed.map((scheduled) => scheduled.id), [old])
    assert.match(failed[0]!.lastError!, /^Superseded: /)
    assert.deepStrictEqual((yield* store.list({ state: "pending" })).map((scheduled) => scheduled.id), [next])
    // Reported as a superseded run is: a warning and a failed outcome.
    assert.include(logs, "scheduled.superseded")
    assert.strictEqual(
      (yield* Metrics.count("command_bus_scheduled_commands_total", { command: "Remind", outcome: "failed" })) -
        failedBefore,
      1
    )
  }).pipe(Effect.provide(memoryStores)))
