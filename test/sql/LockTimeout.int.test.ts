/**
 * A statement that waited past `lock_timeout` for a lock another
 * transaction holds (55P03, lock_not_available: `lock_timeout` set in the
 * URL's options, which `PgPool` sends, or by the role or database) fails
 * its dispatch with `StoreUnavailable`, as one past `statement_timeout`
 * (57014) does: a transient condition, not a bug. It was a defect, and the
 * service answered 500.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Command, CommandBus, CommandError, Handler } from "effect-command-bus"
import { PgPool, SqlMigrations, SqlStores } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import Pg from "pg"
import { codeOf, connect, createRequest, sendCreate, serviceEnv, setStock, spawn } from "../faults/Harness.js"
import * as TestDatabase from "../support/Database.js"

const url = process.env.DATABASE_URL

class Touch extends Command.Class<Touch>()("Touch", {
  payload: { id: Schema.Int },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Touch], {
  Touch: (command) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE lock_rows SET v = v + 1 WHERE id = ${command.id}`.pipe(Effect.orDie)
      return Handler.result(undefined)
    })
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ timeout: "10 seconds" })))

const withLockTimeout = (base: string) => {
  const parsed = new URL(base)
  parsed.searchParams.set("options", "-c lock_timeout=300")
  return parsed.toString()
}

describe.skipIf(url === undefined)("lock_timeout", () => {
  it.scopedLive("a dispatch past lock_timeout fails with StoreUnavailable, not a defect", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema()
      const context = yield* Layer.build(
        SqlStores.layer({ relay: false }).pipe(
          Layer.provideMerge(Layer.effectDiscard(SqlMigrations.run)),
          Layer.provideMerge(PgPool.layer({ url: withLockTimeout(url!), schema, poolSize: 2 })),
          Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
        )
      )
      const sql = yield* Effect.provide(SqlClient.SqlClient, context)
      yield* sql`CREATE TABLE lock_rows (id integer PRIMARY KEY, v integer NOT NULL)`
      yield* sql`INSERT INTO lock_rows VALUES (1, 0)`
      const holder = yield* connect(url!)
      yield* Effect.promise(() => holder.query(`SET search_path = ${Pg.escapeIdentifier(schema)}`))
      yield* Effect.promise(() => holder.query("BEGIN"))
      yield* Effect.promise(() => holder.query("SELECT * FROM lock_rows WHERE id = 1 FOR UPDATE"))
      const exit = yield* Effect.exit(Effect.provide(bus.dispatch(new Touch({ id: 1 })), context))
      yield* Effect.promise(() => holder.query("ROLLBACK"))
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(false)
      const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : undefined
      expect(failure?._tag === "Some" && failure.value instanceof CommandError.StoreUnavailable).toBe(true)
    }), 60_000)

  it.scoped("the service answers 503 with Retry-After, not 500", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema()
      const service = yield* spawn(serviceEnv(withLockTimeout(url!), { DATABASE_SCHEMA: schema }))
      yield* Effect.promise(() => setStock(service.baseUrl, "locked", 10))
      const holder = yield* connect(url!)
      yield* Effect.promise(() => holder.query(`SET search_path = ${Pg.escapeIdentifier(schema)}`))
      yield* Effect.promise(() => holder.query("BEGIN"))
      yield* Effect.promise(() => holder.query("SELECT * FROM inventory WHERE product_id = 'locked' FOR UPDATE"))
      const outcome = yield* Effect.promise(() =>
        sendCreate(service.baseUrl, createRequest("k-1", "user-1", [{ product_id: "locked", quantity: 1 }]))
      )
      yield* Effect.promise(() => holder.query("ROLLBACK"))
      expect(outcome._tag === "Reply" ? [outcome.status, codeOf(outcome), outcome.headers.get("retry-after")] : outcome)
        .toEqual([503, "StoreUnavailable", "1"])
    }), 120_000)
})
