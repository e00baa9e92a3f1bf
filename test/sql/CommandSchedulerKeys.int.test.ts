/**
 * `CommandScheduler`'s keys on a real database (PGlite, or the server in
 * `DATABASE_URL`): they answer as in memory; a command scheduled under a key
 * by a handler replaces the pending one only if that handler's dispatch
 * commits; and on the server, transactions that schedule under one key at
 * once (or retry a failed command under it) leave one pending, each of them
 * succeeding.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
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

/** Schedules `Remind { n }` under `key` in an hour, then commits or fails. */
class RemindLater extends Command.Class<RemindLater>()("RemindLater", {
  payload: { n: Schema.Int, key: Schema.String, fail: Schema.Boolean },
  success: Schema.Void,
  failure: Refused
}) {}

const scheduling = CommandBus.make([RemindLater], {
  RemindLater: (command) =>
    Effect.gen(function*() {
      yield* CommandScheduler.schedule(new Remind({ n: command.n }), { after: "1 hour" }, { key: command.key }).pipe(
        Effect.orDie
      )
      if (command.fail) return yield* new Refused()
      return Handler.result(undefined)
    })
}).pipe(CommandBus.withMiddleware(Middleware.transaction))

const Shared = Layer.mergeAll(SqlScheduledCommands.layer, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
  Layer.provideMerge(EventPublisher.layerMemory),
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

const nOf = (command: unknown) => (command as { readonly n: number }).n

/** The pending commands as [n, key], earliest due first. */
const pendingKeys = Effect.flatMap(
  CommandScheduler.ScheduledCommands,
  (store) => store.list({ state: "pending" })
).pipe(Effect.map((listed) => listed.map((scheduled) => [nOf(scheduled.command), scheduled.key])))

/** Until another session of this database waits for a lock (a row's, or a uniqueness check's). */
const anotherWaitsForALock = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ readonly waiting: number }>`
    SELECT count(*)::int AS waiting FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'`.withoutTransform).pipe(
    Effect.flatMap(([row]) => row!.waiting > 0 ? Effect.void : Effect.fail(new Error("none waits for a lock yet"))),
    Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 500 })
  )

/**
 * Schedules `n` under `key` in a transaction of its own: when `hold` is given,
 * tells `scheduled` once it has, and commits once `release` completes.
 */
const inTransaction = (
  n: number,
  key: string,
  onConflict: CommandScheduler.OnConflict,
  hold?: { readonly scheduled: Deferred.Deferred<void>; readonly release: Deferred.Deferred<void> }
) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.withTransaction(
      Effect.zipLeft(
        CommandScheduler.schedule(new Remind({ n }), { after: "1 hour" }, { key, onConflict }),
        hold === undefined ? Effect.void : Effect.zipRight(
          Deferred.succeed(hold.scheduled, undefined),
          Deferred.await(hold.release)
        )
      )
    ))

