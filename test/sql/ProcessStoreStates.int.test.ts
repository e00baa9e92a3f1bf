/**
 * The SQL process store gives a state back as it was saved: a state that
 * encodes to a JSON string (a status, say), which a driver that parses the
 * column handed over as that string and was parsed again (dying, or taking
 * "1" for 1); and an object's keys in the order written, which `jsonb`
 * sorted. Compared with the in-memory store.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ProcessManager } from "../../src/index.js"
import { SqlMigrations, SqlProcesses } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const states: ReadonlyArray<unknown> = ["paid", "1", "", { zz: 1, a: 2, m: 3 }, [3, 1, 2], 0, null, true]

const roundTrip = Effect.gen(function*() {
  const store = yield* ProcessManager.Processes
  const read: Array<unknown> = []
  for (const [i, state] of states.entries()) {
    const saved = yield* store.save(
      "states",
      `k${i}`,
      { state, done: false, version: 1, deadlines: [] },
      0
    )
    expect(saved).toBe(true)
    const loaded = yield* store.load("states", `k${i}`)
    read.push(Option.getOrThrow(loaded).state)
  }
  return read
})

describe(`process store states (${TestDatabase.kind})`, () => {
  it.scoped("in memory, each state comes back as it was saved", () =>
    Effect.gen(function*() {
      const read = yield* roundTrip
      expect(read).toEqual(states)
      expect(Object.keys(read[3] as object)).toEqual(["zz", "a", "m"])
    }).pipe(Effect.provide(ProcessManager.layerMemory)))

  it.scoped("on the database, the same", () =>
    Effect.gen(function*() {
      yield* SqlMigrations.run
      const read = yield* roundTrip
      expect(read).toEqual(states)
      expect(Object.keys(read[3] as object)).toEqual(["zz", "a", "m"])
    }).pipe(Effect.provide(SqlProcesses.layer.pipe(Layer.provideMerge(TestDatabase.layer())))))
})
