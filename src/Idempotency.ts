/**
 * Idempotency keys: the rules, the store they need, and the middleware that
 * applies them.
 *
 * - A key is scoped by user (the command's `userId`, else the current
 *   user's): the same key from two users is two keys.
 * - The first dispatch claims the key atomically; a concurrent duplicate
 *   fails with `IdempotencyKeyInFlight` and never runs.
 * - The claim holds a lease: a dispatch that crashed leaves a marker that
 *   expires, so a later retry runs.
 * - The success is recorded before commit, inside the dispatch's unit of
 *   work; a domain failure (declared by the command, not retryable) is
 *   recorded after; anything else (timeouts, retryable errors, defects,
 *   interruption, store outages) releases the claim so a retry runs again.
 * - A repeat after completion replays the recorded success or failure
 *   without running the handler; the same key with another payload (by
 *   fingerprint of the payload, not the metadata) fails with
 *   `IdempotencyKeyMismatch`.
 * - Records expire after a retention (24 hours by default).
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import * as Command from "./Command.js"
import type { StoreUnavailable } from "./CommandError.js"
import * as CurrentUser from "./CurrentUser.js"
import * as JsonValue from "./internal/json.js"
import { storedMillis } from "./internal/limit.js"
import * as Middleware from "./Middleware.js"
import * as UnitOfWork from "./UnitOfWork.js"

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/**
 * A dispatch with this key is still running.
 *
 * @since 0.1.0
 * @category errors
 */
export class IdempotencyKeyInFlight extends Schema.TaggedError<IdempotencyKeyInFlight>()(
  "IdempotencyKeyInFlight",
  { idempotencyKey: Schema.String },
  HttpApiSchema.annotations({ status: 409, title: "Idempotency key in flight" })
) {
  override get message() {
    return "A request with this idempotency key is still being processed"
  }
}

/**
 * The key was used before with a different payload.
 *
 * @since 0.1.0
 * @category errors
 */
export class IdempotencyKeyMismatch extends Schema.TaggedError<IdempotencyKeyMismatch>()(
  "IdempotencyKeyMismatch",
  { idempotencyKey: Schema.String },
  HttpApiSchema.annotations({ status: 422, title: "Idempotency key reused" })
) {
  override get message() {
    return "This idempotency key was already used with a different request payload"
  }
}

// -----------------------------------------------------------------------------
// store
// -----------------------------------------------------------------------------

/**
 * A recorded outcome, encoded with the command's success or failure schema.
 *
 * @since 0.1.0
 * @category models
 */
export type StoredResult =
  | { readonly _tag: "Success"; readonly value: unknown }
  | { readonly _tag: "Failure"; readonly error: unknown }

/**
 * @since 0.1.0
 * @category models
 */
export type Claim =
  | { readonly _tag: "Claimed"; readonly token: string }
  | { readonly _tag: "InFlight"; readonly fingerprint: string }
  | { readonly _tag: "Completed"; readonly fingerprint: string; readonly result: StoredResult }

/**
 * @since 0.1.0
 * @category models
 */
export interface ClaimRequest {
  readonly scope: string
  readonly key: string
  readonly fingerprint: string
  readonly commandType: string
  readonly lease: Duration.Duration
  /**
   * How long the claim's record is kept (a completed one's is set again by
   * `complete`). The middleware never asks for less than the lease. Past
   * 100 years (infinity too) counts as 100 years, in every store.
   */
  readonly retention: Duration.Duration
}

/**
 * @since 0.1.0
 * @category models
 */
export interface CompleteRequest {
  readonly scope: string
  readonly key: string
  readonly token: string
  readonly result: StoredResult
  readonly retention: Duration.Duration
}

/**
 * The storage behind idempotency. Implementations: in memory (tests), SQL
 * (the default; completion joins the command's transaction) and Redis.
 *
 * @since 0.1.0
 * @category models
 */
