/**
 * A fiber forked in a transaction on the pool's own connections that reads
 * a stream (a cursor) once the transaction's work is done: refused as any
 * statement is, without a promise rejected that nobody handles (which ends
 * a Node process).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import { UnitOfWork } from "../../src/index.js"
import * as Database from "../../src/server/Database.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const Shared = SqlUnitOfWork.layer.pipe(Layer.provideMerge(Database.serverLayer({
  url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused"),
  schema: Option.none(),
  poolSize: 2,
  connectTimeout: Duration.seconds(5),
  statementTimeout: Duration.seconds(30)
})))

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })("a stream after the transaction ended", (it) => {
  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "fails the fiber, rejects no promise unhandled",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const unitOfWork = yield* UnitOfWork.UnitOfWork
        const rejected: Array<unknown> = []
        const onRejection = (reason: unknown) => void rejected.push(reason)
        process.on("unhandledRejection", onRejection)
        const ended = yield* Deferred.make<void>()
        const forked = yield* unitOfWork.transactional(Effect.gen(function*() {
          yield* sql`SELECT 1`
          return yield* Effect.forkDaemon(
            Effect.zipRight(Deferred.await(ended), Stream.runCollect(sql`SELECT generate_series(1, 3) AS n`.stream))
          )
        }))
        yield* Deferred.succeed(ended, undefined)
        const exit = yield* Fiber.await(forked)
        yield* Effect.sleep("50 millis")
        process.off("unhandledRejection", onRejection)
        assert.isTrue(Exit.isFailure(exit), String(Exit.map(exit, Chunk.toReadonlyArray)))
        assert.deepStrictEqual(rejected.map(String), [])
      })
  )
})
