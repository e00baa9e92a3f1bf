/**
 * The in-memory scheduler store inside `InMemory.layer`'s unit of work: what
 * a dispatch scheduled, replaced or cancelled is undone when it does not
 * commit, as PostgreSQL's rollback undoes it on the SQL store, and what it
 * scheduled is not run before it commits. A retried dispatch used to schedule
 * twice in memory and once on PostgreSQL. Live clock where the retry
 * middleware sleeps between attempts.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { Command, CommandBus, CommandError, CommandScheduler, Handler, Middleware, UnitOfWork } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

class Later extends Command.Class<Later>()("Later", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Boom extends Schema.TaggedError<Boom>()("Boom", {}) {}

class Go extends Command.Class<Go>()("Go", {
  payload: { action: Schema.Literal("schedule", "replace", "cancelKey", "cancel"), id: Schema.optional(Schema.String) },
  success: Schema.Void,
  failure: Schema.Union(CommandError.ConcurrencyConflict, Boom),
  retryable: ["ConcurrencyConflict"]
}) {}

const conflict = new CommandError.ConcurrencyConflict({ aggregateType: "A", aggregateId: "a", expectedVersion: 1 })

const make = (failFirst: "conflict" | "boom") => {
  let attempts = 0
  const bus = CommandBus.make([Go, Later], {
    Go: (command) =>
      Effect.gen(function*() {
        attempts++
        switch (command.action) {
          case "schedule":
            yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: attempts }), { after: "1 hour" }))
            break
          case "replace":
            yield* Effect.orDie(
              CommandScheduler.schedule(new Later({ n: attempts }), { after: "1 hour" }, { key: "k" })
            )
            break
          case "cancelKey":
            yield* Effect.orDie(CommandScheduler.cancelKey("k"))
            break
          case "cancel":
            yield* Effect.orDie(CommandScheduler.cancel(command.id!))
            break
        }
        if (attempts === 1) return yield* (failFirst === "conflict" ? Effect.fail(conflict) : Effect.fail(new Boom()))
        return Handler.result(undefined)
      }),
    Later: () => Effect.succeed(Handler.result(undefined))
  }).pipe(CommandBus.withMiddleware(Middleware.retry(), Middleware.transaction))
  return { bus, attempts: () => attempts }
}

const pending = Effect.flatMap(
  CommandScheduler.ScheduledCommands,
  (store) => store.list({ state: "pending" })
).pipe(Effect.map((list) => list.map((entry) => ({ n: (entry.command as { n: number }).n, key: entry.key }))))

const Stores = Layer.merge(InMemory.layer, CommandScheduler.layerMemory)

describe("in-memory scheduled commands and the unit of work", () => {
  it.live("a retried dispatch schedules once, the attempt that committed", () =>
    Effect.gen(function*() {
      const { attempts, bus } = make("conflict")
      yield* bus.dispatch(new Go({ action: "schedule" }))
      expect(attempts()).toBe(2)
      expect(yield* pending).toEqual([{ n: 2, key: undefined }])
    }).pipe(Effect.provide(Stores)))

  it.live("a failed dispatch leaves nothing scheduled", () =>
    Effect.gen(function*() {
      const { bus } = make("boom")
      const exit = yield* Effect.exit(bus.dispatch(new Go({ action: "schedule" })))
      expect(exit._tag).toBe("Failure")
      expect(yield* pending).toEqual([])
    }).pipe(Effect.provide(Stores)))

  it.live("a keyed replace that rolls back gives the replaced command back", () =>
    Effect.gen(function*() {
      yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: 0 }), { after: "1 hour" }, { key: "k" }))
      const { bus } = make("boom")
      yield* Effect.exit(bus.dispatch(new Go({ action: "replace" })))
      expect(yield* pending).toEqual([{ n: 0, key: "k" }])
    }).pipe(Effect.provide(Stores)))

  it.live("a cancel that rolls back leaves the command scheduled, by key or by id", () =>
    Effect.gen(function*() {
      yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: 0 }), { after: "1 hour" }, { key: "k" }))
      const id = yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: 1 }), { after: "2 hours" }))
      yield* Effect.exit(make("boom").bus.dispatch(new Go({ action: "cancelKey" })))
      yield* Effect.exit(make("boom").bus.dispatch(new Go({ action: "cancel", id })))
      expect(yield* pending).toEqual([{ n: 0, key: "k" }, { n: 1, key: undefined }])
      // Committed, a cancel stands.
      const { bus } = make("conflict")
      yield* bus.dispatch(new Go({ action: "cancelKey" }))
      expect(yield* pending).toEqual([{ n: 1, key: undefined }])
    }).pipe(Effect.provide(Stores)))

  it.live("outside a dispatch's unit of work, a schedule stands at once", () =>
    Effect.gen(function*() {
      yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: 7 }), { after: "1 hour" }))
      expect(yield* pending).toEqual([{ n: 7, key: undefined }])
    }).pipe(Effect.provide(Stores)))

  // PostgreSQL's runners do not see a row before its transaction commits; in
  // memory a runner ran it while the dispatch went on, and then it failed.
  it.scoped("a runner does not run a command its dispatch scheduled before that dispatch commits", () =>
    Effect.gen(function*() {
      const ran: Array<number> = []
      const bus = CommandBus.make([Go, Later], {
        Go: (command) =>
          Effect.gen(function*() {
            yield* Effect.orDie(
              CommandScheduler.schedule(new Later({ n: command.id === "fail" ? 1 : 2 }), { after: 0 })
            )
            yield* Effect.sleep("5 seconds")
            if (command.id === "fail") return yield* new Boom()
            return Handler.result(undefined)
          }),
        Later: (command) => Effect.sync(() => (ran.push(command.n), Handler.result(undefined)))
      }).pipe(CommandBus.withMiddleware(Middleware.transaction))
      yield* CommandScheduler.start(bus, { pollInterval: "1 second" })
      const dispatches = yield* Effect.fork(Effect.all([
        Effect.exit(bus.dispatch(new Go({ action: "schedule", id: "fail" }))),
        Effect.exit(bus.dispatch(new Go({ action: "schedule", id: "commit" })))
      ], { concurrency: "unbounded" }))
      for (let i = 0; i < 10; i++) yield* TestClock.adjust("1 second")
      const [failed, committed] = yield* Fiber.join(dispatches)
      expect([failed._tag, committed._tag]).toEqual(["Failure", "Success"])
      // Run once committed, at the runner's next poll.
      expect(ran).toEqual([2])
      expect(yield* pending).toEqual([])
    }).pipe(Effect.provide(Stores)))

  it.effect("a dispatch that schedules under a key twice, or schedules and cancels, leaves nothing when it rolls back", () =>
    Effect.gen(function*() {
      const bus = (fail: boolean) =>
        CommandBus.make([Go, Later], {
          Go: (command) =>
            Effect.gen(function*() {
              const first = yield* Effect.orDie(
                CommandScheduler.schedule(new Later({ n: 1 }), { after: "1 hour" }, { key: "k" })
              )
              const second: Effect.Effect<unknown, unknown, CommandScheduler.ScheduledCommands> =
                command.action === "cancel"
                  ? CommandScheduler.cancel(first)
                  : CommandScheduler.schedule(new Later({ n: 2 }), { after: "1 hour" }, { key: "k" })
              yield* Effect.orDie(second)
              if (fail) return yield* new Boom()
              return Handler.result(undefined)
            }),
          Later: () => Effect.succeed(Handler.result(undefined))
        }).pipe(CommandBus.withMiddleware(Middleware.transaction))
      for (const action of ["replace", "cancel"] as const) {
        yield* Effect.exit(bus(true).dispatch(new Go({ action })))
        expect(yield* pending).toEqual([])
      }
      // Committed, the second stands, and a runner claims it when it is due.
      yield* bus(false).dispatch(new Go({ action: "replace" }))
      expect(yield* pending).toEqual([{ n: 2, key: "k" }])
      yield* TestClock.adjust("1 hour")
      const store = yield* CommandScheduler.ScheduledCommands
      expect((yield* store.claim(10, Duration.minutes(1))).map((due) => (due.command as { n: number }).n)).toEqual([2])
    }).pipe(Effect.provide(Stores)))
})

// `retry` is the operators' call, and a handler may make it too: on
// PostgreSQL it is part of the dispatch's transaction. In memory it stood
// when the dispatch rolled back, and a runner claimed it before the commit.
describe("in-memory retry and the unit of work", () => {
  const failedOnce = Effect.gen(function*() {
    const store = yield* CommandScheduler.ScheduledCommands
    const id = yield* Effect.orDie(CommandScheduler.schedule(new Later({ n: 1 }), { after: 0 }))
    const [due] = yield* Effect.orDie(store.claim(10, Duration.minutes(1)))
    yield* Effect.orDie(store.fail(due!, "broke"))
    return { id, store }
  })
  const states = (store: CommandScheduler.Store) =>
    Effect.map(Effect.orDie(store.list()), (list) => list.map(({ retries, state }) => ({ state, retries })))

  it.effect("a retry that rolls back leaves the command failed", () =>
    Effect.gen(function*() {
      const { id, store } = yield* failedOnce
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const exit = yield* Effect.exit(
        unitOfWork.transactional(Effect.zipRight(CommandScheduler.retry(id), Effect.fail(new Boom())))
      )
      expect(exit._tag).toBe("Failure")
      expect(yield* states(store)).toEqual([{ state: "failed", retries: 0 }])
    }).pipe(Effect.provide(Stores)))

  it.effect("a command retried in a unit of work is claimed once it commits, not before", () =>
    Effect.gen(function*() {
      const { id, store } = yield* failedOnce
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const retried = yield* Deferred.make<void>()
      const commit = yield* Deferred.make<void>()
      const dispatch = yield* Effect.fork(unitOfWork.transactional(
        CommandScheduler.retry(id).pipe(
          Effect.zipLeft(Deferred.succeed(retried, undefined)),
          Effect.zipLeft(Deferred.await(commit))
        )
      ))
      yield* Deferred.await(retried)
      // A runner, while the dispatch that retried it is open.
      expect(yield* Effect.orDie(store.claim(10, Duration.minutes(1)))).toEqual([])
      yield* Deferred.succeed(commit, undefined)
      expect(yield* Fiber.join(dispatch)).toBe(true)
      expect((yield* Effect.orDie(store.claim(10, Duration.minutes(1)))).map((due) => due.retries)).toEqual([1])
    }).pipe(Effect.provide(Stores)))
})
