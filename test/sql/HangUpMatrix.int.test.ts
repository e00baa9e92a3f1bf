/**
 * A client that hangs up (the dispatch interrupted) at each phase of a keyed
 * dispatch, with each idempotency store, embedded or on the server in
 * `DATABASE_URL`: exactly one run commits, and the retry replays if the
 * first committed, else runs again.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, EventPublisher, Handler, Idempotency, Middleware } from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as RedisServer from "../idempotency/RedisServer.js"
import * as TestDatabase from "../support/Database.js"

const server = RedisServer.available() ? await RedisServer.start() : undefined
afterAll(() => server?.stop())
const table = `hangup_${process.pid}`

class Note extends Command.Class<Note>()("Note", {
  payload: { note: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const phases = ["handler", "beforeCommit", "commit"] as const

const run = (phase: typeof phases[number]) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (note text NOT NULL)`)
    yield* sql.unsafe(`TRUNCATE ${table}`)
    const reached = yield* Deferred.make<void>()
    let runs = 0
    let first = true
    const signal = Middleware.make("signal", (self, dispatch) => {
      dispatch.beforeCommit.push(() => {
        if (!first) return Effect.void
        if (phase === "commit") return Deferred.succeed(reached, undefined)
        if (phase === "beforeCommit") return Effect.zipRight(Deferred.succeed(reached, undefined), Effect.never)
        return Effect.void
      })
      return self
    })
    const bus = CommandBus.make([Note], {
      Note: (command) =>
        Effect.gen(function*() {
          runs++
          yield* Effect.orDie(sql`INSERT INTO ${sql(table)} (note) VALUES (${command.note})`)
          if (first && phase === "handler") {
            yield* Deferred.succeed(reached, undefined)
            yield* Effect.never
          }
          return Handler.result(undefined)
        })
    }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware(), signal))
    const key = `k-${Math.random()}`
    const note = () => new Note({ note: "n", userId: "alice", idempotencyKey: key })
    const fiber = yield* Effect.fork(bus.dispatch(note()))
    yield* Deferred.await(reached)
    yield* Fiber.interrupt(fiber)
    first = false
    const again = yield* Idempotency.observeReplay(bus.dispatch(note()))
    const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
    return { rows: row!.n, runs, replayed: again.replayed, exit: again.exit._tag }
  })

const suite = (name: string, store: Layer.Layer<Idempotency.IdempotencyStore, unknown, SqlClient.SqlClient>) =>
  layer(
    Layer.mergeAll(store, SqlUnitOfWork.layer, SqlOutbox.layer).pipe(
      Layer.provideMerge(EventPublisher.layerMemory),
      Layer.provideMerge(TestDatabase.layer()),
      Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
    ),
    { excludeTestServices: true, timeout: "60 seconds" }
  )(`${name} (${TestDatabase.kind})`, (it) => {
    for (const phase of phases) {
      it.effect(`hang-up in ${phase}`, () =>
        Effect.gen(function*() {
          const result = yield* (run(phase) as Effect.Effect<any, unknown, any>)
          // Exactly one run committed; a retry replays if the first did, else runs again.
          expect(result.rows).toBe(1)
          expect(result.exit).toBe("Success")
          expect(result.replayed).toBe(result.runs === 1)
          if (phase !== "commit") expect(result.runs).toBe(2)
        }) as Effect.Effect<void, unknown, never>)
    }
  })

suite("memory", Idempotency.layerMemory)
suite("sql", SqlIdempotencyStore.layer)
if (server !== undefined) suite("redis", RedisIdempotencyStore.layer({ url: server.url }))
