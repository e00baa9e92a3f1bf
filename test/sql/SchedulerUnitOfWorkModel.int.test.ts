/**
 * The memory store answers as the SQL store does when some operations run in
 * a dispatch's unit of work (`InMemory.layer`'s, `SqlUnitOfWork`'s) that
 * commits or rolls back, between claims, renewals (a runner starting a
 * command), cancels of claimed and started commands, outcomes and leases
 * that pass: a model-based property test, a sibling of
 * SchedulerKeysModel.int.test.ts. On a server, a runner also claims while a
 * unit of work is open (PGlite has one session, which the transaction holds).
 * A retry inside a unit of work that rolled back used to stand in memory.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import * as fc from "fast-check"
import { CommandScheduler, UnitOfWork } from "../../src/index.js"
import { SqlScheduledCommands, SqlUnitOfWork } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

// What a dispatch does to the schedule: schedule (by key or not), cancel, retry;
// by id, one scheduled, one a runner claimed (started or not) or one failed.
type Target = "scheduled" | "claimed" | "failed"

type Write =
  | { readonly _tag: "add"; readonly key: number | undefined; readonly keep: boolean; readonly due: boolean }
  | { readonly _tag: "cancelKey"; readonly key: number }
  | { readonly _tag: "cancel" | "retry"; readonly ref: number; readonly target: Target }

type Op =
  | Write
  | { readonly _tag: "claim" }
  | { readonly _tag: "outcome"; readonly ref: number; readonly kind: "complete" | "fail" | "retryAfter" | "renew" }
  | { readonly _tag: "expire" }
  | {
    readonly _tag: "unitOfWork"
    readonly writes: ReadonlyArray<Write>
    readonly commit: boolean
    readonly claimWhileOpen: boolean
  }

const write: fc.Arbitrary<Write> = fc.oneof(
  {
    arbitrary: fc.record({
      _tag: fc.constant("add" as const),
      key: fc.option(fc.nat(2), { nil: undefined }),
      keep: fc.boolean(),
      // Mostly due, so that runners claim them.
      due: fc.constantFrom(true, true, false)
    }),
    weight: 6
  },
  { arbitrary: fc.record({ _tag: fc.constant("cancelKey" as const), key: fc.nat(2) }), weight: 2 },
  {
    arbitrary: fc.record({
      _tag: fc.constantFrom("cancel" as const, "retry" as const),
      ref: fc.nat(20),
      target: fc.constantFrom<Target>("scheduled", "claimed", "failed")
    }),
    weight: 4
  }
)

const op: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: write, weight: 6 },
  { arbitrary: fc.record({ _tag: fc.constant("claim" as const) }), weight: 3 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("outcome" as const),
      // Counted from the latest claim or renewal: older ones are mostly stale.
      ref: fc.nat(5),
      kind: fc.constantFrom("complete" as const, "fail" as const, "retryAfter" as const, "renew" as const)
    }),
    weight: 6
  },
  { arbitrary: fc.record({ _tag: fc.constant("expire" as const) }), weight: 1 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("unitOfWork" as const),
      writes: fc.array(write, { minLength: 1, maxLength: 4 }),
      commit: fc.boolean(),
      claimWhileOpen: fc.boolean()
    }),
    weight: 3
  }
)

const Shared = Layer.merge(SqlScheduledCommands.layer, SqlUnitOfWork.layer).pipe(
  Layer.provideMerge(TestDatabase.layer())
)

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

// By payload: each command's `n` is unique, whatever id a store keeps it under.
const snapshot = (store: CommandScheduler.Store) =>
  Effect.map(store.list({ limit: 1000 }), (listed) =>
    listed.map((c) => ({
      n: (c.command as { n: number }).n,
      state: c.state,
      key: c.key,
      attempts: c.attempts,
      retries: c.retries,
      lastError: c.lastError,
      due: c.dueAt.epochMillis < farFuture.epochMillis - 1
    })).sort((a, b) => a.n - b.n))

// A statement on a connection of its own, as a runner's, while the caller's transaction is open.
const outsideTransaction = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.mapInputContext(
    effect,
    (context: Context.Context<R>) => Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<R>
  )

class RolledBack {
  readonly _tag = "RolledBack"
}

layer(Shared, { excludeTestServices: true, timeout: "300 seconds" })(
  `CommandScheduler memory store vs SQL store, with units of work (${TestDatabase.kind})`,
  (it) => {
    it.effect("answer alike on random operation sequences", () =>
      Effect.gen(function*() {
        const runtime = yield* Effect.runtime<
          SqlClient.SqlClient | CommandScheduler.ScheduledCommands | UnitOfWork.UnitOfWork
        >()
        const sql = yield* SqlClient.SqlClient
        const sqlStore = yield* CommandScheduler.ScheduledCommands
        const sqlUnitOfWork = yield* UnitOfWork.UnitOfWork
        const property = fc.asyncProperty(fc.array(op, { minLength: 10, maxLength: 25, size: "max" }), (ops) =>
          Runtime.runPromise(runtime)(
            Effect.gen(function*() {
              yield* TestDatabase.truncateAll
              const [memStore, memUnitOfWork] = yield* Effect.provide(
                Effect.all([CommandScheduler.ScheduledCommands, UnitOfWork.UnitOfWork]),
                Layer.merge(InMemory.layer, CommandScheduler.layerMemory)
              )
              const { advance, clock } = fakeClock()
              // Memory's writes register with memory's unit of work, whatever the SQL store's is.
              const mem = <A, E>(effect: Effect.Effect<A, E>) =>
                Effect.withClock(effect, clock).pipe(Effect.provideService(UnitOfWork.UnitOfWork, memUnitOfWork))
              const ids: Array<string> = []
              const held: Array<{ mem: CommandScheduler.Due; sql: CommandScheduler.Due }> = []
              const trace: Array<unknown> = []
              let n = 0
              const pick = <A>(from: ReadonlyArray<A>, ref: number) =>
                from[ref % Math.max(1, from.length)]
              const idOf = ({ ref, target }: { readonly ref: number; readonly target: Target }) =>
                Effect.map(sqlStore.list({ state: "failed" }), (failed) =>
                  (target === "scheduled"
                    ? pick(ids, ref)
                    : target === "claimed"
                    ? pick(held, ref)?.sql.id
                    : pick(failed, ref)?.id) ?? uuid(999))
              const same = (answers: readonly [unknown, unknown]) =>
                Effect.gen(function*() {
                  const [m, s] = [yield* snapshot(memStore), yield* snapshot(sqlStore)]
                  expect({ trace, answer: answers[0], state: m }).toEqual({ trace, answer: answers[1], state: s })
                })
              const writeBoth = (w: Write) =>
                Effect.gen(function*() {
                  switch (w._tag) {
                    case "add": {
                      const id = uuid(++n)
                      ids.push(id)
                      const entry = {
                        id,
                        commandType: "Remind",
                        command: { _tag: "Remind", n },
                        due: { at: w.due ? DateTime.unsafeMake(0) : farFuture }
                      }
                      if (w.key === undefined) {
                        yield* mem(memStore.add(entry))
                        yield* sqlStore.add(entry)
                        return [null, null] as const
                      }
                      const keyed = {
                        ...entry,
                        key: `k${w.key}`,
                        onConflict: w.keep ? "keep" as const : "replace" as const
                      }
                      return [yield* mem(memStore.addKeyed!(keyed)), yield* sqlStore.addKeyed!(keyed)] as const
                    }
                    case "cancelKey":
                      return [
                        yield* mem(memStore.cancelKey!(`k${w.key}`)),
                        yield* sqlStore.cancelKey!(`k${w.key}`)
                      ] as const
                    case "cancel": {
                      const id = yield* idOf(w)
                      return [yield* mem(memStore.cancel(id)), yield* sqlStore.cancel(id)] as const
                    }
                    case "retry": {
                      const id = yield* idOf(w)
                      return [yield* mem(memStore.retry(id)), yield* sqlStore.retry(id)] as const
                    }
                  }
                })
              const claimBoth = (onSql: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>) =>
                Effect.gen(function*() {
                  const byId = (dues: ReadonlyArray<CommandScheduler.Due>) =>
                    [...dues].sort((a, b) => a.id.localeCompare(b.id))
                  const m = byId(yield* mem(memStore.claim(100, lease)))
                  const s = byId(yield* onSql(sqlStore.claim(100, lease)))
                  if (m.length === s.length) m.forEach((d, i) => held.push({ mem: d, sql: s[i]! }))
                  return [
                    m.map((d) => [d.id, d.attempts, d.retries]),
                    s.map((d) => [d.id, d.attempts, d.retries])
                  ] as const
                })
              for (const o of ops) {
                trace.push(o)
                let answers: readonly [unknown, unknown]
                switch (o._tag) {
                  case "add":
                  case "cancelKey":
                  case "cancel":
                  case "retry":
                    answers = yield* writeBoth(o)
                    break
                  case "claim":
                    answers = yield* claimBoth((effect) => effect)
                    break
                  case "outcome": {
                    const h = held[held.length - 1 - (o.ref % Math.max(1, held.length))]
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
                        answers = [
                          yield* mem(memStore.retryAfter(h.mem, Duration.zero, "again")),
                          yield* sqlStore.retryAfter(h.sql, Duration.zero, "again")
                        ]
                        break
                      case "renew": {
                        const m = yield* mem(memStore.renew(h.mem, lease))
                        const s = yield* sqlStore.renew(h.sql, lease)
                        if (m !== undefined && s !== undefined) held.push({ mem: m, sql: s })
                        answers = [m === undefined ? m : m.superseded, s === undefined ? s : s.superseded]
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
                    UPDATE scheduled_commands AS s SET lease_expires_at = s.lease_expires_at - interval '10 years',
                      claimed_lease_expires_at = s.claimed_lease_expires_at - interval '10 years'
                    FROM old WHERE s.id = old.id
                    RETURNING s.id, old.old, s.lease_expires_at::text AS lease`.withoutTransform
                    for (const h of held) {
                      const row = moved.find((r) => r.id === h.sql.id && r.old === h.sql.lease)
                      if (row !== undefined) h.sql = { ...h.sql, lease: row.lease }
                    }
                    answers = [null, null]
                    break
                  }
                  case "unitOfWork": {
                    // Each store's writes in its own unit of work, compared
                    // write by write (the SQL store read in its transaction).
                    const inside = Effect.gen(function*() {
                      for (const w of o.writes) {
                        const answer = yield* writeBoth(w)
                        trace.push({ inside: w })
                        yield* same(answer)
                      }
                      if (o.claimWhileOpen && TestDatabase.kind === "postgres") {
                        trace.push("claim while open")
                        yield* same(yield* claimBoth(outsideTransaction))
                      }
                      if (!o.commit) return yield* Effect.fail(new RolledBack())
                    })
                    // Memory's unit of work around the SQL store's: both end
                    // together, the SQL one first. A failed comparison inside
                    // is a defect, and fails the property.
                    yield* memUnitOfWork.transactional(sqlUnitOfWork.transactional(inside)).pipe(
                      Effect.catchIf((error) => error instanceof RolledBack, () => Effect.void)
                    )
                    answers = [null, null]
                    break
                  }
                }
                yield* same(answers)
              }
            }).pipe(Effect.orDie)
          ))
        yield* Effect.promise(() =>
          fc.assert(property, { numRuns: 60, seed: 20250601, endOnFailure: true })
        )
      }))
  }
)
