/**
 * `CommandScheduler` on a real database (PGlite, or the server in
 * `DATABASE_URL`): a command scheduled by a handler commits or rolls back
 * with that handler's dispatch; runners lease due commands, and two of them
 * never run one twice; the store's lease, failure and retry.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandScheduler, EventPublisher, Handler, Middleware } from "../../src/index.js"
import { SqlOutbox, SqlScheduledCommands, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Refused extends Schema.TaggedError<Refused>()("Refused", {}) {}

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

/** Its handler always breaks (not one of its outcomes): the runner retries it with backoff. */
class Busy extends Command.Class<Busy>()("Busy", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

/** Schedules a `Remind` in an hour, then commits or fails. */
class PlaceThen extends Command.Class<PlaceThen>()("PlaceThen", {
  payload: { n: Schema.Int, fail: Schema.Boolean },
  success: Schema.Void,
  failure: Refused
}) {}

const scheduling = CommandBus.make([PlaceThen], {
  PlaceThen: (command) =>
    Effect.gen(function*() {
      // Its error channel holds its domain errors: an outage is a defect that
      // the unit of work reports as the dispatch's StoreUnavailable.
      yield* CommandScheduler.schedule(new Remind({ n: command.n, ...Command.causedBy(command) }), { after: "1 hour" })
        .pipe(Effect.orDie)
      if (command.fail) return yield* new Refused()
      return Handler.result(undefined)
    })
}).pipe(CommandBus.withMiddleware(Middleware.transaction))

const reminding = (ran: Queue.Queue<Remind>) =>
  CommandBus.make([Remind], { Remind: (command) => Effect.as(Queue.offer(ran, command), Handler.result(undefined)) })

const Shared = Layer.mergeAll(SqlScheduledCommands.layer, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
  Layer.provideMerge(EventPublisher.layerMemory),
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

const pending = Effect.flatMap(CommandScheduler.ScheduledCommands, (store) => store.list({ state: "pending" }))

/** Moves every scheduled command's due time to now. */
const dueNow = Effect.flatMap(SqlClient.SqlClient, (sql) => sql`UPDATE scheduled_commands SET due_at = now()`)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `CommandScheduler (${TestDatabase.kind})`,
  (it) => {
    it.scoped(
      "due times count by the database's clock: a runner whose clock is off keeps the backoff and delays",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          let runs = 0
          const busy = CommandBus.make([Busy], {
            Busy: () =>
              Effect.suspend(() => {
                runs++
                return Effect.dieMessage("busy")
              })
          })
          // Ten minutes behind the database, then two hours ahead of it.
          const skewed = (offsetMillis: number): Clock.Clock => {
            const clock = Clock.make()
            return {
              [Clock.ClockTypeId]: Clock.ClockTypeId,
              sleep: (duration) => clock.sleep(duration),
              unsafeCurrentTimeMillis: () => clock.unsafeCurrentTimeMillis() + offsetMillis,
              currentTimeMillis: Effect.sync(() => clock.unsafeCurrentTimeMillis() + offsetMillis),
              unsafeCurrentTimeNanos: () => clock.unsafeCurrentTimeNanos() + BigInt(offsetMillis) * 1_000_000n,
              currentTimeNanos: Effect.sync(() => clock.unsafeCurrentTimeNanos() + BigInt(offsetMillis) * 1_000_000n)
            }
          }
          const behind = skewed(-10 * 60_000)
          yield* CommandScheduler.schedule(new Busy({ n: 1 }), { after: "0 millis" }).pipe(Effect.withClock(behind))
          yield* CommandScheduler.start(busy, { pollInterval: "50 millis" }).pipe(Effect.withClock(behind))
          yield* Effect.sleep("2500 millis")
          // The first run at once, then 1 s and 2 s of backoff: 2 or 3 runs, not one per poll.
          expect(runs).toBeGreaterThanOrEqual(2)
          expect(runs).toBeLessThanOrEqual(3)

          const ahead = skewed(2 * 3600_000)
          yield* CommandScheduler.schedule(new Remind({ n: 7 }), { after: "1 hour" }).pipe(Effect.withClock(ahead))
          const [reminder] = (yield* pending).filter((scheduled) => scheduled.commandType === "Remind")
          const inAnHour = reminder!.dueAt.epochMillis - Date.now()
          expect(inAnHour).toBeGreaterThan(3_500_000)
          expect(inAnHour).toBeLessThanOrEqual(3_600_000)
        }),
      30_000
    )

    it.effect("ids that are no UUID and odd limits answer as in memory, not with an SQL error", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        yield* CommandScheduler.schedule(new Remind({ n: 1 }), { after: "1 hour" })
        const onStore = Effect.gen(function*() {
          const store = yield* CommandScheduler.ScheduledCommands
          return [
            yield* CommandScheduler.cancel("not-a-uuid"),
            yield* store.retry("not-a-uuid"),
            (yield* store.list({ limit: -1 })).length,
            (yield* store.list({ limit: 1.5 })).length
          ]
        })
        const inMemory = yield* Effect.provide(
          Effect.zipRight(CommandScheduler.schedule(new Remind({ n: 1 }), { after: "1 hour" }), onStore),
          CommandScheduler.layerMemory
        )
        expect(yield* onStore).toEqual([false, false, 0, 1])
        expect(inMemory).toEqual([false, false, 0, 1])
      }))

    it.effect("an id in upper case finds its command to cancel or retry, as in memory", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const onStore = Effect.gen(function*() {
          const store = yield* CommandScheduler.ScheduledCommands
          const id = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { after: "1 hour" })
          const other = yield* CommandScheduler.schedule(new Remind({ n: 2 }), { after: "1 hour" })
          return [
            yield* store.retry(other.toUpperCase()), // not failed: nothing to retry
            yield* CommandScheduler.cancel(id.toUpperCase()),
            (yield* store.list()).length
          ]
        })
        const inMemory = yield* Effect.provide(onStore, CommandScheduler.layerMemory)
        expect(yield* onStore).toEqual([false, true, 1])
        expect(inMemory).toEqual([false, true, 1])
        // Added in upper case (through the store), it is found, failed and listed in lower case.
        const added = Effect.gen(function*() {
          const store = yield* CommandScheduler.ScheduledCommands
          const id = "6F1C3C0E-4A59-4A57-9D3E-5D1C7D3F2B10"
          yield* store.add({
            id,
            commandType: "Remind",
            command: { _tag: "Remind", n: 3 },
            due: { at: DateTime.unsafeMake(0) }
          })
          const [due] = yield* store.claim(10, Duration.minutes(1))
          yield* store.fail(due!, "boom")
          return (yield* store.list({ state: "failed" })).map((command) => command.id)
        })
        yield* TestDatabase.truncateAll
        const failedInSql = yield* added
        expect(failedInSql).toEqual(["6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"])
        expect(yield* Effect.provide(added, CommandScheduler.layerMemory)).toEqual(failedInSql)
      }))

    it.effect("a command whose encoded form is not JSON is refused when scheduled, in every store", () =>
      Effect.gen(function*() {
        class RemindAt extends Command.Class<RemindAt>()("RemindAt", {
          payload: { at: Schema.DateFromSelf },
          success: Schema.Void,
          failure: Schema.Never
        }) {}
        const scheduled = CommandScheduler.schedule(new RemindAt({ at: new Date(0) }), { after: "1 hour" })
        for (
          const exit of [
            yield* Effect.exit(scheduled),
            yield* Effect.exit(Effect.provide(scheduled, CommandScheduler.layerMemory))
          ]
        ) {
          expect(Exit.isFailure(exit) && String(exit.cause)).toContain("which JSON does not hold")
        }
      }))

    it.effect("a command scheduled by a handler is kept when its dispatch commits, gone when it fails", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const placed = new PlaceThen({ n: 1, fail: false })
        yield* scheduling.dispatch(placed)
        const refused = yield* Effect.exit(scheduling.dispatch(new PlaceThen({ n: 2, fail: true })))
        expect(Exit.isFailure(refused)).toBe(true)

        const [scheduled, ...others] = yield* pending
        expect(others).toEqual([])
        expect(scheduled!.commandType).toBe("Remind")
        const command = scheduled!.command as Record<string, unknown>
        expect([command["n"], command["correlationId"], command["causationId"]]).toEqual([
          1,
          placed.correlationId,
          placed.commandId
        ])
        const inAnHour = scheduled!.dueAt.epochMillis - Date.now()
        expect(inAnHour).toBeGreaterThan(3_500_000)
        expect(inAnHour).toBeLessThanOrEqual(3_600_000)
      }))

    it.scoped("runners dispatch due commands; two of them run each command once", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const commands = Array.from({ length: 30 }, (_, n) => new Remind({ n }))
        for (const command of commands) yield* CommandScheduler.schedule(command, { after: "1 hour" })
        const ran = yield* Queue.unbounded<Remind>()
        const options: CommandScheduler.RunOptions = { batchSize: 4, pollInterval: "50 millis" }
        yield* CommandScheduler.start(reminding(ran), options)
        yield* CommandScheduler.start(reminding(ran), options)
        yield* Effect.sleep("300 millis")
        expect(yield* Queue.size(ran), "none is due yet").toBe(0)

        yield* dueNow
        const got = yield* Queue.takeN(ran, 30).pipe(
          Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("30 commands not run in 20 s") })
        )
        expect([...got].map((command) => command.n).sort((a, b) => a - b)).toEqual(commands.map(({ n }) => n))
        expect(new Set([...got].map((command) => command.commandId)).size).toBe(30)
        yield* Effect.flatMap(
          pending,
          (left) => left.length === 0 ? Effect.void : Effect.fail(new Error(`${left.length} still pending`))
        ).pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 }))
        yield* Effect.sleep("200 millis")
        expect(yield* Queue.size(ran), "nothing runs twice").toBe(0)
      }))

    it.scoped("runners of two buses share the store: each claims only its bus's commands, and runs them all", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        for (let n = 0; n < 10; n++) {
          yield* CommandScheduler.schedule(new Remind({ n }), { after: 0 })
          yield* CommandScheduler.schedule(new Busy({ n }), { after: 0 })
        }
        const store = yield* CommandScheduler.ScheduledCommands
        const claimed = yield* store.claim(100, Duration.minutes(1), ["Remind"])
        expect(claimed.map((due) => due.commandType)).toEqual(Array(10).fill("Remind"))
        expect(yield* store.claim(100, Duration.minutes(1), []), "no types: nothing").toEqual([])
        const busies = yield* store.claim(100, Duration.minutes(1), ["Busy", "Other"])
        expect(busies.map((due) => due.commandType)).toEqual(Array(10).fill("Busy"))
        yield* TestDatabase.truncateAll

        for (let n = 0; n < 10; n++) {
          yield* CommandScheduler.schedule(new Remind({ n }), { after: 0 })
          yield* CommandScheduler.schedule(new Busy({ n }), { after: 0 })
        }
        const ran = yield* Queue.unbounded<Remind>()
        const busy = yield* Queue.unbounded<Busy>()
        const busies2 = CommandBus.make([Busy], {
          Busy: (command) => Effect.as(Queue.offer(busy, command), Handler.result(undefined))
        })
        const options: CommandScheduler.RunOptions = { batchSize: 3, pollInterval: "50 millis" }
        yield* CommandScheduler.start(reminding(ran), options)
        yield* CommandScheduler.start(busies2, options)
        const got = yield* Effect.all([Queue.takeN(ran, 10), Queue.takeN(busy, 10)]).pipe(
          Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("20 commands not run in 20 s") })
        )
        expect(got.map((chunk) => [...chunk].map((command) => command.n).sort((a, b) => a - b))).toEqual([
          [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
          [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        ])
        yield* Effect.flatMap(
          CommandScheduler.ScheduledCommands,
          (s) => s.list()
        ).pipe(
          Effect.flatMap((left) => left.length === 0 ? Effect.void : Effect.fail(new Error(`${left.length} left`))),
          Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 })
        )
      }))

    it.scoped("a command that dies with a NUL in its message is rescheduled, and the runner goes on", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const ran = yield* Queue.unbounded<number>()
        // PostgreSQL's text refuses NUL: recording this failure once failed
        // too, and ended the runner for good.
        const bus = CommandBus.make([Remind], {
          Remind: (command) =>
            command.n === 1
              ? Effect.dieMessage("bad \u0000 byte")
              : Effect.as(Queue.offer(ran, command.n), Handler.result(undefined))
        })
        const dying = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(Date.now() - 2000) })
        yield* CommandScheduler.start(bus, { pollInterval: "50 millis" })
        yield* CommandScheduler.schedule(new Remind({ n: 2 }), { at: new Date(Date.now() - 1000) })
        const [second] = yield* Queue.takeN(ran, 1).pipe(
          Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("the next command did not run") })
        )
        expect(second).toBe(2)
        const kept = (yield* pending).find((scheduled) => scheduled.id === dying)
        expect(kept?.lastError).toContain("bad \uFFFD byte")
      }))

    it.effect("a runner whose lease was taken over, failed and retried (attempts back to 1) is ignored", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* CommandScheduler.ScheduledCommands
        const id = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(Date.now() - 1000) })
        const [first] = yield* store.claim(10, Duration.millis(200))
        expect(first?.attempts).toBe(1)
        yield* Effect.sleep("400 millis")
        // Its lease passed: another runner takes it, fails it; an operator retries it; a third runner takes it.
        const [second] = yield* store.claim(10, Duration.seconds(30))
        expect(second?.attempts).toBe(2)
        yield* store.fail(second!, "gave up")
        expect(yield* store.retry(id)).toBe(true)
        const [third] = yield* store.claim(10, Duration.seconds(30))
        expect(third?.attempts).toBe(1)
        // The first runner wakes up and reports: the third one's lease stands.
        yield* store.complete(first!)
        yield* store.fail(first!, "stale")
        yield* store.retryAfter(first!, Duration.minutes(1), "stale")
        expect((yield* store.list()).map((scheduled) => [scheduled.id, scheduled.state, scheduled.lastError])).toEqual([
          [id, "pending", "gave up"]
        ])
        // Started by the third runner (renewed for its turn): not cancelled.
        const running = yield* store.renew(third!, Duration.seconds(30))
        expect(yield* store.cancel(id), "running under the third runner's lease").toBe(false)
        yield* store.complete(running!)
        expect(yield* store.list()).toEqual([])
      }))

    it.effect("the store leases due commands earliest first, fails, retries, lists and cancels them", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* CommandScheduler.ScheduledCommands
        const late = yield* CommandScheduler.schedule(new Remind({ n: 2 }), { at: new Date(Date.now() - 1000) })
        const early = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(Date.now() - 2000) })
        const future = yield* CommandScheduler.schedule(new Remind({ n: 3 }), { after: "1 hour" })

        const claimed = yield* store.claim(10, Duration.seconds(1))
        expect(claimed.map((due) => [due.id, due.commandType, due.attempts])).toEqual([
          [early, "Remind", 1],
          [late, "Remind", 1]
        ])
        expect((claimed[0]!.command as { n: number }).n).toBe(1)
        expect(yield* store.claim(10, Duration.seconds(1)), "leased").toEqual([])

        yield* store.fail(claimed[0]!, "it broke")
        const [failed, ...noOther] = yield* store.list({ state: "failed" })
        expect(noOther).toEqual([])
        expect([failed!.id, failed!.attempts, failed!.retries, failed!.lastError]).toEqual([early, 1, 0, "it broke"])
        expect(yield* store.retry(early)).toBe(true)
        expect(yield* store.retry(early)).toBe(false)
        expect((yield* store.list()).find((scheduled) => scheduled.id === early)?.retries).toBe(1)
        expect(yield* store.cancel(future)).toBe(true)
        expect(yield* store.cancel(future)).toBe(false)

        // `early` is due again at once (attempts reset, due now, one retry); `late` once its lease has passed.
        expect((yield* store.claim(10, Duration.seconds(1))).map((due) => [due.id, due.attempts, due.retries])).toEqual(
          [
            [early, 1, 1]
          ]
        )
        yield* Effect.sleep("1500 millis")
        const reclaimed = yield* store.claim(10, Duration.seconds(30))
        expect(reclaimed.map((due) => [due.id, due.attempts])).toEqual([
          [late, 2],
          [early, 2]
        ])
        // The first lease of `late` was taken over: what its runner reports is ignored.
        yield* store.complete(claimed[1]!)
        yield* store.fail(claimed[1]!, "stale")
        yield* store.retryAfter(claimed[1]!, Duration.zero, "stale")
        expect((yield* store.list({ state: "pending" })).map((scheduled) => [scheduled.id, scheduled.lastError]))
          .toEqual([[late, undefined], [early, "it broke"]])
        yield* store.retryAfter(reclaimed[0]!, Duration.minutes(1), "again")
        yield* store.complete(reclaimed[1]!)
        expect((yield* store.list()).map((scheduled) => [scheduled.id, scheduled.state, scheduled.lastError])).toEqual([
          [late, "pending", "again"]
        ])
      }))

    it.scoped("the last command of a batch has the whole lease to run in: another runner does not run it meanwhile", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const log: Array<string> = []
        // Each run takes 800 ms; the lease, 2 s, is longer than any one of them.
        const slow = CommandBus.make([Remind], {
          Remind: (command) =>
            Effect.sync(() => log.push(`start ${command.n}`)).pipe(
              Effect.zipRight(Effect.sleep("800 millis")),
              Effect.zipRight(Effect.sync(() => log.push(`end ${command.n}`))),
              Effect.as(Handler.result(undefined))
            )
        })
        for (const n of [1, 2, 3]) yield* CommandScheduler.schedule(new Remind({ n }), { at: new Date(0) })
        const options: CommandScheduler.RunOptions = { lease: "2 seconds", pollInterval: "50 millis" }
        yield* CommandScheduler.start(slow, options)
        yield* Effect.sleep("100 millis")
        yield* CommandScheduler.start(slow, options)
        // 3 starts at about 1.6 s, as its batch's lease (2 s) nears its end.
        yield* Effect.flatMap(
          pending,
          (left) => left.length === 0 ? Effect.void : Effect.fail(new Error(`${left.length} still pending`))
        ).pipe(Effect.retry({ schedule: Schedule.spaced("50 millis"), times: 200 }))
        yield* Effect.sleep("1 second")
        expect(log).toEqual(["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"])
      }))

    it.effect("a lease renewed at once is the renewal's alone: the lease it renewed no longer holds", () =>
      Effect.gen(function*() {
        // The embedded database's clock moves by whole milliseconds: a renewal
        // in the millisecond of its claim gave the lease the same time, and the
        // claim's stale lease held as the renewal's.
        for (let n = 1; n <= 20; n++) {
          yield* TestDatabase.truncateAll
          const store = yield* CommandScheduler.ScheduledCommands
          yield* CommandScheduler.schedule(new Remind({ n }), { at: new Date(0) })
          const [claimed] = yield* store.claim(10, Duration.minutes(1))
          const renewed = yield* store.renew(claimed!, Duration.minutes(1))
          expect(renewed?.lease).not.toBe(claimed!.lease)
          expect(yield* store.renew(claimed!, Duration.minutes(1))).toBeUndefined()
          yield* store.complete(claimed!)
          expect((yield* store.list()).length).toBe(1)
        }
      }))

    it.effect("a lease is renewed only while it holds; times and delays past what PostgreSQL keeps are kept as in memory", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const store = yield* CommandScheduler.ScheduledCommands
        yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(0) })
        // A first lease long enough to renew within on a loaded machine.
        const [claimed] = yield* store.claim(10, Duration.millis(1500))
        const renewed = yield* store.renew(claimed!, Duration.seconds(30))
        expect(renewed?.attempts).toBe(1)
        yield* Effect.sleep("2 seconds")
        // Past the first lease, within the renewed one: still this runner's.
        expect(yield* store.claim(10, Duration.seconds(30))).toEqual([])
        expect(yield* store.renew(claimed!, Duration.seconds(30))).toBeUndefined()
        yield* store.complete(claimed!)
        expect((yield* store.list()).length).toBe(1)
        yield* store.complete(renewed!)
        expect(yield* store.list()).toEqual([])
        // A lease that passed is not renewed.
        yield* CommandScheduler.schedule(new Remind({ n: 2 }), { at: new Date(0) })
        const [late] = yield* store.claim(10, Duration.millis(100))
        yield* Effect.sleep("300 millis")
        expect(yield* store.renew(late!, Duration.seconds(30))).toBeUndefined()
        yield* TestDatabase.truncateAll

        // The year 10000 (ISO `+010000-…`), the year -1 (kept as the year 1:
        // due either way), and a delay of infinity (kept as 100 years).
        yield* CommandScheduler.schedule(new Remind({ n: 3 }), { at: new Date("+010000-01-01T00:00:00.123Z") })
        yield* CommandScheduler.schedule(new Remind({ n: 4 }), { at: new Date("-000001-06-01T00:00:00Z") })
        yield* CommandScheduler.schedule(new Remind({ n: 5 }), { after: Duration.infinity })
        const listed = yield* store.list()
        expect(listed.map((scheduled) => (scheduled.command as { n: number }).n)).toEqual([4, 5, 3])
        expect(listed.map((scheduled) => scheduled.dueAt.epochMillis).filter((_, i) => i !== 1)).toEqual([
          new Date("0001-01-01T00:00:00Z").getTime(),
          new Date("+010000-01-01T00:00:00.123Z").getTime()
        ])
        const hundredYears = 36_500 * 24 * 3600 * 1000
        expect(Math.abs(listed[1]!.dueAt.epochMillis - (Date.now() + hundredYears))).toBeLessThan(60_000)
        expect((yield* store.claim(10, Duration.infinity)).map((due) => (due.command as { n: number }).n)).toEqual([4])
      }))
  }
)
