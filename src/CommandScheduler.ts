/**
 * Commands to run later: a payment that times out, a reminder, a retry
 * tomorrow. `schedule` stores a command, encoded with its own schema, with
 * the time it is due; `run` dispatches the due ones through a bus. With the
 * SQL store (`effect-command-bus/sql`), scheduling from inside a handler
 * writes in the dispatch's transaction: the command is scheduled if and only
 * if the one that scheduled it commits. A key (`schedule`'s options) names a
 * command, so that scheduling again under it replaces it (or keeps it), and
 * `cancelKey` drops it, with no id to keep.
 *
 * Delivery is at least once: a runner that stops between a dispatch and its
 * record runs it again once the lease has passed. A scheduled command without
 * an idempotency key is dispatched with `scheduled:<id>`, so with the bus's
 * idempotency middleware the second run replays the first one's outcome.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Struct from "effect/Struct"
import { randomUUID } from "node:crypto"
import * as Command from "./Command.js"
import type * as CommandBus from "./CommandBus.js"
import type { StoreUnavailable } from "./CommandError.js"
import { failureOf, stored, survived } from "./internal/cause.js"
import * as JsonValue from "./internal/json.js"
import {
  leaseOfASecond,
  minStoredEpochMillis,
  pageSize,
  positiveCounts,
  storedDuration,
  storedMillis
} from "./internal/limit.js"
import { isRefusal } from "./internal/refusal.js"
import * as Tracing from "./Tracing.js"
import * as UnitOfWork from "./UnitOfWork.js"

/**
 * A command waiting for its time, or one that failed for good.
 *
 * @since 0.1.0
 * @category models
 */
export class ScheduledCommand extends Schema.Class<ScheduledCommand>("ScheduledCommand")({
  id: Schema.UUID,
  commandType: Schema.String,
  /** The command as its schema encodes it. */
  command: Schema.Unknown,
  dueAt: Schema.DateTimeUtc,
  /** `failed`: kept for an operator; runs again only after `retry`. */
  state: Schema.Literal("pending", "failed"),
  /** Runs so far. */
  attempts: Schema.Int,
  /** Times an operator ran it again with `retry`. */
  retries: Schema.Int,
  /** The last failure, as `Cause.pretty` renders it (at most 4000 characters). */
  lastError: Schema.optionalWith(Schema.String, { exact: true }),
  /**
   * The key it was scheduled under (`schedule`'s `key`), if any: a command
   * scheduled without one, or before keys existed, has none.
   */
  key: Schema.optionalWith(Schema.String, { exact: true })
}) {}

/**
 * A scheduling key: 1 to 255 characters (code points), storable text, as an
 * idempotency key. Validate one built from outside input with it before
 * `schedule`, which refuses a bad key as a defect.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Key = Command.TextOfLength(1, 255).pipe(Schema.annotations({ identifier: "ScheduleKey" }))

const isKey = Schema.is(Key)

/**
 * What `schedule` does when a command is already pending under its key:
 * `replace` it (the new command, at the new time: a debounce), or `keep` it
 * (and answer its id).
 *
 * @since 0.1.0
 * @category models
 */
export type OnConflict = "replace" | "keep"

/**
 * When a stored command is due: at a time, or after a delay from now by the
 * store's clock.
 *
 * @since 0.1.0
 * @category models
 */
export type DueTime = { readonly at: DateTime.Utc } | { readonly after: Duration.Duration }

/**
 * A command a runner has leased to run.
 *
 * @since 0.1.0
 * @category models
 */
