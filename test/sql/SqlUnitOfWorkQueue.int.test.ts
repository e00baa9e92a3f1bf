/**
 * On the embedded database, which has one session, a dispatch waiting for
 * the session (held by another transaction) is interruptible: the timeout
 * middleware ends it at its deadline rather than when the session frees up.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Command, CommandBus, EventPublisher, Handler, Middleware, Outbox } from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as PgliteClient from "../../src/sql/PgliteClient.js"

class Ping extends Command.Class<Ping>()("Ping", {
  payload: { n: Schema.Number },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Ping], { Ping: () => Effect.succeed(Handler.result(undefined)) }).pipe(
  CommandBus.withMiddleware(Middleware.timeout("200 millis"), Middleware.transaction)
)

it.live(
  "a dispatch queued for the embedded database's session times out at its deadline",
  () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const release = yield* Deferred.make<void>()
      const entered = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(
        sql.withTransaction(Effect.zipRight(Deferred.succeed(entered, undefined), Deferred.await(release)))
      )
      yield* Deferred.await(entered)
      const dispatched = yield* Effect.fork(Effect.exit(bus.dispatch(new Ping({ n: 1, userId: "alice" }))))
      yield* Effect.sleep("1 second")
      // Past its 200 ms deadline, while the session is still held.
      const early = yield* Fiber.poll(dispatched)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const exit = yield* Fiber.join(dispatched)
      expect(Option.isSome(early)).toBe(true)
      expect(Exit.isFailure(exit) ? String(exit.cause) : "success").toContain("CommandTimeout")
    }).pipe(Effect.provide(
      Layer.mergeAll(SqlUnitOfWork.layer, Outbox.layerMemory).pipe(
        Layer.provideMerge(EventPublisher.layerMemory),
        Layer.provideMerge(PgliteClient.layer({ dataDir: "memory://" }))
      )
    )),
  30_000
)
