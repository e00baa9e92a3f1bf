/**
 * `DATABASE_SCHEMA` on a PostgreSQL server: instances that start together
 * on a new schema all come up, and a name that is also an SQL keyword is
 * still a name. (The embedded database has no schema setting.)
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Database from "../../src/server/Database.js"
import * as TestDatabase from "../support/Database.js"

const instance = (schema: string) =>
  Layer.build(Database.layerMigrated).pipe(
    Effect.flatMap((context) =>
      Effect.flatMap(
        SqlClient.SqlClient,
        (sql) => sql<{ readonly schema: string }>`SELECT current_schema() AS schema`
      ).pipe(Effect.provide(context))
    ),
    Effect.scoped,
    Effect.withConfigProvider(ConfigProvider.fromJson({
      DATABASE_URL: TestDatabase.serverUrl!,
      DATABASE_SCHEMA: schema,
      DB_POOL_SIZE: 2
    })),
    Logger.withMinimumLogLevel(LogLevel.Warning)
  )

describe.skipIf(TestDatabase.serverUrl === undefined)("DATABASE_SCHEMA (postgres)", () => {
  it.scoped("three instances starting together on a new schema all come up, migrated", () =>
    Effect.gen(function*() {
      for (let round = 0; round < 5; round++) {
        const schema = TestDatabase.freshSchema()
        yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: schema }))
        const exits = yield* Effect.all([instance(schema), instance(schema), instance(schema)].map(Effect.exit), {
          concurrency: "unbounded"
        })
        for (const exit of exits) {
          expect(Exit.isSuccess(exit), `round ${round}: ${Exit.isFailure(exit) ? String(exit.cause) : ""}`).toBe(true)
          if (Exit.isSuccess(exit)) expect(exit.value).toEqual([{ schema }])
        }
      }
    }), 120_000)

  it.scoped("a schema named after an SQL keyword (order) is created and used", () =>
    Effect.gen(function*() {
      yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema({ DATABASE_SCHEMA: "order" }))
      expect(yield* instance("order")).toEqual([{ schema: "order" }])
    }), 60_000)
})