export interface Due {
  readonly id: string
  readonly commandType: string
  readonly command: unknown
  /**
   * Claims so far, this one included: runs, and claims a runner gave up
   * unrun (a lease that passed while the command waited in its batch).
   */
  readonly attempts: number
  /**
   * Times an operator ran it again with `retry`: part of the idempotency key
   * a command without its own runs with, so a retried command runs rather
   * than replay the outcome that failed it.
   */
  readonly retries?: number | undefined
  /**
   * The store's token of this lease, when `attempts` alone cannot tell it
   * from a later one (`retry` sets attempts back, so a later claim can have
   * the same count).
   */
  readonly lease?: string | undefined
  /**
   * Set by `renew` on a command a keyed schedule replaced while it waited
   * its turn in a batch: the store has failed it (superseded), and the
   * runner reports it rather than run it.
   */
  readonly superseded?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Store {
  /**
   * Keeps a command, due at a time, or after a delay counted by the store's
   * own clock (a database's `now()`, which it also claims by, so a runner
   * whose clock is off does not move it).
   */
  readonly add: (entry: {
    readonly id: string
    readonly commandType: string
    readonly command: unknown
    readonly due: DueTime
  }) => Effect.Effect<void, StoreUnavailable>
  /**
   * Drops a pending or failed command that no runner is running; false when
   * there is none with this id, or a runner is running it: it renewed the
   * command's lease to start it (`renew`), and that lease holds. One a runner
   * claimed but has not started (waiting its turn in its batch) is dropped,
   * and its runner's `renew` then finds it gone. A store that counts a
   * claimed one as running too (as stores written before this did) cancels
   * less, and is still correct.
   */
  readonly cancel: (id: string) => Effect.Effect<boolean, StoreUnavailable>
  /**
   * Leases up to `limit` pending commands that are due, earliest first, for
   * `lease`, counting an attempt on each. A leased command is not handed out
   * again until its lease has passed, to this runner or another. With
   * `commandTypes`, only commands of those types (a runner passes its bus's,
   * so that runners of several buses can share a store); a store written
   * before it hands out every type, and a runner fails for good a command its
   * bus does not handle.
   */
  readonly claim: (
    limit: number,
    lease: Duration.Duration,
    commandTypes?: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<Due>, StoreUnavailable>
  /**
   * Holds `due` for `lease` from now (by the store's clock), if its lease has
   * not passed: the command as leased anew, which `complete`, `retryAfter`
   * and `fail` then take; undefined when the lease had passed (another claim
   * may hold the command) or the command is gone (cancelled while it waited
   * its turn). A runner renews each command as it starts it, so the last of
   * a batch has the whole lease to run in, as the first has; renewed, it is
   * running, and `cancel` leaves it.
   * One a keyed schedule replaced while it waited its turn (`addKeyed`) is
   * not started: failed for good, superseded, and answered with
   * `superseded: true` (a store written before it answers undefined).
   */
  readonly renew: (due: Due, lease: Duration.Duration) => Effect.Effect<Due | undefined, StoreUnavailable>
  /**
   * Ran: gone. This and `retryAfter` and `fail` act only on the lease `due` came
   * with: once another claim took the command over (its lease had passed),
   * they leave it to that claim.
   */
  readonly complete: (due: Due) => Effect.Effect<void, StoreUnavailable>
  /**
   * Pending again, due `after` from now by the store's clock, with the
   * failure; unless a command scheduled under its key replaced it while it
   * ran (`addKeyed`): then failed for good, and false.
   */
  readonly retryAfter: (
    due: Due,
    after: Duration.Duration,
    error: string
  ) => Effect.Effect<boolean | void, StoreUnavailable>
  /** Failed for good, with the failure. */
  readonly fail: (due: Due, error: string) => Effect.Effect<void, StoreUnavailable>
  /**
   * A failed command pending again, due now, its attempts reset and its
   * retries counted; false when there is none failed with this id.
   */
  readonly retry: (id: string) => Effect.Effect<boolean, StoreUnavailable>
  /** Earliest due first (default limit 100). */
  readonly list: (options?: {
    readonly state?: "pending" | "failed"
    readonly limit?: number
  }) => Effect.Effect<ReadonlyArray<ScheduledCommand>, StoreUnavailable>
  /**
   * Keeps a command under `key`, of which at most one is pending at a time
   * (failed ones do not count), and answers the id of the one pending under
   * it after. With one pending already: `replace` puts this one in its place
   * (the new id, command and due time, its attempts and failure cleared);
   * `keep` leaves it and answers its id. A pending command a runner holds
   * (its lease has not passed) is running: `keep` answers it; `replace`
   * leaves it to finish its run under no key, marked superseded
   * (`retryAfter` fails it, and so does a claim once its lease has passed),
   * and keeps this one under the key. Optional, as it came after the others:
   * `schedule` with a key dies on a store without it.
   */
  readonly addKeyed?:
    | ((entry: {
      readonly id: string
      readonly key: string
      readonly commandType: string
      readonly command: unknown
      readonly due: DueTime
      readonly onConflict: OnConflict
    }) => Effect.Effect<string, StoreUnavailable>)
    | undefined
  /**
   * Drops the command pending under `key` unless a runner is running it
   * (as `cancel`); false when there is none, or a runner is running it.
   * Optional as `addKeyed` is.
   */
  readonly cancelKey?: ((key: string) => Effect.Effect<boolean, StoreUnavailable>) | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ScheduledCommands extends Context.Tag("effect-command-bus/CommandScheduler/ScheduledCommands")<
  ScheduledCommands,
  Store
>() {}

interface MemoryEntry {
  readonly command: ScheduledCommand
  readonly leasedUntil: number
  /** The token of the claim that leased it. */
  readonly lease?: string
  /**
   * Its runner renewed its lease to start it: running, and not cancelled.
   * Claimed but not started (waiting its turn in a batch), it can be.
   */
  readonly started?: true
  /**
   * A keyed schedule replaced it while a runner held it: not run again (the
   * SQL store's `superseded` column).
   */
  readonly superseded?: true
  /**
   * Added by a dispatch whose transaction has not ended: not claimed until it
   * commits, as PostgreSQL's other connections do not see the row.
   */
  readonly uncommitted?: true
}

/**
 * Scheduled commands in memory, on the `Clock` (so `TestClock` moves them):
 * for tests. Inside a unit of work that tells how it ended (`afterEnd`, as
 * `InMemory.layer`'s does), what a dispatch scheduled, replaced, cancelled or retried
 * is undone when it does not commit, as the SQL store's rollback undoes it
 * (a retried dispatch schedules once), and what it scheduled is not claimed
 * before it commits; an entry changed since by someone else is left as it
 * is. `effect-command-bus/sql` keeps them in PostgreSQL, in the dispatch's
 * transaction.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<ScheduledCommands> = Layer.effect(
  ScheduledCommands,
  Effect.map(
    Ref.make(new Map<string, MemoryEntry>()),
    (entries): Store => {
      // Each claim's own token: `retry` sets attempts back, so a later claim
      // can have the count of an earlier one whose runner still reports.
      let leases = 0
      const holds = (entry: MemoryEntry | undefined, due: Due) =>
        entry !== undefined && entry.command.attempts === due.attempts && entry.lease === due.lease
      const running = (entry: MemoryEntry, now: number) => entry.leasedUntil > now && entry.started === true
      const pendingUnder = (map: Map<string, MemoryEntry>, key: string) => {
        for (const entry of map.values()) {
          if (entry.command.state === "pending" && entry.command.key === key) return entry
        }
        return undefined
      }
      // A runner's outcome for the command it holds.
      const update = (
        id: string,
        f: (entry: MemoryEntry) => ScheduledCommand | undefined,
        leasedAs: Due
      ) =>
        Ref.modify(entries, (map) => {
          // Ids are UUIDs, in whatever case a caller writes them, as in SQL.
          const key = id.toLowerCase()
          const entry = map.get(key)
          if (entry === undefined || !holds(entry, leasedAs)) return [false, map]
          const next = f(entry)
          if (next === undefined) return [false, map]
          const superseded = entry.superseded === true && next.state === "failed"
          return [true, new Map(map).set(key, { command: next, leasedUntil: 0, ...(superseded ? { superseded } : {}) })]
        })
      const added = (
        entry: { readonly id: string; readonly commandType: string; readonly command: unknown },
        dueAt: DateTime.Utc,
        key?: string
      ): MemoryEntry => {
        // Kept in lower case, as PostgreSQL's uuid column gives it back.
        const id = entry.id.toLowerCase()
        return {
          command: new ScheduledCommand({
            ...entry,
            id,
            ...(key === undefined ? {} : { key }),
            dueAt,
            state: "pending",
            attempts: 0,
            retries: 0
          }),
          leasedUntil: 0
        }
      }
      // A change a dispatch made, undone when its unit of work does not
      // commit: each entry it touched goes back to what it was, unless it is
      // no longer what the change left (a runner claimed it since, say).
      // What it added is not claimed before the commit: a rollback must not
      // find it run already. Ends run in the order they were registered, so
      // an entry a later change of an open transaction changed again (one
      // dispatch scheduling twice under a key) is followed through it.
      interface Touched {
        readonly id: string
        was: MemoryEntry | undefined
        readonly left: MemoryEntry | undefined
        settled: boolean
      }
      const open = new Set<Touched>()
      const end = (touched: ReadonlyArray<Touched>) => (committed: boolean) =>
        Ref.update(entries, (map) => {
          const next = new Map(map)
          for (const change of touched) {
            open.delete(change)
            if (change.settled) continue
            const later: Array<Touched> = []
            let current = change.left
            while (next.get(change.id) !== current) {
              const after = [...open].find((other) => !other.settled && other.id === change.id && other.was === current)
              if (after === undefined) break
              later.push(after)
              current = after.left
            }
            if (next.get(change.id) !== current) continue
            if (!committed) {
              for (const other of later) other.settled = true
              if (change.was === undefined) next.delete(change.id)
              else next.set(change.id, change.was)
            } else if (change.left?.uncommitted) {
              const kept = Struct.omit(change.left, "uncommitted")
              if (later.length > 0) later[0]!.was = kept
              else next.set(change.id, kept)
            }
          }
          return next
        })
      const undoable = <A>(
        change: (map: Map<string, MemoryEntry>) => readonly [A, Map<string, MemoryEntry>]
      ): Effect.Effect<A> =>
        Effect.suspend(() => {
          let touched: ReadonlyArray<Touched> = []
          return Effect.flatMap(UnitOfWork.afterEnd((committed) => end(touched)(committed)), (inTransaction) =>
            Ref.modify(entries, (before) => {
              const [result, changed] = change(before)
              if (before === changed) {
                return [result, before]
              }
              const after = new Map(changed)
              touched = [...new Set([...before.keys(), ...after.keys()])]
                .filter((id) =>
                  before.get(id) !== after.get(id)
                )
                .map((id) => {
                  const left = after.get(id)
                  // Claimable only once committed: added, or pending again (retried).
                  if (
                    inTransaction && left?.command.state === "pending" &&
                    before.get(id)?.command.state !== "pending"
                  ) {
                    after.set(id, { ...left, uncommitted: true })
                  }
                  return { id, was: before.get(id), left: after.get(id), settled: false }
                })
              if (inTransaction) touched.forEach((change) => open.add(change))
              return [result, after]
            }))
        })
      return {
        add: ({ due, ...entry }) =>
          Effect.flatMap(DateTime.now, (now) =>
            undoable((map) => {
              const next = added(entry, "at" in due ? due.at : DateTime.addDuration(now, due.after))
              return [undefined, new Map(map).set(next.command.id, next)]
            })),
        cancel: (id) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            undoable((map) => {
              const key = id.toLowerCase()
              const entry = map.get(key)
              if (entry === undefined || running(entry, now)) return [false, map]
              const next = new Map(map)
              next.delete(key)
              return [true, next]
            })),
        claim: (limit, lease, commandTypes) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            Ref.modify(entries, (map) => {
              const due = [...map.values()]
                .filter(({ command, leasedUntil, uncommitted }) =>
                  command.state === "pending" && command.dueAt.epochMillis <= now && leasedUntil <= now &&
                  uncommitted !== true &&
                  (commandTypes === undefined || commandTypes.includes(command.commandType))
                )
                .sort((a, b) => a.command.dueAt.epochMillis - b.command.dueAt.epochMillis)
                .slice(0, limit)
              const next = new Map(map)
              // One a keyed schedule replaced while it ran, whose runner
              // stopped before it ended: the command under its key stands for it.
              for (const { command, superseded } of due) {
                if (!superseded) continue
                next.set(command.id, {
                  command: new ScheduledCommand({
                    ...command,
                    state: "failed",
                    lastError: supersededError("its runner stopped before it ended")
                  }),
                  leasedUntil: 0,
                  superseded
                })
              }
              const claimed = due.filter(({ superseded }) => !superseded).map(({ command }) => {
                const counted = new ScheduledCommand({ ...command, attempts: command.attempts + 1 })
                const token = String(++leases)
                next.set(command.id, { command: counted, leasedUntil: now + storedMillis(lease), lease: token })
                return {
                  id: counted.id,
                  commandType: counted.commandType,
                  command: counted.command,
                  attempts: counted.attempts,
                  retries: counted.retries,
                  lease: token
                }
              })
              return [claimed, next]
            })),
        renew: (due, lease) =>
          Effect.flatMap(
            Clock.currentTimeMillis,
            (now) =>
              Ref.modify(entries, (map): [Due | undefined, Map<string, MemoryEntry>] => {
                const entry = map.get(due.id)
                if (entry === undefined || !holds(entry, due) || entry.leasedUntil <= now) return [undefined, map]
                // Replaced under its key while it waited its turn in the
                // batch: not started, the command under its key stands for it.
                if (entry.superseded) {
                  return [
                    { ...due, superseded: true },
                    new Map(map).set(due.id, {
                      command: new ScheduledCommand({
                        ...entry.command,
                        state: "failed",
                        lastError: supersededError("its turn in its runner's batch had not come")
                      }),
                      leasedUntil: 0,
                      superseded: true
                    })
                  ]
                }
                const token = String(++leases)
                return [
                  { ...due, lease: token },
                  new Map(map).set(due.id, {
                    ...entry,
                    leasedUntil: now + storedMillis(lease),
                    lease: token,
                    started: true
                  })
                ]
              })
          ),
        complete: (due) =>
          Ref.update(entries, (map) => {
            if (!holds(map.get(due.id), due)) return map
            const next = new Map(map)
            next.delete(due.id)
            return next
          }),
        retryAfter: (due, after, error) =>
          Effect.flatMap(DateTime.now, (now) => {
            let replaced = false
            return Effect.map(
              update(
                due.id,
                ({ command, superseded }) => {
                  replaced = superseded === true
                  return replaced
                    ? new ScheduledCommand({ ...command, state: "failed", lastError: supersededError(error) })
                    : new ScheduledCommand({
                      ...command,
                      state: "pending",
                      dueAt: DateTime.addDuration(now, after),
                      lastError: error
                    })
                },
                due
              ),
              () => !replaced
            )
          }),
        fail: (due, error) =>
          Effect.asVoid(
            update(
              due.id,
              ({ command }) => new ScheduledCommand({ ...command, state: "failed", lastError: error }),
              due
            )
          ),
        // Undone with its unit of work, as a dispatch's schedule is: a
        // handler may retry, and on PostgreSQL its transaction holds it.
        retry: (id) =>
          Effect.flatMap(DateTime.now, (now) =>
            undoable((map): readonly [boolean, Map<string, MemoryEntry>] => {
              const key = id.toLowerCase()
              const command = map.get(key)?.command
              if (command?.state !== "failed") return [false, map]
              // An operator's retry runs it, superseded or not: pending
              // again, a command is no longer superseded.
              const retried = new ScheduledCommand({
                // Its key is another's now, if one was scheduled under it since.
                ...(command.key !== undefined && pendingUnder(map, command.key) !== undefined
                  ? Struct.omit(command, "key")
                  : command),
                state: "pending",
                dueAt: now,
                attempts: 0,
                retries: command.retries + 1
              })
              return [true, new Map(map).set(key, { command: retried, leasedUntil: 0 })]
            })),
        list: (options) =>
          Effect.map(Ref.get(entries), (map) =>
            [...map.values()]
              .map(({ command }) => command)
              .filter((command) => options?.state === undefined || command.state === options.state)
              .sort((a, b) => a.dueAt.epochMillis - b.dueAt.epochMillis)
              .slice(0, pageSize(options?.limit))),
        addKeyed: ({ due, key, onConflict, ...entry }) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            undoable((map) => {
              const keyed = added(entry, "at" in due ? due.at : DateTime.unsafeMake(now + storedMillis(due.after)), key)
              const id = keyed.command.id
              const pending = pendingUnder(map, key)
              if (pending === undefined) return [id, new Map(map).set(id, keyed)]
              if (onConflict === "keep") return [pending.command.id, map]
              const next = new Map(map)
              // A running one runs on to its outcome, under no key: taken
              // back, it would be lost (its failure and retries unrecorded).
              if (pending.leasedUntil > now) {
                next.set(pending.command.id, {
                  ...pending,
                  command: new ScheduledCommand(Struct.omit(pending.command, "key")),
                  superseded: true
                })
              } else {
                next.delete(pending.command.id)
              }
              return [id, next.set(id, keyed)]
            })),
        cancelKey: (key) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            undoable((map) => {
              const pending = pendingUnder(map, key)
              if (pending === undefined || running(pending, now)) return [false, map]
              const next = new Map(map)
              next.delete(pending.command.id)
              return [true, next]
            }))
      }
    }
  )
)

/**
 * When a scheduled command is due: at a time, or after a delay from now.
 *
 * @since 0.1.0
 * @category models
 */
export type When = { readonly at: DateTime.DateTime | Date } | { readonly after: Duration.DurationInput }

/**
 * `schedule`'s options: a key that names the command, so that it can be
 * replaced or cancelled by the key rather than by an id kept somewhere.
 *
 * @since 0.1.0
 * @category models
 */
export interface ScheduleOptions {
  /**
   * At most one command is pending under a key (`payment-reminder:<orderId>`);
   * failed ones do not count. 1 to 255 characters (`Key`).
   */
  readonly key: string
  /**
   * With one pending under the key already: `replace` it with this one (the
   * new command and due time, under a new id: a debounce), or `keep` it and
   * answer its id. Default `replace`. A pending command a runner is running
   * counts as pending: `keep` answers it; `replace` does not take it back
   * from its runner (it finishes its run under no key, and is not run again
   * should that run fail: this one stands for it) and schedules this one
   * under the key.
   */
  readonly onConflict?: OnConflict | undefined
}

/**
 * Stores `command` to be dispatched when it is due, and returns its id (for
 * `cancel`). Inside a dispatch on the SQL stores, this is part of the
 * dispatch's transaction; a handler, whose error channel holds its domain
 * errors, `Effect.orDie`s it as the SQL repositories do, and the unit of
 * work reports an outage as the dispatch's `StoreUnavailable`. The command
 * keeps its metadata: its id, correlation and causation, and its user
 * (spread `Command.causedBy(...)` into it to chain it to the command that
 * schedules it).
 *
 * With a `key` (`ScheduleOptions`), the id returned is that of the command
 * pending under the key afterwards: this one's, or, with `keep`, the one
 * that was there. A key that is not 1 to 255 characters of storable text is
 * refused as a defect, as a command that is not JSON is: keys are made by
 * the program (validate one built from input with `Key`). So is a key on a
 * store without `addKeyed`.
 *
 * @since 0.1.0
 * @category scheduling
 */
export const schedule = (
  command: Command.Any,
  when: When,
  options?: ScheduleOptions
): Effect.Effect<string, StoreUnavailable, ScheduledCommands> =>
  Effect.gen(function*() {
    const definition = (command as object).constructor as Command.AnyClass
    if (!Schema.isSchema(definition)) {
      return yield* Effect.dieMessage(
        `CommandScheduler.schedule: ${command._tag} is not an instance of a command class`
      )
    }
    if (options !== undefined && !isKey(options.key)) {
      return yield* Effect.dieMessage(
        `CommandScheduler.schedule: a key must be 1 to 255 characters of text without NUL characters ` +
          `or unpaired surrogates, got ${describeKey(options.key)}`
      )
    }
    const encoded = yield* Effect.orDie(Schema.encodeUnknown(definition)(command))
    // Refused in every store, memory included: a database stores it as JSON,
    // where a Date becomes a string its schema would not decode when it runs.
    const found = JsonValue.incompatibility(encoded)
    if (found !== undefined) {
      return yield* Effect.dieMessage(
        `CommandScheduler.schedule: ${command._tag} ${JsonValue.refusal(found, "the command")}`
      )
    }
    // Within what every store keeps: from the year 1 (earlier is due at once
    // anyway), and at most 100 years ahead.
    const due: DueTime = "at" in when
      ? {
        at: DateTime.unsafeMake(Math.max(DateTime.toEpochMillis(DateTime.unsafeMake(when.at)), minStoredEpochMillis))
      }
      : { after: storedDuration(when.after) }
    const id = randomUUID()
    const store = yield* ScheduledCommands
    const entry = { id, commandType: command._tag, command: encoded, due }
    if (options === undefined) {
      yield* store.add(entry)
      return id
    }
    if (store.addKeyed === undefined) return yield* withoutKeys("CommandScheduler.schedule")
    return yield* store.addKeyed({ ...entry, key: options.key, onConflict: options.onConflict ?? "replace" })
  })

/**
 * The failure kept for a command that a keyed schedule replaced while it ran
 * and that then failed in a way a retry might pass: not run again, since the
 * command under its key now stands for it (a debounce must not fire twice).
 *
 * @since 0.1.0
 * @category models
 */
export const supersededError = (error: string): string =>
  stored(`Superseded: a command scheduled under its key replaced it while it ran; not run again after: ${error}`)

// A store written before keys has neither member: a key there would be
// ignored, and an at-most-one the caller counts on silently broken.
const withoutKeys = (where: string) =>
  Effect.dieMessage(`${where}: the ScheduledCommands store keeps no keys (it has no addKeyed and cancelKey)`)

// Its length, not its text: a key may carry what the caller keeps private.
const describeKey = (key: unknown): string =>
  typeof key === "string" ? `${[...key].length} characters` : `a ${typeof key}`

/**
 * Drops the command pending under `key` (`ScheduleOptions.key`); false when
 * there is none, or a runner is running it now, as `cancel` (one a runner
 * claimed but has not started is dropped, as `cancel` drops it). A failed
 * command is not pending: `cancel` it by its id. Dies on a store without
 * `cancelKey`.
 *
 * @since 0.1.0
 * @category scheduling
 */
export const cancelKey = (key: string): Effect.Effect<boolean, StoreUnavailable, ScheduledCommands> =>
  Effect.flatMap(ScheduledCommands, (store) =>
    store.cancelKey === undefined
      ? withoutKeys("CommandScheduler.cancelKey")
      // No command is kept under a key `schedule` refuses, as none under an
      // id that is no UUID.
      : isKey(key)
      ? store.cancelKey(key)
      : Effect.succeed(false))

/**
 * Drops a scheduled command that has not run (or failed for good); false
 * when there is none with this id, or a runner is running it now: it was
 * too late to cancel, and the command's own outcome stands. One a runner
 * claimed in a batch but has not started (it waits its turn behind others)
 * is dropped, and its runner skips it when its turn comes.
 *
 * @since 0.1.0
 * @category scheduling
 */
export const cancel = (id: string): Effect.Effect<boolean, StoreUnavailable, ScheduledCommands> =>
  Effect.flatMap(ScheduledCommands, (store) => store.cancel(id))

/**
 * Runs a command that failed for good again: pending, due now, its attempts
 * reset and its retries counted (the run's idempotency key, when the bus gave
 * it one, names the retry, so it runs rather than replay the failure); false
 * when there is no failed command with this id.
 *
 * @since 0.1.0
 * @category scheduling
 */
export const retry = (id: string): Effect.Effect<boolean, StoreUnavailable, ScheduledCommands> =>
  Effect.flatMap(ScheduledCommands, (store) => store.retry(id))

/**
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  /** How long to wait when nothing is due. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput
  /** Commands leased at a time. Default 20. */
  readonly batchSize?: number
  /** Commands of a batch dispatched at once. Default 1: in due order. */
  readonly concurrency?: number
  /**
   * How long a runner holds a command: it claims a batch for this long, and
   * renews each command's lease for as long again as it starts it; after
   * that another runner may run it. A command whose lease passed before its
   * turn in the batch is left to the next claim. Keep it longer than any
   * command takes (the bus's timeout). Default 1 minute; past 100 years
   * counts as 100 years; under 1 second is refused.
   */
  readonly lease?: Duration.DurationInput
  /**
   * Claims (see `Due.attempts`) before a command that keeps failing is failed
   * for good. Default 10.
   */
  readonly maxAttempts?: number
  /** The wait before run `attempts + 1`. Default 2^(attempts - 1) seconds, at most 5 minutes. */
  readonly backoff?: (attempts: number) => Duration.DurationInput
}

const scheduledTotal = Metric.counter("command_bus_scheduled_commands_total", {
  description: "Scheduled commands run, by command type and outcome: completed, retrying or failed (for good)",
  incremental: true
})

const counted = (command: string, outcome: "completed" | "retrying" | "failed") =>
  Metric.tagged(Metric.tagged(scheduledTotal, "command", command), "outcome", outcome)

const defaultBackoff = (attempts: number): Duration.Duration =>
  Duration.seconds(Math.min(2 ** Math.max(0, attempts - 1), 300))

/**
 * Dispatches due commands through `bus` until interrupted, a batch at a
 * time, as the fiber's `CurrentUser` (none unless you provide one). Each
 * outcome is recorded: a success removes the command; a failure the command
 * declares (and does not mark retryable), a refusal by its business rules
 * (`CommandValidationError`), of its user (`Forbidden`) or of its key
 * (`IdempotencyKeyMismatch`), or a
 * command the bus cannot decode or does not handle, fails it for good; any
 * other failure (an outage, a timeout, a conflict) runs it again after
 * `backoff`, until `maxAttempts`.
 * Several runners, in one process or many, share the work: a leased command
 * is run by one of them. Each claims only the commands its bus handles, so
 * runners of several buses share a store; a command no runner's bus handles
 * stays pending (`list` shows it, overdue).
 *
 * @since 0.1.0
 * @category running
 */
export const run = <C extends Command.Any, H, E, R>(
  bus: CommandBus.CommandBus<C, H, E, R>,
  options: RunOptions = {}
): Effect.Effect<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>> =>
  checkedCounts("CommandScheduler.run", options, () => runChecked(bus, options))

// A batch of 0 would claim nothing and never wait; a concurrency or attempt
// count below 1 means nothing either; nor does a lease that lapses before
// its command's turn.
const checkedCounts = <A, E, R>(where: string, options: RunOptions, self: () => Effect.Effect<A, E, R>) =>
  leaseOfASecond(where, options.lease, () =>
    positiveCounts(where, {
      batchSize: options.batchSize,
      concurrency: options.concurrency,
      maxAttempts: options.maxAttempts
    }, self))

const runChecked = <C extends Command.Any, H, E, R>(
  bus: CommandBus.CommandBus<C, H, E, R>,
  options: RunOptions
): Effect.Effect<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>> => {
  const batchSize = options.batchSize ?? 20
  const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
  const lease = storedDuration(options.lease ?? "1 minute")
  const maxAttempts = options.maxAttempts ?? 10
  const backoff = options.backoff ?? defaultBackoff
  // Only the commands this bus handles: another bus's runner on the same
  // store runs the others.
  const commandTypes = [...bus.definitions.keys()]
  return Effect.flatMap(ScheduledCommands, (store) => {
    const runOne = (due: Due) =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(bus.dispatchUnknown(withKey(due)))
        if (exit._tag === "Success") {
          yield* store.complete(due)
          yield* Metric.increment(counted(due.commandType, "completed"))
          return yield* Effect.logDebug("scheduled.completed")
        }
        const error = failureOf(exit.cause)
        const definition = bus.definitions.get(due.commandType)
        // Refusals that running it again cannot change are final too: its
        // business rules (validation), a key reused with another payload.
        const final = isRefusal(error) || (definition !== undefined && Command.isOutcome(definition, error))
        const reason = stored(Cause.pretty(exit.cause))
        if (final || due.attempts >= maxAttempts) {
          yield* store.fail(due, reason)
          yield* Metric.increment(counted(due.commandType, "failed"))
          return yield* Effect.logWarning("scheduled.failed", exit.cause)
        }
        // After the wait by the store's clock, which it claims by too.
        const wait = storedDuration(backoff(due.attempts))
        if ((yield* store.retryAfter(due, wait, reason)) === false) {
          yield* Metric.increment(counted(due.commandType, "failed"))
          return yield* Effect.logWarning("scheduled.superseded", exit.cause)
        }
        yield* Metric.increment(counted(due.commandType, "retrying"))
        yield* Effect.logWarning("scheduled.retrying", exit.cause).pipe(
          Effect.annotateLogs({ retryAfter: Duration.format(wait) })
        )
      }).pipe(
        Tracing.withSpan("CommandScheduler.run", {
          attributes: { "scheduled.id": due.id, "command.type": due.commandType, "scheduled.attempts": due.attempts }
        }),
        Effect.annotateLogs({ scheduledId: due.id, commandType: due.commandType, attempts: due.attempts })
      )
    // Each command's lease is renewed as it starts, so it has the whole lease
    // to run in, however long the ones before it in its batch took. One whose
    // lease passed while they ran may have been claimed by another runner,
    // and is left to that claim rather than run twice; one cancelled while it
    // waited is gone, and skipped alike.
    const stepFailed = survived("scheduler.store-unavailable", "scheduler.store-failed")
    const runLeased = (due: Due) =>
      Effect.flatMap(
        store.renew(due, lease),
        (renewed) =>
          renewed === undefined
            ? Effect.logDebug("scheduled.lease-passed").pipe(
              Effect.annotateLogs({ scheduledId: due.id, commandType: due.commandType }),
              Effect.as(false)
            )
            : renewed.superseded === true
            // Replaced under its key before its turn came: failed by the
            // store, reported as a superseded run is.
            ? Metric.increment(counted(due.commandType, "failed")).pipe(
              Effect.zipRight(Effect.logWarning("scheduled.superseded")),
              Effect.annotateLogs({ scheduledId: due.id, commandType: due.commandType, attempts: due.attempts }),
              Effect.as(true)
            )
            : Effect.as(runOne(renewed), true)
      ).pipe(
        // One command's failure to be recorded (logged) does not stop the batch.
        Effect.catchAllCause((cause) => Effect.as(stepFailed(cause), true))
      )
    // Claims again at once after a full batch, unless none of it ran (every
    // lease passed before its turn): then it waits, rather than claim and
    // skip the same commands without pause.
    return Effect.forever(
      store.claim(batchSize, lease, commandTypes).pipe(
        Effect.flatMap((batch) =>
          Effect.map(
            Effect.forEach(batch, runLeased, { concurrency: options.concurrency ?? 1 }),
            (ran) => batch.length === batchSize && ran.includes(true)
          )
        ),
        Effect.catchAllCause((cause) => Effect.as(stepFailed(cause), false)),
        Effect.flatMap((more) => more ? Effect.void : Effect.sleep(pollInterval))
      )
    )
  })
}