export interface Store {
  /**
   * Whether the store writes through the dispatch's own transaction (the
   * SQL store does). If so, a success is recorded before commit and commits
   * with the handler's writes. If not (memory, Redis), it is recorded after
   * the dispatch succeeded: a crash in between lets the lease expire and a
   * retry run again, rather than replay a result that never committed.
   */
  readonly joinsTransaction: boolean
  /**
   * Atomically claims the key, or reports who holds it. An in-flight claim
   * whose lease has passed, or a record past its expiry, is claimed anew.
   */
  readonly claim: (request: ClaimRequest) => Effect.Effect<Claim, StoreUnavailable>
  /**
   * Records the outcome of the claim identified by `token`. Returns `false`
   * when the claim was lost (its lease passed and another dispatch claimed
   * the key), so the caller can roll back instead of running twice. A store
   * that joins the transaction may send the record with its commit instead
   * (the SQL store does) and answer `true` at once: a lost claim then fails
   * the commit, with `IdempotencyKeyInFlight`, and nothing commits.
   */
  readonly complete: (request: CompleteRequest) => Effect.Effect<boolean, StoreUnavailable>
  /** Drops an in-flight claim, if `token` still holds it. */
  readonly release: (
    request: { readonly scope: string; readonly key: string; readonly token: string }
  ) => Effect.Effect<
    void,
    StoreUnavailable
  >
  /** Deletes expired records; returns how many. */
  readonly prune: Effect.Effect<number, StoreUnavailable>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class IdempotencyStore extends Context.Tag("effect-command-bus/IdempotencyStore")<IdempotencyStore, Store>() {}

interface MemoryRecord {
  readonly fingerprint: string
  readonly token: string
  readonly leaseExpiresAt: number
  readonly expiresAt: number
  // As JSON text, as the durable stores keep it: each claim reads a copy,
  // with what JSON changes (-0 as 0) changed here too.
  readonly result: string | undefined
}

// How often the memory store drops expired records, at a claim.
const memoryPruneMillis = 60_000

/**
 * An in-memory store on the `Clock`, so `TestClock` drives leases and expiry.
 * It drops expired records itself, at a claim, at most once a minute: records
 * are only added by claims, so none pile up between them, and no fiber wakes
 * every minute (which a `TestClock` moved by days would run thousands of
 * times over).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Store> = Effect.sync(() => {
  const records = new Map<string, MemoryRecord>()
  const id = (scope: string, key: string) => `${scope}\u0000${key}`
  const dropExpired = (now: number) => {
    let pruned = 0
    for (const [key, record] of records) {
      if (record.expiresAt <= now) {
        records.delete(key)
        pruned++
      }
    }
    return pruned
  }
  let nextPrune = Number.NEGATIVE_INFINITY
  return {
    joinsTransaction: false,
    claim: (request) =>
      Effect.map(Clock.currentTimeMillis, (now): Claim => {
        if (now >= nextPrune) {
          nextPrune = now + memoryPruneMillis
          dropExpired(now)
        }
        const existing = records.get(id(request.scope, request.key))
        if (
          existing !== undefined && existing.expiresAt > now &&
          (existing.result !== undefined || existing.leaseExpiresAt > now)
        ) {
          return existing.result === undefined
            ? { _tag: "InFlight", fingerprint: existing.fingerprint }
            : { _tag: "Completed", fingerprint: existing.fingerprint, result: JSON.parse(existing.result) }
        }
        const token = randomUUID()
        records.set(id(request.scope, request.key), {
          fingerprint: request.fingerprint,
          token,
          leaseExpiresAt: now + storedMillis(request.lease),
          expiresAt: now + storedMillis(request.retention),
          result: undefined
        })
        return { _tag: "Claimed", token }
      }),
    complete: (request) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const existing = records.get(id(request.scope, request.key))
        if (existing === undefined || existing.token !== request.token) return false
        records.set(id(request.scope, request.key), {
          ...existing,
          result: JSON.stringify(request.result),
          expiresAt: now + storedMillis(request.retention)
        })
        return true
      }),
    release: (request) =>
      Effect.sync(() => {
        const existing = records.get(id(request.scope, request.key))
        if (existing !== undefined && existing.token === request.token && existing.result === undefined) {
          records.delete(id(request.scope, request.key))
        }
      }),
    prune: Effect.map(Clock.currentTimeMillis, dropExpired)
  }
})

/**
 * Runs `store.prune` on a schedule for as long as the surrounding scope
 * lives; a failing prune is logged and retried at the next tick.
 *
 * @since 0.1.0
 * @category constructors
 */
export const pruneEvery = (interval: Duration.DurationInput) =>
  Effect.flatMap(IdempotencyStore, (store) =>
    store.prune.pipe(
      Effect.tap((pruned) =>
        pruned > 0 ? Effect.logDebug("idempotency.pruned").pipe(Effect.annotateLogs({ pruned })) : Effect.void
      ),
      Effect.catchAll((error) => Effect.logWarning("idempotency.prune-failed", error)),
      Effect.repeat(Schedule.spaced(interval)),
      Effect.forkScoped,
      Effect.asVoid
    ))

/**
 * A layer of the store `make` builds, pruned every `interval` by a fiber
 * that lives as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWithPruning = <E, R>(
  make: Effect.Effect<Store, E, R>,
  interval: Duration.DurationInput
): Layer.Layer<IdempotencyStore, E, R> =>
  Layer.scopedContext(
    Effect.gen(function*() {
      const context = Context.make(IdempotencyStore, yield* make)
      yield* Effect.provide(pruneEvery(interval), context)
      return context
    })
  )

/**
 * The in-memory store, which prunes itself (`makeMemory`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<IdempotencyStore> = Layer.effect(IdempotencyStore, makeMemory)

// -----------------------------------------------------------------------------
// middleware
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * How long a completed record is kept. Default 24 hours. An in-flight
   * claim is kept at least for its lease. Past 100 years counts as 100 years.
   */
  readonly retention?: Duration.DurationInput
  /**
   * How long an in-flight claim holds before a retry may take it over.
   * Keep it above the command timeout. Default 1 minute.
   */
  readonly lease?: Duration.DurationInput
}

