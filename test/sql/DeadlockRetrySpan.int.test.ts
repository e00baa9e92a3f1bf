/**
 * A deadlock's loser is run again under a span too (the tracing middleware,
 * in `defaultMiddleware`, or an edge's span around the dispatch). There
 * `Effect.fail` hands on the error wrapped in a proxy that carries the span
 * (`Cause.originalError` unwraps it), so the conflict's marks, kept by the
 * error's identity, must be read and set through it. Server only.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, EventPublisher, Handler, Middleware, Outbox } from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Cross extends Command.Class<Cross>()("Cross", {
  payload: { mine: Schema.Int, theirs: Schema.Int },
  success: Schema.Void,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

const runs: Array<number> = []
let locked = new Map<number, Deferred.Deferred<void>>()

const crossing = (command: Cross) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    runs.push(command.mine)
    yield* sql`UPDATE deadlock_retry_span SET v = v + 1 WHERE id = ${command.mine}`
    yield* Deferred.succeed(locked.get(command.mine)!, undefined)
    yield* Deferred.await(locked.get(command.theirs)!)
    yield* sql`UPDATE deadlock_retry_span SET v = v + 1 WHERE id = ${command.theirs}`
    return Handler.result(undefined)
  }).pipe(Effect.orDie)

const handlers = { Cross: crossing }

const scenario = <E, R>(bus: CommandBus.CommandBus<Cross, typeof handlers, E, R>, span: boolean) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    runs.length = 0
    locked = new Map([[1, yield* Deferred.make<void>()], [2, yield* Deferred.make<void>()]])
    yield* sql`CREATE TABLE IF NOT EXISTS deadlock_retry_span (id integer PRIMARY KEY, v integer NOT NULL)`
    yield* sql`TRUNCATE deadlock_retry_span`
    yield* sql`INSERT INTO deadlock_retry_span VALUES (1, 0), (2, 0)`
    const dispatch = (command: Cross) => {
      const exit = Effect.exit(bus.dispatch(command))
      return span ? Effect.withSpan(exit, "edge") : exit
    }
    const exits = yield* Effect.all([
      dispatch(new Cross({ mine: 1, theirs: 2 })),
      dispatch(new Cross({ mine: 2, theirs: 1 }))
    ], { concurrency: "unbounded" })
    const values = yield* sql<{ readonly v: number }>`SELECT v FROM deadlock_retry_span ORDER BY id`
    return { exits: exits.map((exit) => Exit.isSuccess(exit)), values: values.map((row) => row.v), runs: runs.length }
  })

const World = Layer.mergeAll(
  SqlUnitOfWork.layer,
  Outbox.layerMemory.pipe(Layer.provide(EventPublisher.layerMemory))
).pipe(Layer.provideMerge(TestDatabase.layer()))

if (TestDatabase.serverUrl === undefined) {
  it.skip("deadlock retries under a span (needs DATABASE_URL)", () => {})
} else {
  layer(World, { excludeTestServices: true })("deadlock retry under a span", (it) => {
    it.effect("with the tracing middleware, the loser is run again and both commit", () =>
      Effect.gen(function*() {
        const bus = CommandBus.make([Cross], handlers).pipe(
          CommandBus.withMiddleware(Middleware.tracing, Middleware.retry(), Middleware.transaction)
        )
        expect(yield* scenario(bus, false)).toEqual({ exits: [true, true], values: [2, 2], runs: 3 })
      }))

    it.effect("inside a caller's span, the loser is run again and both commit", () =>
      Effect.gen(function*() {
        const bus = CommandBus.make([Cross], handlers).pipe(
          CommandBus.withMiddleware(Middleware.retry(), Middleware.transaction)
        )
        expect(yield* scenario(bus, true)).toEqual({ exits: [true, true], values: [2, 2], runs: 3 })
      }))
  })
}