/**
 * `run` in a fiber of the scope; returns the fiber.
 *
 * @since 0.1.0
 * @category running
 */
export const start = <C extends Command.Any, H, E, R>(
  bus: CommandBus.CommandBus<C, H, E, R>,
  options: RunOptions = {}
): Effect.Effect<
  Fiber.RuntimeFiber<never>,
  never,
  ScheduledCommands | CommandBus.Requirements<H, keyof H, R> | Scope.Scope
> => checkedCounts("CommandScheduler.start", options, () => Effect.forkScoped(runChecked(bus, options)))

/**
 * A runner for as long as the layer lives.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <C extends Command.Any, H, E, R>(
  bus: CommandBus.CommandBus<C, H, E, R>,
  options: RunOptions = {}
): Layer.Layer<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>> =>
  Layer.scopedDiscard(start(bus, options))

/**
 * `schedule`, `cancel`, `cancelKey` and `retry`, with `schedule` typed by the
 * commands `C`: another command does not compile, as `dispatch` refuses one
 * its bus does not handle, rather than wait for a runner that never claims
 * it. Type a function's parameter with it to take either
 * scheduler, `make`'s or `forBus`'s.
 *
 * @since 0.1.0
 * @category models
 */
export interface Scheduling<C extends Command.Any> {
  /** `schedule`, for the commands `C` only. */
  readonly schedule: (
    command: C,
    when: When,
    options?: ScheduleOptions
  ) => Effect.Effect<string, StoreUnavailable, ScheduledCommands>
  readonly cancel: typeof cancel
  readonly cancelKey: typeof cancelKey
  readonly retry: typeof retry
}