const replaysTotal = Metric.counter("command_bus_idempotency_replays_total", {
  description: "Dispatches answered with the recorded outcome of an earlier one, by command type",
  incremental: true
})

const mismatchesTotal = Metric.counter("command_bus_idempotency_mismatches_total", {
  description: "Idempotency keys reused with another payload (IdempotencyKeyMismatch), by command type",
  incremental: true
})

const inFlightTotal = Metric.counter("command_bus_idempotency_in_flight_total", {
  description:
    "Dispatches refused because their key was still being processed (IdempotencyKeyInFlight), by command type",
  incremental: true
})

// Off the path of a first dispatch, so tagging anew each time costs nothing
// that matters.
const countFor = (counter: Metric.Metric.Counter<number>, command: string) =>
  Metric.increment(Metric.tagged(counter, "command", command))

const currentReplayObserver = globalValue(
  Symbol.for("effect-command-bus/Idempotency/currentReplayObserver"),
  () => FiberRef.unsafeMake<((command: Command.Any) => void) | undefined>(undefined)
)

/**
 * Runs a dispatch and tells whether its outcome was a replay, for edges
 * that say so (the `Idempotent-Replayed` header). Given `command`, only a
 * replay of that command counts: a handler's own dispatch of another
 * command that replays (its key seen before) does not make the one it runs
 * in a replay.
 *
 * @since 0.1.0
 * @category combinators
 */
export const observeReplay = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  command?: Command.Any
): Effect.Effect<{ readonly exit: Exit.Exit<A, E>; readonly replayed: boolean }, never, R> =>
  Effect.suspend(() => {
    let replayed = false
    return Effect.map(
      Effect.locally(Effect.exit(self), currentReplayObserver, (replayedCommand) => {
        if (command === undefined || replayedCommand === command) replayed = true
      }),
      (exit) => ({ exit, replayed })
    )
  })

