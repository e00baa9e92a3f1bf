/**
 * A command past its timeout while every pool connection is busy, on a
 * server: its statement is cancelled at once. `@effect/sql-pg` cancels with
 * a query, which waited for a connection of the full pool (the cancelled
 * statements held them all): the timeout stretched to the statement's own
 * end, and the service stalled meanwhile.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, layer } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { randomBytes } from "node:crypto"
import Pg from "pg"
import { Command, CommandBus, Handler, Idempotency, Outbox } from "../../src/index.js"
import * as Database from "../../src/server/Database.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const poolSize = 3
const marker = `cancel_on_full_pool_${randomBytes(6).toString("hex")}`

class Slow extends Command.Class<Slow>()("Slow", {
  payload: { n: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

// A statement that waits, as one blocked on a row lock does, longer than
// this test may take; marked, so this test finds its own in `pg_stat_activity`.
const bus = CommandBus.make([Slow], {
  Slow: () =>
    Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(`SELECT pg_sleep(60) -- ${marker}`)).pipe(
      Effect.orDie,
      Effect.as(Handler.result(undefined))
    )
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ timeout: "300 millis" })))

const Services = Layer.merge(SqlUnitOfWork.layer, Idempotency.layerMemory).pipe(
  Layer.provideMerge(Layer.succeed(Outbox.Outbox, {
    append: () => Effect.void,
    read: () => Effect.succeed([])
  })),
  Layer.provideMerge(Database.serverLayer({
    url: Redacted.make(TestDatabase.serverUrl ?? "postgres://unused"),
    schema: Option.none(),
    poolSize,
    connectTimeout: Duration.seconds(5),
    statementTimeout: Duration.seconds(120)
  }))
)

/** This test's statements still running, seen from a connection of its own. */
const stillRunning = Effect.acquireUseRelease(
  Effect.promise(async () => {
    const client = new Pg.Client({ connectionString: TestDatabase.serverUrl })
    await client.connect()
    return client
  }),
  (client) =>
    Effect.promise(() =>
      client.query<{ readonly n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
        [`%-- ${marker}`]
      )
    ).pipe(Effect.map((result) => result.rows[0]!.n)),
  (client) => Effect.promise(() => client.end())
)

describe.skipIf(TestDatabase.serverUrl === undefined)(
  "a timeout with every pool connection busy (postgres)",
  () =>
    layer(Services, { excludeTestServices: true, timeout: "60 seconds" })((it) => {
      it.effect("cancels the timed-out statements at once", () =>
        Effect.gen(function*() {
          const outcomes = yield* Effect.forEach(
            Array.from({ length: poolSize }, (_, n) => n),
            (n) => bus.dispatch(new Slow({ n })).pipe(Effect.flip, Effect.map((error) => error._tag)),
            { concurrency: "unbounded" }
          )
          expect(outcomes).toEqual(Array.from({ length: poolSize }, () => "CommandTimeout"))
          // The cancels have been sent when the dispatches end; the server
          // takes a moment to end the statements. Bounded: a statement that
          // was not cancelled sleeps a minute.
          let running = yield* stillRunning
          for (let i = 0; i < 50 && running > 0; i++) {
            yield* Effect.sleep("100 millis")
            running = yield* stillRunning
          }
          expect(running).toBe(0)
        }))
    })
)