/**
 * `unknown` when a bus of the commands `Handled` handles each of the commands
 * `C`; otherwise a member no bus has, named by the tags of those it does not
 * handle, so that the compiler says which.
 *
 * @since 0.1.0
 * @category models
 */
export type Handles<C extends Command.Any, Handled extends Command.Any> = [Exclude<C, Handled>] extends [never] ?
  unknown
  : { readonly "scheduled commands the bus does not handle": Exclude<C, Handled>["_tag"] }

/**
 * Marks a `CommandScheduler` with its commands, for the compiler.
 *
 * @since 0.1.0
 * @category symbols
 */
export const CommandsTypeId: unique symbol = Symbol.for("effect-command-bus/CommandScheduler/Commands")

/**
 * @since 0.1.0
 * @category symbols
 */
export type CommandsTypeId = typeof CommandsTypeId

/**
 * The scheduler of a list of command classes (`make`): it schedules those
 * commands only, and its runner takes a bus that handles each of them.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandScheduler<C extends Command.Any> extends Scheduling<C> {
  /**
   * Its commands exactly, for the compiler only: a scheduler of more
   * commands does not pass for one of fewer, whose runner would take a bus
   * that leaves the others pending for good (nor one of fewer for more, as
   * `schedule` already refuses).
   */
  readonly [CommandsTypeId]: { readonly _C: (_: C) => C }
  /** `run`, on a bus that handles every command this scheduler schedules. */
  readonly run: <Handled extends Command.Any, H, E, R>(
    bus: CommandBus.CommandBus<Handled, H, E, R> & Handles<C, Handled>,
    options?: RunOptions
  ) => Effect.Effect<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>>
  /** `start`, on a bus that handles every command this scheduler schedules. */
  readonly start: <Handled extends Command.Any, H, E, R>(
    bus: CommandBus.CommandBus<Handled, H, E, R> & Handles<C, Handled>,
    options?: RunOptions
  ) => Effect.Effect<
    Fiber.RuntimeFiber<never>,
    never,
    ScheduledCommands | CommandBus.Requirements<H, keyof H, R> | Scope.Scope
  >
  /** `layer`, on a bus that handles every command this scheduler schedules. */
  readonly layer: <Handled extends Command.Any, H, E, R>(
    bus: CommandBus.CommandBus<Handled, H, E, R> & Handles<C, Handled>,
    options?: RunOptions
  ) => Layer.Layer<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>>
}