/**
 * The idempotency middleware. Place it outside `retry`, `timeout` and
 * `transaction`: one claim covers every attempt, and the record joins the
 * transaction of the attempt that commits. Counts, by command type, replays
 * (`command_bus_idempotency_replays_total`), keys reused with another
 * payload (`command_bus_idempotency_mismatches_total`) and keys still in
 * flight (`command_bus_idempotency_in_flight_total`).
 *
 * @since 0.1.0
 * @category middleware
 */
export const middleware = (
  options: Options = {}
): Middleware.Middleware<IdempotencyKeyInFlight | IdempotencyKeyMismatch | StoreUnavailable, IdempotencyStore> => {
  const retention = Duration.decode(options.retention ?? "24 hours")
  const lease = Duration.decode(options.lease ?? "1 minute")
  // A claim's record lives at least as long as its lease: one that expired
  // first would let a duplicate claim the key, and the pruning delete the
  // claim, while the first dispatch still runs.
  const claimRetention = Duration.max(retention, lease)
  return Middleware.make("idempotency", (self, dispatch) => {
    const { command, definition } = dispatch
    const key = command.idempotencyKey
    if (key === undefined) return self
    // The claim and the finalizer that releases it are one uninterruptible
    // step: a dispatch interrupted as its claim lands (a client that hangs
    // up) must not leave the key in flight until the lease runs out. The
    // claim is one short statement; the dispatch is interruptible again once
    // its release is in place.
    return Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        // A key is the user's: the command's, else the authenticated one's.
        // Only a dispatch with neither shares the anonymous scope.
        const scope = command.userId ?? Option.match(yield* CurrentUser.CurrentUser, {
          onNone: () => "",
          onSome: (principal) => principal.userId
        })
        const store = yield* IdempotencyStore
        const fingerprint = yield* Effect.orDie(Command.fingerprint(definition, command))
        const claim = yield* store.claim({
          scope,
          key,
          fingerprint,
          commandType: command._tag,
          lease,
          retention: claimRetention
        })
        if (claim._tag !== "Claimed") {
          if (claim.fingerprint !== fingerprint) {
            yield* countFor(mismatchesTotal, command._tag)
            return yield* new IdempotencyKeyMismatch({ idempotencyKey: key })
          }
          if (claim._tag === "InFlight") {
            yield* countFor(inFlightTotal, command._tag)
            return yield* new IdempotencyKeyInFlight({ idempotencyKey: key })
          }
          yield* countFor(replaysTotal, command._tag)
          dispatch.replayed = true
          const observer = yield* FiberRef.get(currentReplayObserver)
          if (observer !== undefined) observer(command)
          return yield* replay(definition, claim.result)
        }
        const { token } = claim
        // Encoded before commit in every store, so that a success that cannot
        // be recorded fails the dispatch rather than follow its commit.
        const encodeSuccess = (value: unknown) =>
          Effect.orDie(Schema.encodeUnknown(definition.success as Schema.Schema<unknown, unknown>)(value))
        const recordSuccess = (encoded: unknown) =>
          Effect.flatMap(
            store.complete({ scope, key, token, retention, result: { _tag: "Success", value: encoded } }),
            (held) => held ? Effect.void : Effect.fail(new IdempotencyKeyInFlight({ idempotencyKey: key }))
          )
        // A store that joins the transaction records in it; any other is
        // given the encoded success after commit.
        let encodedSuccess: unknown
        const keep = (encoded: unknown) => {
          encodedSuccess = encoded
          return Effect.void
        }
        dispatch.beforeCommit.push((value) =>
          Effect.flatMap(
            encodeSuccess(value),
            (encoded) => asRecorded(command, "success", encoded, store.joinsTransaction ? recordSuccess : keep)
          )
        )
        // Committed already: a record that cannot be written only means a
        // retry runs again once the lease expires, so the success stands. It
        // is written outside `restore`, so a client that hangs up meanwhile
        // cannot cut it off and have the claim released.
        const recordCommitted = Effect.catchAll(
          Effect.suspend(() => recordSuccess(encodedSuccess)),
          (error) => Effect.logWarning("idempotency.record-failed", error).pipe(Effect.annotateLogs({ key }))
        )
        // Inside another dispatch's transaction this one's "commit" is a
        // savepoint: a store outside the database records its outcome when
        // that transaction commits, and releases the claim if it rolls back,
        // so a retry of the outer command runs this one again.
        const whenCommitted = (record: Effect.Effect<void>): Effect.Effect<void> =>
          store.joinsTransaction
            ? record
            : UnitOfWork.onCommit(record, Effect.ignore(store.release({ scope, key, token })))
        const recorded = store.joinsTransaction
          ? restore(self)
          : Effect.tap(restore(self), () => whenCommitted(recordCommitted))
        // Already uninterruptible: a failure (interruption included) is
        // caught as `onExit` would, without a region of its own.
        return yield* Effect.catchAllCause(recorded, (cause) => {
          // The dispatch's own failure, with any of the settling's after it.
          const settled = (effect: Effect.Effect<unknown>) =>
            Effect.matchCauseEffect(effect, {
              onFailure: (after) => Effect.failCause(Cause.sequential(cause, after)),
              onSuccess: () => Effect.failCause(cause)
            })
          // Interrupted once its commit began, and nothing else: it committed
          // (a unit of work does not stop between its work and its commit's
          // outcome), so the success is recorded, not its claim released.
          if (!store.joinsTransaction && dispatch.committing && Cause.isInterruptedOnly(cause)) {
            return settled(whenCommitted(recordCommitted))
          }
          const failure = Cause.failureOption(cause)
          if (
            Option.isSome(failure) && !Cause.isDie(cause) && !Cause.isInterrupted(cause) &&
            Command.isOutcome(definition, failure.value)
          ) {
            // Encoded and checked now, so that one that cannot be recorded is
            // this dispatch's defect; only the write waits for an outer commit.
            return settled(
              Schema.encodeUnknown(definition.failure as Schema.Schema<unknown, unknown>)(failure.value).pipe(
                Effect.orDie,
                Effect.flatMap((encoded) =>
                  asRecorded(command, "failure", encoded, () =>
                    whenCommitted(
                      store.complete({ scope, key, token, retention, result: { _tag: "Failure", error: encoded } })
                        .pipe(
                          // The failure itself is the answer; an unrecorded one just runs again on retry.
                          Effect.catchAll(() => store.release({ scope, key, token })),
                          Effect.ignore
                        )
                    ))
                ),
                Effect.tapDefect(() => Effect.ignore(store.release({ scope, key, token })))
              )
            )
          }
          return settled(Effect.ignore(store.release({ scope, key, token })))
        })
      })
    )
  })
}

// Records are JSON in every durable store (PostgreSQL's jsonb, Redis), and
// one that would not read back as itself replays as a defect until it
// expires. Refused when written instead, in every store, memory included, so
// that a command whose schema encodes to something else fails its first
// dispatch with a key, in tests as in production.
const asRecorded = <A, E, R>(
  command: Command.Any,
  kind: "success" | "failure",
  encoded: unknown,
  record: (encoded: unknown) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => {
  const found = JsonValue.incompatibility(encoded)
  return found === undefined ? record(encoded) : Effect.dieMessage(
    `${command._tag}: its ${kind} cannot be recorded for idempotency: ${
      JsonValue.refusal(found, `the command's ${kind}`)
    }`
  )
}

const replay = (definition: Command.AnyClass, result: StoredResult): Effect.Effect<any, any> =>
  result._tag === "Success"
    ? Effect.orDie(Schema.decodeUnknown(definition.success as Schema.Schema<unknown, unknown>)(result.value))
    : Effect.flatMap(
      Effect.orDie(Schema.decodeUnknown(definition.failure as Schema.Schema<unknown, unknown>)(result.error)),
      Effect.fail
    )
