/**
 * The memory store answers as the SQL store does, on random sequences of
 * operations (keyed and unkeyed schedules, cancels, claims, outcomes,
 * retries, leases that pass): a model-based property test.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import * as fc from "fast-check"
import { CommandScheduler } from "../../src/index.js"
import { SqlScheduledCommands } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

type Op =
  | { readonly _tag: "add"; readonly key: number | undefined; readonly keep: boolean; readonly due: boolean }
  | { readonly _tag: "cancelKey"; readonly key: number }
  | { readonly _tag: "cancel"; readonly ref: number }
  | { readonly _tag: "retry"; readonly ref: number }
  | { readonly _tag: "claim" }
  | { readonly _tag: "outcome"; readonly ref: number; readonly kind: "complete" | "fail" | "retryAfter" | "renew" }
  | { readonly _tag: "expire" }

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      _tag: fc.constant("add" as const),
      key: fc.option(fc.nat(2), { nil: undefined }),
      keep: fc.boolean(),
      due: fc.boolean()
    }),
    weight: 5
  },
  { arbitrary: fc.record({ _tag: fc.constant("cancelKey" as const), key: fc.nat(2) }), weight: 1 },
  { arbitrary: fc.record({ _tag: fc.constant("cancel" as const), ref: fc.nat(20) }), weight: 1 },
  { arbitrary: fc.record({ _tag: fc.constant("retry" as const), ref: fc.nat(20) }), weight: 2 },
  { arbitrary: fc.record({ _tag: fc.constant("claim" as const) }), weight: 3 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("outcome" as const),
      ref: fc.nat(20),
      kind: fc.constantFrom("complete" as const, "fail" as const, "retryAfter" as const, "renew" as const)
    }),
    weight: 4
  },
  { arbitrary: fc.record({ _tag: fc.constant("expire" as const) }), weight: 1 }
)

const Shared = SqlScheduledCommands.layer.pipe(Layer.provideMerge(TestDatabase.layer()))

const tenYears = 10 * 365 * 24 * 3600_000
const lease = Duration.hours(1)
const farFuture = DateTime.unsafeMake(Date.UTC(3000, 0, 1))

// A clock moved by hand, for the memory store.
const fakeClock = () => {
  let now = Date.now()
  const clock: Clock.Clock = {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: () => now,
    currentTimeMillis: Effect.sync(() => now),
    unsafeCurrentTimeNanos: () => BigInt(now) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(now) * 1_000_000n),
    sleep: () => Effect.void
  }
  return { clock, advance: (millis: number) => void (now += millis) }
}

const uuid = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`

const snapshot = (store: CommandScheduler.Store) =>
  Effect.map(store.list({ limit: 1000 }), (listed) =>
    listed.map((c) => ({
      id: c.id,
      n: (c.command as { n: number }).n,
      state: c.state,
      key: c.key,
      attempts: c.attempts,
      retries: c.retries,
      lastError: c.lastError,
      due: c.dueAt.epochMillis < farFuture.epochMillis - 1
    })).sort((a, b) => a.id.localeCompare(b.id)))

layer(Shared, { excludeTestServices: true, timeout: "300 seconds" })(
  `CommandScheduler memory store vs SQL store (${TestDatabase.kind})`,
  (it) => {
    it.effect("answer alike on random operation sequences", () =>
      Effect.gen(function*() {
        const runtime = yield* Effect.runtime<SqlClient.SqlClient | CommandScheduler.ScheduledCommands>()
        const sql = yield* SqlClient.SqlClient
        const sqlStore = yield* CommandScheduler.ScheduledCommands
        const property = fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 30 }), (ops) =>
          Runtime.runPromise(runtime)(
            Effect.gen(function*() {
              yield* TestDatabase.truncateAll
              const memStore = yield* Effect.provide(CommandScheduler.ScheduledCommands, CommandScheduler.layerMemory)
              const { advance, clock } = fakeClock()
              const mem = <A, E>(effect: Effect.Effect<A, E>) =>
                Effect.withClock(effect, clock)
              const ids: Array<string> = []
              const held: Array<{ mem: CommandScheduler.Due; sql: CommandScheduler.Due }> = []
              const trace: Array<unknown> = []
              let n = 0
              for (const o of ops) {
                let answers: [unknown, unknown]
                switch (o._tag) {
                  case "add": {
                    const id = uuid(++n)
                    const entry = {
                      id,
                      commandType: "Remind",
                      command: { _tag: "Remind", n },
                      due: { at: o.due ? DateTime.unsafeMake(0) : farFuture }
                    }
                    if (o.key === undefined) {
                      yield* mem(memStore.add(entry))
                      yield* sqlStore.add(entry)
                      ids.push(id)
                      answers = [id, id]
                    } else {
                      const keyed = {
                        ...entry,
                        key: `k${o.key}`,
                        onConflict: o.keep ? "keep" as const : "replace" as const
                      }
                      answers = [yield* mem(memStore.addKeyed!(keyed)), yield* sqlStore.addKeyed!(keyed)]
                      ids.push(id)
                    }
                    break
                  }
                  case "cancelKey":
                    answers = [yield* mem(memStore.cancelKey!(`k${o.key}`)), yield* sqlStore.cancelKey!(`k${o.key}`)]
                    break
                  case "cancel": {
                    const id = ids[o.ref % Math.max(1, ids.length)] ?? uuid(999)
                    answers = [yield* mem(memStore.cancel(id)), yield* sqlStore.cancel(id)]
                    break
                  }
                  case "retry": {
                    const id = ids[o.ref % Math.max(1, ids.length)] ?? uuid(999)
                    answers = [yield* mem(memStore.retry(id)), yield* sqlStore.retry(id)]
                    break
                  }
                  case "claim": {
                    const byId = (dues: ReadonlyArray<CommandScheduler.Due>) =>
                      [...dues].sort((a, b) => a.id.localeCompare(b.id))
                    const m = byId(yield* mem(memStore.claim(100, lease)))
                    const s = byId(yield* sqlStore.claim(100, lease))
                    answers = [m.map((d) => [d.id, d.attempts, d.retries]), s.map((d) => [d.id, d.attempts, d.retries])]
                    if (m.length === s.length) m.forEach((d, i) => held.push({ mem: d, sql: s[i]! }))
                    break
                  }
                  case "outcome": {
                    const h = held[o.ref % Math.max(1, held.length)]
                    if (h === undefined) {
                      answers = [null, null]
                      break
                    }
                    switch (o.kind) {
                      case "complete":
                        yield* mem(memStore.complete(h.mem))
                        yield* sqlStore.complete(h.sql)
                        answers = [null, null]
                        break
                      case "fail":
                        yield* mem(memStore.fail(h.mem, "broke"))
                        yield* sqlStore.fail(h.sql, "broke")
                        answers = [null, null]
                        break
                      case "retryAfter":
                        // False from both when a keyed schedule replaced it while held.
                        answers = [
                          yield* mem(memStore.retryAfter(h.mem, Duration.zero, "again")),
                          yield* sqlStore.retryAfter(h.sql, Duration.zero, "again")
                        ]
                        break
                      case "renew": {
                        const m = yield* mem(memStore.renew(h.mem, lease))
                        const s = yield* sqlStore.renew(h.sql, lease)
                        if (m !== undefined && s !== undefined) held.push({ mem: m, sql: s })
                        answers = [m !== undefined, s !== undefined]
                      }
                    }
                    break
                  }
                  case "expire": {
                    advance(tenYears)
                    const moved = yield* sql<{ id: string; old: string; lease: string }>`
                    WITH old AS (
                      SELECT id, lease_expires_at::text AS old FROM scheduled_commands
                      WHERE lease_expires_at IS NOT NULL FOR UPDATE
                    )
                    UPDATE scheduled_commands AS s SET lease_expires_at = s.lease_expires_at - interval '10 years'
                    FROM old WHERE s.id = old.id
                    RETURNING s.id, old.old, s.lease_expires_at::text AS lease`.withoutTransform
                    for (const h of held) {
                      const row = moved.find((r) => r.id === h.sql.id && r.old === h.sql.lease)
                      if (row !== undefined) h.sql = { ...h.sql, lease: row.lease }
                    }
                    answers = [null, null]
                  }
                }
                trace.push(o)
                const [m, s] = [yield* snapshot(memStore), yield* snapshot(sqlStore)]
                expect({ trace, answer: answers[0], state: m }).toEqual({ trace, answer: answers[1], state: s })
              }
            }).pipe(Effect.orDie)
          ))
        yield* Effect.promise(() =>
          fc.assert(property, { numRuns: 150, endOnFailure: true })
        )
      }))
  }
)