/**
 * The scheduler of a bus (`forBus`): it schedules the bus's commands, and its
 * runner runs that bus, so the two are the same set. `H` and `R` are the
 * bus's handlers and middleware requirements, which the runner requires (the
 * bus's errors it records, not fails with).
 *
 * @since 0.1.0
 * @category models
 */
export interface BusScheduler<C extends Command.Any, H, R> extends Scheduling<C> {
  /** `run` on the bus. */
  readonly run: (
    options?: RunOptions
  ) => Effect.Effect<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>>
  /** `start` on the bus. */
  readonly start: (
    options?: RunOptions
  ) => Effect.Effect<
    Fiber.RuntimeFiber<never>,
    never,
    ScheduledCommands | CommandBus.Requirements<H, keyof H, R> | Scope.Scope
  >
  /** `layer` on the bus. */
  readonly layer: (
    options?: RunOptions
  ) => Layer.Layer<never, never, ScheduledCommands | CommandBus.Requirements<H, keyof H, R>>
}

// Classes typed only `Command.AnyClass` have any string as their tag: a
// scheduler of them would take any command, and no bus could be shown to
// handle them. Refused where it is written, as `CommandBus.make` does.
type TypedClasses<Cs extends ReadonlyArray<Command.AnyClass>> = string extends InstanceType<Cs[number]>["_tag"]
  ? { readonly "command classes typed only Command.AnyClass: give the scheduler each class's own type": never }
  : unknown

