/**
 * The database settings read from the environment: defaults, and a bad value
 * refused with its name.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Config from "../../src/server/Config.js"

const read = (env: Record<string, string>) =>
  Config.database.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))

describe("Config.database", () => {
  it.effect("prepares 256 statement texts by default, none with DB_PREPARED_STATEMENTS=0", () =>
    Effect.gen(function*() {
      expect((yield* read({})).preparedStatements).toBe(256)
      expect((yield* read({ DB_PREPARED_STATEMENTS: "0" })).preparedStatements).toBe(0)
      expect((yield* read({ DB_PREPARED_STATEMENTS: "32" })).preparedStatements).toBe(32)
    }))

  it.effect("refuses a negative or non-integer DB_PREPARED_STATEMENTS, naming it", () =>
    Effect.gen(function*() {
      for (const value of ["-1", "2.5", "many"]) {
        const error = yield* Effect.flip(read({ DB_PREPARED_STATEMENTS: value }))
        expect(String(error)).toContain("DB_PREPARED_STATEMENTS")
      }
    }))
})
