/**
 * `UnitOfWork.afterEnd` across the units of work: in memory, on PGlite or
 * `@effect/sql-pg`'s `withTransaction`, and on the pool's own connections
 * (`SqlUnitOfWork.PgPool`). Each scenario nests `transactional` levels with
 * mixed outcomes and records what each registration is told; all units of
 * work must give the same answers.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import { EventPublisher, Outbox, UnitOfWork } from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

type Uow = UnitOfWork.Service

const scenarios: Record<string, (uow: Uow, log: Array<string>) => Effect.Effect<unknown, unknown>> = {}
const reg = (uow: Uow, log: Array<string>, name: string) =>
  Effect.flatMap(
    uow.afterEnd!((committed) => Effect.sync(() => log.push(`${name}:${committed}`))),
    (registered) => Effect.sync(() => registered ? undefined : log.push(`${name}:unregistered`))
  )
const T = (uow: Uow) => <A, E>(self: Effect.Effect<A, E>) => uow.transactional(self)

// 3 deep: the middle one rolls back after the innermost was kept.
scenarios["middle rolls back, outer commits"] = (uow, log) =>
  T(uow)(Effect.gen(function*() {
    yield* reg(uow, log, "a")
    yield* Effect.ignore(
      T(uow)(Effect.gen(function*() {
        yield* reg(uow, log, "b")
        yield* T(uow)(reg(uow, log, "c"))
        log.push("middle-fails")
        return yield* Effect.fail("undo")
      }))
    )
    log.push("outer-body-done")
  }))

// 3 deep: the innermost rolls back, the rest are kept.
scenarios["innermost rolls back, rest kept"] = (uow, log) =>
  T(uow)(Effect.gen(function*() {
    yield* reg(uow, log, "a")
    yield* T(uow)(Effect.gen(function*() {
      yield* reg(uow, log, "b")
      yield* Effect.ignore(T(uow)(Effect.zipRight(reg(uow, log, "c"), Effect.fail("undo"))))
      log.push("inner-done")
    }))
  }))

// All kept, then the outermost fails.
scenarios["kept savepoints, outer fails"] = (uow, log) =>
  Effect.ignore(
    T(uow)(Effect.gen(function*() {
      yield* reg(uow, log, "a")
      yield* T(uow)(Effect.zipRight(reg(uow, log, "b"), T(uow)(reg(uow, log, "c"))))
      return yield* Effect.fail("undo")
    }))
  )

// A savepoint kept inside one rolled back, inside one kept.
scenarios["kept inside rolled back inside kept"] = (uow, log) =>
  T(uow)(
    T(uow)(Effect.gen(function*() {
      yield* reg(uow, log, "b")
      yield* Effect.ignore(
        T(uow)(Effect.gen(function*() {
          yield* T(uow)(reg(uow, log, "d"))
          return yield* Effect.fail("undo")
        }))
      )
    }))
  )

// A fiber forked in a savepoint that was kept registers while the outermost is still open.
scenarios["forked in a kept savepoint, registers later"] = (uow, log) =>
  T(uow)(Effect.gen(function*() {
    const go = yield* Deferred.make<void>()
    const fiber = yield* T(uow)(Effect.fork(Effect.zipRight(Deferred.await(go), reg(uow, log, "f"))))
    yield* Deferred.succeed(go, undefined)
    yield* Fiber.join(fiber)
    log.push("joined")
  }))

// A fiber forked in the innermost of 3 (kept) registers once it ended, while
// the middle is open: its work is the middle's on the connection, and rolls
// back with it (on SQL it waited on the transaction, and was told it committed).
scenarios["forked in the innermost, registers in the open middle, which rolls back"] = (uow, log) =>
  T(uow)(Effect.gen(function*() {
    yield* Effect.ignore(
      T(uow)(Effect.gen(function*() {
        const go = yield* Deferred.make<void>()
        const fiber = yield* T(uow)(Effect.fork(Effect.zipRight(Deferred.await(go), reg(uow, log, "f"))))
        yield* Deferred.succeed(go, undefined)
        yield* Fiber.join(fiber)
        log.push("joined")
        return yield* Effect.fail("undo")
      }))
    )
    log.push("outer-body-done")
  }))

// A fiber forked in a savepoint begins a level there that ends (kept) after
// that savepoint was kept: its work commits with the transaction (on SQL it
// was told at once that it did not commit).
scenarios["nested level outlives the savepoint it began in"] = (uow, log) =>
  T(uow)(Effect.gen(function*() {
    const registered = yield* Deferred.make<void>()
    const go = yield* Deferred.make<void>()
    const fiber = yield* T(uow)(Effect.gen(function*() {
      const forked = yield* Effect.fork(
        T(uow)(Effect.zipRight(
          Effect.zipRight(reg(uow, log, "g"), Deferred.succeed(registered, undefined)),
          Deferred.await(go)
        ))
      )
      yield* Deferred.await(registered)
      return forked
    }))
    log.push("savepoint-ended")
    yield* Deferred.succeed(go, undefined)
    yield* Fiber.join(fiber)
    log.push("joined")
  }))

const run = (uow: Uow, name: string) =>
  Effect.gen(function*() {
    const log: Array<string> = []
    yield* Effect.exit(scenarios[name]!(uow, log))
    log.push("end")
    return log
  })

const memory = UnitOfWork.layerMemory.pipe(Layer.provide(Outbox.layerMemory), Layer.provide(EventPublisher.layerMemory))
const onPoolOrPglite = SqlUnitOfWork.layer.pipe(Layer.provideMerge(TestDatabase.layer()))
const withTransaction = SqlUnitOfWork.layer.pipe(
  Layer.provideMerge(PgClient.layer({ url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused") }))
)

const outcomes = (layer: Layer.Layer<UnitOfWork.UnitOfWork, unknown>) =>
  Effect.gen(function*() {
    const uow = yield* UnitOfWork.UnitOfWork
    const result: Record<string, ReadonlyArray<string>> = {}
    for (const name of Object.keys(scenarios)) result[name] = yield* run(uow, name)
    return result
  }).pipe(
    Effect.provide(Layer.merge(layer, Logger.minimumLogLevel(LogLevel.Error))),
    Effect.scoped
  ) as Effect.Effect<Record<string, ReadonlyArray<string>>, unknown>

describe("afterEnd across units of work", () => {
  it.live("memory, PGlite or the pool, and withTransaction answer the same", () =>
    Effect.gen(function*() {
      const inMemory = yield* outcomes(memory)
      const sql = yield* outcomes(onPoolOrPglite)
      const all: Record<string, unknown> = { memory: inMemory, [TestDatabase.kind]: sql }
      if (TestDatabase.serverUrl !== undefined) all.withTransaction = yield* outcomes(withTransaction)
      console.log(JSON.stringify(all, null, 1))
      expect(sql).toEqual(inMemory)
      if (all.withTransaction !== undefined) expect(all.withTransaction).toEqual(inMemory)
      // And what they should say.
      expect(inMemory).toEqual({
        "middle rolls back, outer commits": ["middle-fails", "b:false", "c:false", "outer-body-done", "a:true", "end"],
        "innermost rolls back, rest kept": ["c:false", "inner-done", "a:true", "b:true", "end"],
        "kept savepoints, outer fails": ["a:false", "b:false", "c:false", "end"],
        "kept inside rolled back inside kept": ["d:false", "b:true", "end"],
        "forked in a kept savepoint, registers later": ["joined", "f:true", "end"],
        "forked in the innermost, registers in the open middle, which rolls back": [
          "joined",
          "f:false",
          "outer-body-done",
          "end"
        ],
        "nested level outlives the savepoint it began in": ["savepoint-ended", "joined", "g:true", "end"]
      })
    }), 120_000)
})