/**
 * A scheduler of the commands of `commands` (the list a bus is made of, or
 * part of it): its `schedule` takes those commands only, and its runner a bus
 * that handles each of them. It needs the classes alone, not the bus, so the
 * handlers of a bus can schedule that bus's own commands with it: the bus is
 * made from those handlers, and a scheduler made from the bus would be a
 * cycle. Scheduling, cancelling and running are those of the module's own
 * functions.
 *
 * ```ts
 * export const OrderScheduler = CommandScheduler.make(OrderCommands)
 * // in a handler of the order bus:
 * yield* OrderScheduler.schedule(new CancelOrder({ ... }), { after: "30 minutes" }).pipe(Effect.orDie)
 * // in the service: a bus without CancelOrder's handler does not compile
 * OrderScheduler.layer(bus)
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <const Cs extends ReadonlyArray<Command.AnyClass>>(
  _commands: Cs & TypedClasses<Cs>
): CommandScheduler<InstanceType<Cs[number]>> => ({
  [CommandsTypeId]: commandsVariance,
  schedule,
  cancel,
  cancelKey,
  retry,
  run: (bus, options) => run(bus, options),
  start: (bus, options) => start(bus, options),
  layer: (bus, options) => layer(bus, options)
})

const commandsVariance = { _C: <C>(command: C): C => command }

/**
 * The scheduler of `bus`: its `schedule` takes the bus's commands only, and
 * its runner (`run`, `start`, `layer`) runs that bus. In the bus's own
 * handlers, which the bus is made from, use `make` with the bus's command
 * classes instead.
 *
 * @since 0.1.0
 * @category constructors
 */
export const forBus = <C extends Command.Any, H, E, R>(
  bus: CommandBus.CommandBus<C, H, E, R>
): BusScheduler<C, H, R> => ({
  schedule,
  cancel,
  cancelKey,
  retry,
  run: (options) => run(bus, options),
  start: (options) => start(bus, options),
  layer: (options) => layer(bus, options)
})

// The run's own key when the command has none: a second run after a crash
// replays the first one's outcome instead of running again. An operator's
// `retry` starts a key of its own, so the retried command runs.
const withKey = (due: Due): unknown =>
  typeof due.command === "object" && due.command !== null && !("idempotencyKey" in due.command)
    ? {
      ...due.command,
      idempotencyKey: due.retries === undefined || due.retries === 0
        ? `scheduled:${due.id}`
        : `scheduled:${due.id}:retry-${due.retries}`
    }
    : due.command
