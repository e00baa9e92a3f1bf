/**
 * The machinery of the scheduler's model tests, which run random sequences
 * of operations on the memory store and the SQL store side by side and
 * compare their answers and what each then lists.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { expect } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Runtime from "effect/Runtime"
import * as fc from "fast-check"
import type { CommandScheduler } from "../../src/index.js"

export const lease = Duration.hours(1)
const tenYears = 10 * 365 * 24 * 3600_000
const farFuture = DateTime.unsafeMake(Date.UTC(3000, 0, 1))

/** The id of the `i`th command scheduled. */
export const uuid = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`

/** The element of `from` that `ref` picks, whatever its length; none of an empty one. */
export const pick = <A>(from: ReadonlyArray<A>, ref: number) => from[ref % Math.max(1, from.length)]

export type OutcomeKind = "complete" | "fail" | "retryAfter" | "renew"

/** What a runner does with a command it holds. */
export const outcomeKind: fc.Arbitrary<OutcomeKind> = fc.constantFrom(
  "complete" as const,
  "fail" as const,
  "retryAfter" as const,
  "renew" as const
)

/** A command a runner holds: as each store handed it out. */
export interface Held {
  readonly mem: CommandScheduler.Due
  sql: CommandScheduler.Due
}

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

/**
 * What `store` lists, each command with its id, in the order of ids
 * (`"id"`); or by payload (`"payload"`): each command's `n` is unique,
 * whatever id a store keeps it under.
 */
const snapshot = (store: CommandScheduler.Store, by: "id" | "payload") =>
  Effect.map(store.list({ limit: 1000 }), (listed) => {
    const states = listed.map((c) => ({
      ...(by === "id" ? { id: c.id } : {}),
      n: (c.command as { n: number }).n,
      state: c.state,
      key: c.key,
      attempts: c.attempts,
      retries: c.retries,
      lastError: c.lastError,
      due: c.dueAt.epochMillis < farFuture.epochMillis - 1
    }))
    return by === "id"
      ? states.sort((a, b) => a.id!.localeCompare(b.id!))
      : states.sort((a, b) => a.n - b.n)
  })

/**
 * Checks `predicate` on values of `arbitrary`, each run on the calling
 * fiber's runtime (its failures defects), with fast-check's `parameters`.
 */
export const assertProperty = <T, E, R>(
  arbitrary: fc.Arbitrary<T>,
  predicate: (value: T) => Effect.Effect<void, E, R>,
  parameters: fc.Parameters<[T]>
) =>
  Effect.gen(function*() {
    const runtime = yield* Effect.runtime<R>()
    const property = fc.asyncProperty(arbitrary, (value) => Runtime.runPromise(runtime)(Effect.orDie(predicate(value))))
    yield* Effect.promise(() => fc.assert(property, parameters))
  })

/**
 * One sequence of operations on both stores: the memory store on a clock
 * moved by hand (`mem` runs a call of it, `onMem` around), the SQL store on
 * the database's. `ids` are the commands scheduled, `held` the ones a runner
 * holds, `trace` what has been done, for `same`'s message.
 */
export const makeRun = (options: {
  readonly sql: SqlClient.SqlClient
  readonly sqlStore: CommandScheduler.Store
  readonly memStore: CommandScheduler.Store
  readonly onMem?: <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E>
  /** How `same` lists the commands: see `snapshot`. */
  readonly snapshotBy: "id" | "payload"
}) => {
  const { memStore, sql, sqlStore } = options
  const { advance, clock } = fakeClock()
  const mem = <A, E>(effect: Effect.Effect<A, E>) =>
    options.onMem === undefined ? Effect.withClock(effect, clock) : options.onMem(Effect.withClock(effect, clock))
  const ids: Array<string> = []
  const held: Array<Held> = []
  const trace: Array<unknown> = []
  let n = 0

  /** Both stores answered `answers` alike, and list the same commands. */
  const same = (answers: readonly [unknown, unknown]) =>
    Effect.gen(function*() {
      const [m, s] = [yield* snapshot(memStore, options.snapshotBy), yield* snapshot(sqlStore, options.snapshotBy)]
      expect({ trace, answer: answers[0], state: m }).toEqual({ trace, answer: answers[1], state: s })
    })

  /** Schedules the next command on both, by `key` or not: its id, and the keyed schedule's answers. */
  const add = (o: { readonly key: number | undefined; readonly keep: boolean; readonly due: boolean }) =>
    Effect.gen(function*() {
      const id = uuid(++n)
      ids.push(id)
      const entry = {
        id,
        commandType: "Remind",
        command: { _tag: "Remind", n },
        due: { at: o.due ? DateTime.unsafeMake(0) : farFuture }
      }
      if (o.key === undefined) {
        yield* mem(memStore.add(entry))
        yield* sqlStore.add(entry)
        return { id, answers: undefined }
      }
      const keyed = {
        ...entry,
        key: `k${o.key}`,
        onConflict: o.keep ? "keep" as const : "replace" as const
      }
      return { id, answers: [yield* mem(memStore.addKeyed!(keyed)), yield* sqlStore.addKeyed!(keyed)] as const }
    })

  /** A runner's claim on both (the SQL store's through `onSql`): the claimed ones are held. */
  const claim = (onSql: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      const byId = (dues: ReadonlyArray<CommandScheduler.Due>) => [...dues].sort((a, b) => a.id.localeCompare(b.id))
      const m = byId(yield* mem(memStore.claim(100, lease)))
      const s = byId(yield* onSql(sqlStore.claim(100, lease)))
      if (m.length === s.length) m.forEach((d, i) => held.push({ mem: d, sql: s[i]! }))
      return [
        m.map((d) => [d.id, d.attempts, d.retries]),
        s.map((d) => [d.id, d.attempts, d.retries])
      ] as const
    })

  /**
   * The outcome `kind` of `h` on both; a renewal held, and answered as
   * `renewed` gives (of the renewal, undefined if there is none).
   */
  const outcome = (
    h: Held | undefined,
    kind: OutcomeKind,
    renewed: (due: CommandScheduler.Due | undefined) => unknown
  ) =>
    Effect.gen(function*() {
      if (h === undefined) return [null, null] as const
      switch (kind) {
        case "complete":
          yield* mem(memStore.complete(h.mem))
          yield* sqlStore.complete(h.sql)
          return [null, null] as const
        case "fail":
          yield* mem(memStore.fail(h.mem, "broke"))
          yield* sqlStore.fail(h.sql, "broke")
          return [null, null] as const
        case "retryAfter":
          // False from both when a keyed schedule replaced it while held.
          return [
            yield* mem(memStore.retryAfter(h.mem, Duration.zero, "again")),
            yield* sqlStore.retryAfter(h.sql, Duration.zero, "again")
          ] as const
        case "renew": {
          const m = yield* mem(memStore.renew(h.mem, lease))
          const s = yield* sqlStore.renew(h.sql, lease)
          if (m !== undefined && s !== undefined) held.push({ mem: m, sql: s })
          return [renewed(m), renewed(s)] as const
        }
      }
    })

  /** Ten years pass: every lease runs out (the SQL store's moved back, and the held ones with them). */
  const expire = Effect.gen(function*() {
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
  })

  return { mem, ids, held, trace, same, add, claim, outcome, expire }
}
