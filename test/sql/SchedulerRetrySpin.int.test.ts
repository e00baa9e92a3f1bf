/**
 * `retry` of a failed keyed command, in a caller's transaction that reads
 * from one snapshot (REPEATABLE READ or SERIALIZABLE), while another
 * transaction has committed a command under the key since the snapshot.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Command, CommandScheduler } from "../../src/index.js"
import { SqlScheduledCommands } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const Shared = SqlScheduledCommands.layer.pipe(Layer.provideMerge(TestDatabase.layer()))

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `CommandScheduler.retry in a snapshot transaction (${TestDatabase.kind})`,
  (it) => {
    for (const level of ["REPEATABLE READ", "SERIALIZABLE"]) {
      it.effect.skipIf(TestDatabase.serverUrl === undefined)(
        `${level}: answers rather than spin`,
        () =>
          Effect.gen(function*() {
            yield* TestDatabase.truncateAll
            const sql = yield* SqlClient.SqlClient
            const store = yield* CommandScheduler.ScheduledCommands
            const failed = yield* CommandScheduler.schedule(new Remind({ n: 1 }), { at: new Date(0) }, { key: "k" })
            const [due] = yield* store.claim(10, Duration.minutes(1))
            yield* store.fail(due!, "broke")
            const snapshot = yield* Deferred.make<void>()
            const other = yield* Deferred.make<void>()
            // Another transaction schedules under the key once the snapshot is taken, and commits.
            yield* Effect.fork(Effect.gen(function*() {
              yield* Deferred.await(snapshot)
              yield* CommandScheduler.schedule(new Remind({ n: 2 }), { after: "1 hour" }, { key: "k" })
              yield* Deferred.succeed(other, undefined)
            }))
            const exit = yield* sql.withTransaction(Effect.gen(function*() {
              yield* sql.unsafe(`SET TRANSACTION ISOLATION LEVEL ${level}`)
              yield* sql`SELECT 1` // the snapshot
              yield* Deferred.succeed(snapshot, undefined)
              yield* Deferred.await(other)
              return yield* Effect.exit(CommandScheduler.retry(failed).pipe(Effect.timeout("5 seconds")))
            }))
            // Before: it ran the statement again and again (thousands of times a second), never answering.
            expect(exit).toStrictEqual(Exit.succeed(true))
            const pending = yield* store.list({ state: "pending" })
            expect(pending.map((c) => [(c.command as { n: number }).n, c.key]).sort()).toEqual([[1, undefined], [
              2,
              "k"
            ]])
          })
      )
    }
  }
)
