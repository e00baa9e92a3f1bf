/**
 * A command a runner claimed in a batch, cancelled while it waits its turn
 * behind one that runs: dropped, and not run (a process that ended must not
 * have its deadline fire). One whose run has started is not cancelled.
 */
import { assert, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"
import { CommandScheduler } from "../src/index.js"
import { heldBatch, memoryStores, names, Remind, Slow } from "./support/SchedulerBatch.js"

it.scoped("a command claimed in a batch and cancelled before its turn is dropped and not run; a started one is not", () =>
  Effect.gen(function*() {
    const { bus, last, release, runs, started } = yield* heldBatch()
    // Due in this order, so that one batch claims all four and runs them so.
    const slow = yield* CommandScheduler.schedule(new Slow({ name: "slow" }), { after: 0 }, { key: "slow" })
    yield* TestClock.adjust("1 millis")
    const byId = yield* CommandScheduler.schedule(new Remind({ name: "by-id" }), { after: 0 })
    yield* TestClock.adjust("1 millis")
    yield* CommandScheduler.schedule(new Remind({ name: "by-key" }), { after: 0 }, { key: "deadline" })
    yield* TestClock.adjust("1 millis")
    yield* CommandScheduler.schedule(new Remind({ name: "last" }), { after: 0 })
    yield* TestClock.adjust("1 millis")
    yield* CommandScheduler.start(bus, { pollInterval: "1 second" })
    yield* Deferred.await(started)
    // "slow" has started: too late, by id or by key.
    assert.isFalse(yield* CommandScheduler.cancel(slow))
    assert.isFalse(yield* CommandScheduler.cancelKey("slow"))
    // The others are claimed in its batch, waiting their turn: still cancelled.
    assert.isTrue(yield* CommandScheduler.cancel(byId))
    assert.isTrue(yield* CommandScheduler.cancelKey("deadline"))
    const store = yield* CommandScheduler.ScheduledCommands
    assert.deepStrictEqual(names(yield* store.list()), ["slow", "last"])
    yield* Deferred.succeed(release, undefined)
    // "last" runs after the turns of the cancelled ones have come and gone.
    yield* Deferred.await(last)
    assert.deepStrictEqual(runs, ["slow", "last"])
    // Until its runner has recorded "last" (bounded: it has nothing to wait for).
    const left = yield* store.list().pipe(
      Effect.zipLeft(Effect.yieldNow()),
      Effect.repeat({ until: (listed) => listed.length === 0, times: 1000 })
    )
    assert.deepStrictEqual(left, [])
  }).pipe(Effect.provide(memoryStores)))

it.effect("the store: a claimed command is cancelled until it is renewed to start, and then its renewal finds it gone", () =>
  Effect.gen(function*() {
    const store = yield* CommandScheduler.ScheduledCommands
    const first = yield* CommandScheduler.schedule(new Remind({ name: "first" }), { after: 0 })
    yield* TestClock.adjust("1 millis")
    const second = yield* CommandScheduler.schedule(new Remind({ name: "second" }), { after: 0 }, { key: "k" })
    const [a, b] = yield* store.claim(10, Duration.minutes(1))
    assert.deepStrictEqual([a?.id, b?.id], [first, second])
    assert.isDefined(yield* store.renew(a!, Duration.minutes(1)))
    assert.isFalse(yield* store.cancel(first), "started")
    assert.isTrue(yield* store.cancelKey!("k"), "claimed, not started")
    assert.isUndefined(yield* store.renew(b!, Duration.minutes(1)))
    assert.deepStrictEqual((yield* store.list()).map((scheduled) => scheduled.id), [first])
  }).pipe(Effect.provide(memoryStores)))