/** A transaction's hold: see `inTransaction`. */
const makeHold = Effect.map(
  Effect.all([Deferred.make<void>(), Deferred.make<void>()]),
  ([scheduled, release]) => ({ scheduled, release })
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `CommandScheduler keys (${TestDatabase.kind})`,
  (it) => {
    it.effect("keys answer as in memory: replace, keep, a running command, cancelKey, and a failed one's retry", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const onStore = Effect.gen(function*() {
          const store = yield* CommandScheduler.ScheduledCommands
          const log: Array<unknown> = []
          const schedule = (n: number, key: string, onConflict: CommandScheduler.OnConflict, at = new Date(0)) =>
            CommandScheduler.schedule(new Remind({ n }), { at }, { key, onConflict })
          const first = yield* schedule(1, "a", "replace")
          log.push((yield* schedule(2, "a", "keep")) === first)
          const second = yield* schedule(3, "a", "replace")
          log.push(second !== first, yield* CommandScheduler.cancel(first))
          yield* schedule(4, "b", "keep", new Date(Date.now() + 3600_000))
          log.push(yield* pendingKeys)

          // Running under "a" (claimed, and renewed as its run starts): not cancelled, kept by keep,
          // not taken back by replace.
          const [claimed, ...noOther] = yield* store.claim(10, Duration.minutes(1))
          const running = yield* store.renew(claimed!, Duration.minutes(1))
          log.push(noOther.length, running!.id === second)
          log.push(yield* CommandScheduler.cancelKey("a"), (yield* schedule(5, "a", "keep")) === second)
          const third = yield* schedule(6, "a", "replace", new Date(1000))
          log.push(yield* pendingKeys)
          // Its runner still holds it: completed, it is gone; the new one stays under the key.
          yield* store.complete(running!)
          log.push(yield* pendingKeys)

          // Failed under "a": the key is free; retried while another holds it, it runs under none.
          const [due] = yield* store.claim(10, Duration.minutes(1))
          log.push(due!.id === third)
          yield* store.fail(due!, "broke")
          log.push(yield* CommandScheduler.cancelKey("a"))
          log.push((yield* store.list({ state: "failed" })).map((scheduled) => scheduled.key))
          const fourth = yield* schedule(7, "a", "keep")
          log.push(yield* store.retry(third), yield* pendingKeys)
          log.push(yield* CommandScheduler.cancelKey("a"), yield* CommandScheduler.cancel(fourth))
          // With the key free, a failed one retried keeps it.
          const [again] = yield* store.claim(10, Duration.minutes(1))
          yield* store.fail(again!, "broke again")
          yield* schedule(8, "c", "keep")
          const [other] = yield* store.claim(10, Duration.minutes(1))
          yield* store.fail(other!, "broke")
          log.push(yield* store.retry(other!.id), yield* pendingKeys)
          log.push(yield* CommandScheduler.cancelKey("b"), yield* CommandScheduler.cancelKey("b"))
          return log
        })
        const inSql = yield* onStore
        expect(inSql).toEqual([
          true,
          true,
          false,
          [[3, "a"], [4, "b"]],
          0,
          true,
          false,
          true,
          [[3, undefined], [6, "a"], [4, "b"]],
          [[6, "a"], [4, "b"]],
          true,
          false,
          ["a"],
          true,
          [[7, "a"], [6, undefined], [4, "b"]],
          true,
          false,
          true,
          [[8, "c"], [4, "b"]],
          true,
          false
        ])
        expect(yield* Effect.provide(onStore, CommandScheduler.layerMemory)).toEqual(inSql)
      }))

    it.effect("a running command a keyed schedule replaced is not run again: retryAfter and a claim after its runner stopped fail it", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const onStore = Effect.gen(function*() {
          const store = yield* CommandScheduler.ScheduledCommands
          const log: Array<unknown> = []
          const failed = Effect.map(
            store.list({ state: "failed" }),
            (list) =>
              list.map((scheduled) => [(scheduled.command as { n: number }).n, scheduled.lastError?.split(";")[0]])
          )
          const schedule = (n: number, key: string, at = new Date(0)) =>
            CommandScheduler.schedule(new Remind({ n }), { at }, { key })
          yield* schedule(1, "a")
          const [first] = yield* store.claim(10, Duration.minutes(1))
          yield* schedule(2, "a", new Date(Date.now() + 3600_000))
          // A failure a retry might pass: replaced, it fails for good.
          log.push(yield* store.retryAfter(first!, Duration.zero, "conflict"), yield* failed, yield* pendingKeys)
          // The operator's retry runs it, under no key (another holds it).
          log.push(yield* store.retry(first!.id), yield* pendingKeys)
          const [again] = yield* store.claim(10, Duration.minutes(1))
          log.push(yield* store.retryAfter(again!, Duration.hours(2), "conflict again"), yield* failed)
          // Replaced while its runner held it, then its lease passed (the runner stopped): the
          // next claim fails it rather than run it.
          yield* schedule(3, "b")
          const [held] = yield* store.claim(10, Duration.millis(500))
          log.push((held!.command as { n: number }).n)
          yield* schedule(4, "b", new Date(Date.now() + 3600_000))
          yield* Effect.sleep("600 millis")
          log.push((yield* store.claim(10, Duration.minutes(1))).length, yield* failed, yield* pendingKeys)
          return log
        })
        const inSql = yield* onStore
        const superseded = "Superseded: a command scheduled under its key replaced it while it ran"
        expect(inSql).toEqual([
          false,
          [[1, superseded]],
          [[2, "a"]],
          true,
          [[1, undefined], [2, "a"]],
          true,
          [],
          3,
          0,
          [[3, superseded]],
          [[2, "a"], [4, "b"], [1, undefined]]
        ])
        expect(yield* Effect.provide(onStore, CommandScheduler.layerMemory)).toEqual(inSql)
      }))

    it.effect("a command scheduled under a key by a handler replaces the pending one only if its dispatch commits", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        yield* scheduling.dispatch(new RemindLater({ n: 1, key: "k", fail: false }))
        const refused = yield* Effect.exit(scheduling.dispatch(new RemindLater({ n: 2, key: "k", fail: true })))
        expect(Exit.isFailure(refused)).toBe(true)
        expect(yield* pendingKeys).toEqual([[1, "k"]])
        yield* scheduling.dispatch(new RemindLater({ n: 3, key: "k", fail: false }))
        expect(yield* pendingKeys).toEqual([[3, "k"]])
      }))

    it.effect("transactions scheduling under one key at once, one of them held by a runner, leave one pending", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const sql = yield* SqlClient.SqlClient
        const store = yield* CommandScheduler.ScheduledCommands
        yield* CommandScheduler.schedule(new Remind({ n: 0 }), { at: new Date(0) }, { key: "k" })
        const [running] = yield* store.claim(10, Duration.minutes(1))
        // Each in a transaction of its own, which lasts a while after it schedules.
        const ids = yield* Effect.forEach(
          Array.from({ length: 16 }, (_, i) => i + 1),
          (n) =>
            sql.withTransaction(
              Effect.zipLeft(
                CommandScheduler.schedule(new Remind({ n }), { after: "1 hour" }, {
                  key: "k",
                  onConflict: n % 2 === 0 ? "keep" : "replace"
                }),
                Effect.sleep("30 millis")
              )
            ),
          { concurrency: "unbounded" }
        )
        const pending = yield* store.list({ state: "pending" })
        const underKey = pending.filter((scheduled) => scheduled.key === "k")
        expect(underKey.length).toBe(1)
        expect(ids).toContain(underKey[0]!.id)
        // The running one is there still, under no key, and its runner's lease holds.
        expect(pending.length).toBe(2)
        expect(pending.find((scheduled) => scheduled.id === running!.id)?.key).toBeUndefined()
        yield* store.complete(running!)
        expect((yield* store.list()).map((scheduled) => scheduled.id)).toEqual([underKey[0]!.id])
      }))

    if (TestDatabase.serverUrl !== undefined) {
      it.effect("on the server, a schedule under a key another transaction is taking waits for it, then replaces or keeps its command", () =>
        Effect.gen(function*() {
          for (const onConflict of ["replace", "keep"] as const) {
            yield* TestDatabase.truncateAll
            const hold = yield* makeHold
            const first = yield* Effect.fork(inTransaction(1, "k", onConflict, hold))
            yield* Deferred.await(hold.scheduled)
            const second = yield* Effect.fork(inTransaction(2, "k", onConflict))
            yield* anotherWaitsForALock
            yield* Deferred.succeed(hold.release, undefined)
            const [firstId, secondId] = [yield* Fiber.join(first), yield* Fiber.join(second)]
            const pending = yield* Effect.flatMap(CommandScheduler.ScheduledCommands, (store) => store.list())
            expect(pending.map((scheduled) => [scheduled.id, nOf(scheduled.command), scheduled.key])).toEqual(
              onConflict === "replace" ? [[secondId, 2, "k"]] : [[firstId, 1, "k"]]
            )
            expect(secondId === firstId).toBe(onConflict === "keep")
          }
        }))

      it.effect("on the server, a failed command retried while another transaction takes its key runs under none", () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          const store = yield* CommandScheduler.ScheduledCommands
          const failed = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(0) }, { key: "k" })
          const [due] = yield* store.claim(10, Duration.minutes(1))
          yield* store.fail(due!, "broke")
          const hold = yield* makeHold
          const taking = yield* Effect.fork(inTransaction(2, "k", "replace", hold))
          yield* Deferred.await(hold.scheduled)
          // The retry cannot see the other's command before it commits, and waits on the key's index.
          const retried = yield* Effect.fork(CommandScheduler.retry(failed))
          yield* anotherWaitsForALock
          yield* Deferred.succeed(hold.release, undefined)
          yield* Fiber.join(taking)
          expect(yield* Fiber.join(retried)).toBe(true)
          expect(yield* pendingKeys).toEqual([[1, undefined], [2, "k"]])
        }))
    }
  }
)
