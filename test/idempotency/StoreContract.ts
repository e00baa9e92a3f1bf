/**
 * The rules every `IdempotencyStore` keeps, as one suite run against each
 * store (in memory, PostgreSQL, Redis): on the store directly, and through a
 * bus with the idempotency middleware over a small command whose handler
 * counts its runs.
 */
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import { randomUUID } from "node:crypto"
import { Command, CommandBus, CommandError, Handler, Idempotency, Middleware, UnitOfWork } from "../../src/index.js"
import type { Outbox } from "../../src/index.js"

// -----------------------------------------------------------------------------
// a command whose handler counts its runs
// -----------------------------------------------------------------------------

export class Declined extends Schema.TaggedError<Declined>()("Declined", { account: Schema.String }) {}

/** Charges an account; over 100 is declined (a domain failure, recorded). */
export class Charge extends Command.Class<Charge>()("Charge", {
  payload: { account: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ account: Schema.String, charged: Schema.Int, receipt: Schema.String }),
  failure: Schema.Union(Declined, CommandError.ConcurrencyConflict),
  retryable: ["ConcurrencyConflict"]
}) {}

/** What a contract test needs: the store under test, and what the bus needs around it. */
export type Services = Idempotency.IdempotencyStore | Outbox.Outbox | UnitOfWork.UnitOfWork

type Handle = (command: Charge, run: number) => ReturnType<Handler.Handler<Charge>>

const charge: Handle = (command) =>
  Effect.suspend(() =>
    command.amount > 100
      ? Effect.fail(new Declined({ account: command.account }))
      : Effect.succeed(Handler.result({ account: command.account, charged: command.amount, receipt: randomUUID() }))
  )

/**
 * The idempotency part of the default stack (idempotency outside timeout,
 * retry and transaction), over a handler that counts its runs and yields
 * before it works, so concurrent dispatches interleave. `hold` runs after
 * the claim and before the transaction, given the number of the dispatch
 * that claimed: a dispatch held there keeps its claim without holding a
 * database session (the embedded database has only one).
 */
export const makeBus = (
  options: {
    readonly handle?: Handle
    readonly hold?: (claimed: number) => Effect.Effect<void>
    readonly lease?: Duration.DurationInput
    readonly retention?: Duration.DurationInput
  } = {}
) => {
  const counter = { runs: 0, claimed: 0 }
  const handle = options.handle ?? charge
  const hold = options.hold
  const bus = CommandBus.make([Charge], {
    Charge: (command) =>
      Effect.suspend(() => {
        const run = ++counter.runs
        return Effect.zipRight(Effect.yieldNow(), handle(command, run))
      })
  }).pipe(
    CommandBus.withMiddleware(
      Idempotency.middleware({
        ...(options.lease === undefined ? {} : { lease: options.lease }),
        ...(options.retention === undefined ? {} : { retention: options.retention })
      }),
      Middleware.make(
        "hold",
        (self) => hold === undefined ? self : Effect.zipRight(Effect.suspend(() => hold(++counter.claimed)), self)
      ),
      Middleware.timeout("30 seconds"),
      Middleware.retry({ schedule: Schedule.recurs(2) }),
      Middleware.transaction
    )
  )
  return { bus, counter }
}

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

/**
 * Asserts an error's class and fields. Not `deepStrictEqual`: an error
 * failed inside a span is a proxy that carries the span, which a deep
 * comparison walks into.
 */
export const assertError = (actual: unknown, expected: object) => {
  assert.instanceOf(actual, expected.constructor as new(...args: ReadonlyArray<any>) => unknown)
  expect({ ...actual as object }).toEqual({ ...expected })
}

/** The store of a process that dies before it can release its claims. */
const neverReleasing = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Idempotency.IdempotencyStore,
    (store) => Effect.provideService(self, Idempotency.IdempotencyStore, { ...store, release: () => Effect.void })
  )

/**
 * The unit of work, with its next `times` commits failing with `error`
 * after everything ran inside it (handler, events, the idempotency record):
 * a commit that fails.
 */
const commitFailing = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  times: number,
  error: () => CommandError.StoreUnavailable | CommandError.ConcurrencyConflict
) =>
  Effect.flatMap(UnitOfWork.UnitOfWork, (unitOfWork) => {
    let left = times
    return Effect.provideService(self, UnitOfWork.UnitOfWork, {
      transactional: (body) =>
        unitOfWork.transactional(
          Effect.flatMap(body, (value) => left-- > 0 ? Effect.fail(error() as never) : Effect.succeed(value))
        )
    })
  })

/**
 * The unit of work, with a commit that takes until `committed` completes
 * (signalling `committing` as it starts): a commit in flight, which, as
 * every unit of work's, nothing interrupts once the work succeeded.
 */
const slowCommit = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  committing: Deferred.Deferred<void>,
  committed: Deferred.Deferred<void>
) =>
  Effect.flatMap(UnitOfWork.UnitOfWork, (unitOfWork) =>
    Effect.provideService(self, UnitOfWork.UnitOfWork, {
      transactional: (body) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.zipLeft(
            unitOfWork.transactional(restore(body)),
            Effect.zipRight(Deferred.succeed(committing, undefined), Deferred.await(committed))
          )
        )
    }))

// -----------------------------------------------------------------------------
// the suite
// -----------------------------------------------------------------------------

export interface Options {
  /**
   * How leases and retention pass: `test` moves the `TestClock` (for a
   * store on Effect's `Clock`); `live` waits, with short leases (for a
   * store on its server's clock).
   */
  readonly clock: "test" | "live"
  /**
   * A record completed inside a transaction that then failed is undone:
   * rolled back with it (SQL), or released by its owner (Redis). The
   * in-memory store has no transaction to undo it with.
   */
  readonly undoesFailedCommit: boolean
  readonly timeout?: Duration.DurationInput
}

export const contract = (
  name: string,
  services: Layer.Layer<Services, unknown>,
  options: Options
) => {
  const live = options.clock === "live"
  /** Lets `duration` pass for the store. */
  const elapse = (duration: Duration.DurationInput) => live ? Effect.sleep(duration) : TestClock.adjust(duration)
  // Live: short enough to wait for, with a second of margin either side of
  // the deadline so a busy machine does not turn a check around.
  const lease = live ? Duration.seconds(2) : Duration.seconds(30)
  const retention = live ? Duration.seconds(2) : Duration.minutes(10)
  const margin = live ? Duration.seconds(1) : Duration.millis(1)

  layer(services, { excludeTestServices: live, timeout: options.timeout ?? "60 seconds" })(name, (it) => {
    // Each test works in scopes of its own, so tests sharing a store never meet.
    const request = (scope: string, key: string, fields: Partial<Idempotency.ClaimRequest> = {}) => ({
      scope,
      key,
      fingerprint: `fingerprint-${key}`,
      commandType: "Charge",
      lease,
      retention: Duration.hours(1),
      ...fields
    })

    const chargeOf = (scope: string, key: string | undefined, fields: { amount?: number; account?: string } = {}) =>
      new Charge({
        account: fields.account ?? "acc-1",
        amount: fields.amount ?? 10,
        userId: scope,
        ...(key === undefined ? {} : { idempotencyKey: key })
      })

    // -------------------------------------------------------------------------
    // the store
    // -------------------------------------------------------------------------

    it.effect("store: claims a fresh key; a second claim finds it in flight, with its fingerprint", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const first = yield* store.claim(request(scope, "k"))
        assert(first._tag === "Claimed")
        expect(first.token).not.toBe("")
        expect(yield* store.claim(request(scope, "k", { fingerprint: "another" }))).toEqual({
          _tag: "InFlight",
          fingerprint: "fingerprint-k"
        })
      }))

    it.effect("store: scopes keys by user, and keeps keys with separators apart", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const alice = randomUUID()
        const bob = randomUUID()
        expect((yield* store.claim(request(alice, "k")))._tag).toBe("Claimed")
        expect((yield* store.claim(request(bob, "k")))._tag).toBe("Claimed")
        // ("a:b", "c") and ("a", "b:c") are two keys, whatever a store joins them with
        expect((yield* store.claim(request(`${alice}:x`, "y")))._tag).toBe("Claimed")
        expect((yield* store.claim(request(alice, "x:y")))._tag).toBe("Claimed")
        expect((yield* store.claim(request(alice, "k")))._tag).toBe("InFlight")
      }))

    it.effect("store: completes with the owner's token and answers with the result; another token changes nothing", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const success: Idempotency.StoredResult = { _tag: "Success", value: { receipt: "r-1", n: 1, nested: [true] } }
        const failure: Idempotency.StoredResult = { _tag: "Failure", error: { _tag: "Declined", account: "a" } }
        for (const [key, result] of [["s", success], ["f", failure]] as const) {
          const claim = yield* store.claim(request(scope, key))
          assert(claim._tag === "Claimed")
          const other = { scope, key, token: randomUUID(), retention, result: { _tag: "Success", value: 0 } } as const
          expect(yield* store.complete(other)).toBe(false)
          expect((yield* store.claim(request(scope, key)))._tag).toBe("InFlight")
          expect(yield* store.complete({ scope, key, token: claim.token, retention: Duration.hours(1), result }))
            .toBe(true)
          expect(yield* store.claim(request(scope, key))).toEqual({
            _tag: "Completed",
            fingerprint: `fingerprint-${key}`,
            result
          })
          // Releasing is for claims in flight: a recorded outcome stays, even for its owner.
          yield* store.release({ scope, key, token: claim.token })
          expect((yield* store.claim(request(scope, key)))._tag).toBe("Completed")
        }
      }))

    // Durable stores keep a record as JSON text: what reads back is a copy,
    // with -0 as 0; the in-memory store must not answer otherwise.
    it.effect("store: a result reads back as its JSON, a copy the caller's later changes do not reach, -0 as 0", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const claim = yield* store.claim(request(scope, "k"))
        assert(claim._tag === "Claimed")
        const value = { balance: -0, lines: [{ sku: "a" }] }
        const result = { _tag: "Success", value } as const
        expect(yield* store.complete({ scope, key: "k", token: claim.token, retention: Duration.hours(1), result }))
          .toBe(true)
        value.lines.push({ sku: "b" })
        const first = yield* store.claim(request(scope, "k"))
        assert(first._tag === "Completed" && first.result._tag === "Success")
        const read = first.result.value as typeof value
        expect(read).toEqual({ balance: 0, lines: [{ sku: "a" }] })
        expect(Object.is(read.balance, 0)).toBe(true)
        read.lines[0]!.sku = "changed"
        const second = yield* store.claim(request(scope, "k"))
        assert(second._tag === "Completed" && second.result._tag === "Success")
        expect(second.result.value).toEqual({ balance: 0, lines: [{ sku: "a" }] })
      }))

    it.effect("store: releases an in-flight claim for its owner only", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const claim = yield* store.claim(request(scope, "k"))
        assert(claim._tag === "Claimed")
        yield* store.release({ scope, key: "k", token: randomUUID() })
        expect((yield* store.claim(request(scope, "k")))._tag).toBe("InFlight")
        yield* store.release({ scope, key: "k", token: claim.token })
        const again = yield* store.claim(request(scope, "k"))
        assert(again._tag === "Claimed")
        expect(again.token).not.toBe(claim.token)
      }))

    it.effect("store: 20 concurrent claims of one key: one is claimed, 19 find it in flight", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const claims = yield* Effect.all(
          Array.from({ length: 20 }, () => store.claim(request(scope, "k"))),
          { concurrency: "unbounded" }
        )
        expect(claims.filter((claim) => claim._tag === "Claimed")).toHaveLength(1)
        expect(claims.filter((claim) => claim._tag === "InFlight")).toHaveLength(19)
      }))

    it.effect("store: holds an in-flight claim until its lease passes; then a new claim takes over, and the old token can neither complete nor release it", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const old = yield* store.claim(request(scope, "k"))
        assert(old._tag === "Claimed")
        yield* elapse(Duration.subtract(lease, margin))
        expect((yield* store.claim(request(scope, "k")))._tag).toBe("InFlight")
        yield* elapse(Duration.sum(margin, Duration.millis(live ? 100 : 0)))
        const taken = yield* store.claim(request(scope, "k", { fingerprint: "new" }))
        assert(taken._tag === "Claimed")
        expect(taken.token).not.toBe(old.token)

        const stale = {
          scope,
          key: "k",
          token: old.token,
          retention,
          result: { _tag: "Success", value: "old" }
        } as const
        expect(yield* store.complete(stale)).toBe(false)
        yield* store.release({ scope, key: "k", token: old.token })
        expect(yield* store.claim(request(scope, "k"))).toEqual({ _tag: "InFlight", fingerprint: "new" })
        const result = { _tag: "Success", value: "new" } as const
        expect(yield* store.complete({ scope, key: "k", token: taken.token, retention, result })).toBe(true)
        expect(yield* store.claim(request(scope, "k"))).toEqual({ _tag: "Completed", fingerprint: "new", result })
      }))

    it.effect("store: keeps a completed record for its retention, then claims the key anew", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const claim = yield* store.claim(request(scope, "k", { retention }))
        assert(claim._tag === "Claimed")
        const result = { _tag: "Success", value: 1 } as const
        expect(yield* store.complete({ scope, key: "k", token: claim.token, retention, result })).toBe(true)
        yield* elapse(Duration.subtract(retention, margin))
        expect((yield* store.claim(request(scope, "k")))._tag).toBe("Completed")
        yield* elapse(Duration.sum(margin, Duration.millis(live ? 100 : 0)))
        const again = yield* store.claim(request(scope, "k"))
        assert(again._tag === "Claimed")
        // the expired record's token no longer completes the key
        expect(yield* store.complete({ scope, key: "k", token: claim.token, retention, result })).toBe(false)
      }))

    it.effect("store: a retention or lease of infinity is kept (as 100 years), not refused", () =>
      Effect.gen(function*() {
        const store = yield* Idempotency.IdempotencyStore
        const scope = randomUUID()
        const claim = yield* store.claim(
          request(scope, "k", { lease: Duration.infinity, retention: Duration.infinity })
        )
        assert(claim._tag === "Claimed")
        expect((yield* store.claim(request(scope, "k")))._tag).toBe("InFlight")
        const result = { _tag: "Success", value: 1 } as const
        const completed = { scope, key: "k", token: claim.token, retention: Duration.infinity, result }
        expect(yield* store.complete(completed)).toBe(true)
        yield* elapse(Duration.sum(margin, Duration.millis(live ? 100 : 0)))
        expect(yield* store.prune).toBeGreaterThanOrEqual(0)
        expect(yield* store.claim(request(scope, "k"))).toEqual({
          _tag: "Completed",
          fingerprint: "fingerprint-k",
          result
        })
      }))

    // -------------------------------------------------------------------------
    // through the bus
    // -------------------------------------------------------------------------

    it.effect("bus: 20 concurrent dispatches with one key run the handler once; the others replay it or find it in flight", () =>
      Effect.gen(function*() {
        const { bus, counter } = makeBus()
        const scope = randomUUID()
        const outcomes = yield* Effect.all(
          Array.from({ length: 20 }, () => Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))),
          { concurrency: "unbounded" }
        )
        expect(counter.runs).toBe(1)
        const ran = outcomes.filter((outcome) => Exit.isSuccess(outcome.exit) && !outcome.replayed)
        expect(ran).toHaveLength(1)
        const result = yield* ran[0]!.exit
        for (const outcome of outcomes) {
          if (outcome === ran[0]) continue
          if (Exit.isSuccess(outcome.exit)) {
            expect(outcome.replayed).toBe(true)
            expect(outcome.exit.value).toEqual(result)
          } else {
            assertError(failureOf(outcome.exit), new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: "k" }))
          }
        }
        const later = yield* Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))
        expect(later.replayed).toBe(true)
        expect(yield* later.exit).toEqual(result)
        expect(counter.runs).toBe(1)
      }))

    it.effect("bus: replays a success; the same key with another payload fails with IdempotencyKeyMismatch; another user's key runs", () =>
      Effect.gen(function*() {
        const { bus, counter } = makeBus()
        const alice = randomUUID()
        const first = yield* bus.dispatch(chargeOf(alice, "k"))
        expect(yield* bus.dispatch(chargeOf(alice, "k"))).toEqual(first)
        expect(counter.runs).toBe(1)

        const mismatch = yield* Effect.flip(bus.dispatch(chargeOf(alice, "k", { amount: 11 })))
        assertError(mismatch, new Idempotency.IdempotencyKeyMismatch({ idempotencyKey: "k" }))
        expect(counter.runs).toBe(1)

        const bobs = yield* bus.dispatch(chargeOf(randomUUID(), "k", { amount: 11 }))
        expect(bobs.charged).toBe(11)
        expect(counter.runs).toBe(2)
        // a command without a key is never recorded
        yield* bus.dispatch(chargeOf(alice, undefined))
        yield* bus.dispatch(chargeOf(alice, undefined))
        expect(counter.runs).toBe(4)
      }))

    it.effect("bus: records a domain failure and replays it without running the handler", () =>
      Effect.gen(function*() {
        const { bus, counter } = makeBus()
        const scope = randomUUID()
        const declined = yield* Effect.flip(bus.dispatch(chargeOf(scope, "k", { amount: 500 })))
        const replayed = yield* Effect.flip(bus.dispatch(chargeOf(scope, "k", { amount: 500 })))
        assert.instanceOf(replayed, Declined)
        assertError(replayed, declined)
        expect(counter.runs).toBe(1)
      }))

    it.effect("bus: a duplicate while the first dispatch runs fails with IdempotencyKeyInFlight and does not run", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const { bus, counter } = makeBus({
          hold: () => Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(gate))
        })
        const scope = randomUUID()
        const first = yield* Effect.fork(bus.dispatch(chargeOf(scope, "k")))
        yield* Deferred.await(started)
        const duplicate = yield* Effect.flip(bus.dispatch(chargeOf(scope, "k")))
        assertError(duplicate, new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: "k" }))
        yield* Deferred.succeed(gate, undefined)
        const result = yield* Fiber.join(first)
        expect(yield* bus.dispatch(chargeOf(scope, "k"))).toEqual(result)
        expect(counter.runs).toBe(1)
      }))

    it.effect("bus: an interrupted dispatch releases its claim: a retry runs at once", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const { bus, counter } = makeBus({
          handle: (command, run) =>
            run === 1 ? Effect.zipRight(Deferred.succeed(started, undefined), Effect.never) : charge(command, run)
        })
        const scope = randomUUID()
        const first = yield* Effect.fork(bus.dispatch(chargeOf(scope, "k")))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(first)
        const retried = yield* Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))
        expect(Exit.isSuccess(retried.exit)).toBe(true)
        expect(retried.replayed).toBe(false)
        expect(counter.runs).toBe(2)
      }))

    // A client that hangs up while its command commits: the commit lands all
    // the same, so the key must answer with it, not run the handler again.
    it.effect("bus: a dispatch interrupted while it commits keeps its success: a retry replays it, and does not run", () =>
      Effect.gen(function*() {
        const committing = yield* Deferred.make<void>()
        const committed = yield* Deferred.make<void>()
        const { bus, counter } = makeBus()
        const scope = randomUUID()
        const first = yield* Effect.fork(slowCommit(bus.dispatch(chargeOf(scope, "k")), committing, committed))
        yield* Deferred.await(committing)
        const interrupted = yield* Effect.fork(Fiber.interrupt(first))
        yield* Deferred.succeed(committed, undefined)
        const exit = yield* Fiber.join(interrupted)
        expect(Exit.isInterrupted(exit)).toBe(true)
        const retried = yield* Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))
        expect(Exit.isSuccess(retried.exit)).toBe(true)
        expect(retried.replayed).toBe(true)
        expect(counter.runs).toBe(1)
      }))

    it.effect("bus: a retention shorter than a dispatch's run does not free its claim: a duplicate finds it in flight, and pruning keeps it", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const { bus, counter } = makeBus({
          lease,
          retention: "1 millis",
          hold: (claimed) =>
            claimed === 1 ? Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(gate)) : Effect.void
        })
        const scope = randomUUID()
        const first = yield* Effect.fork(bus.dispatch(chargeOf(scope, "k")))
        yield* Deferred.await(started)
        // Past the retention, within the lease.
        yield* elapse(Duration.sum(margin, Duration.millis(live ? 100 : 0)))
        yield* (yield* Idempotency.IdempotencyStore).prune
        assertError(
          yield* Effect.flip(bus.dispatch(chargeOf(scope, "k"))),
          new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: "k" })
        )
        yield* Deferred.succeed(gate, undefined)
        expect((yield* Fiber.join(first)).charged).toBe(10)
        expect(counter.runs).toBe(1)
      }))

    it.effect("bus: a crashed dispatch holds its key until the lease passes, not before; then a retry runs", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const { bus, counter } = makeBus({
          lease,
          handle: (command, run) =>
            run === 1 ? Effect.zipRight(Deferred.succeed(started, undefined), Effect.never) : charge(command, run)
        })
        const scope = randomUUID()
        const claimedBefore = Date.now()
        // claimed, then the process dies inside the handler: nothing releases the claim
        const crashed = yield* Effect.fork(neverReleasing(bus.dispatch(chargeOf(scope, "k"))))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(crashed)

        const inFlight = new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: "k" })
        assertError(yield* Effect.flip(bus.dispatch(chargeOf(scope, "k"))), inFlight)
        yield* elapse(Duration.subtract(lease, margin))
        assertError(yield* Effect.flip(bus.dispatch(chargeOf(scope, "k"))), inFlight)
        expect(counter.runs).toBe(1)

        if (live) {
          // the store's clock is its server's: retry until the lease has passed there
          const retried = yield* bus.dispatch(chargeOf(scope, "k")).pipe(
            Effect.retry({
              while: (error) => error instanceof Idempotency.IdempotencyKeyInFlight,
              schedule: Schedule.spaced("50 millis"),
              times: 100
            })
          )
          expect(retried.charged).toBe(10)
          expect(Date.now() - claimedBefore).toBeGreaterThanOrEqual(Duration.toMillis(lease) - 20)
        } else {
          yield* elapse("1 millis")
          expect((yield* bus.dispatch(chargeOf(scope, "k"))).charged).toBe(10)
        }
        expect(counter.runs).toBe(2)
      }))

    it.effect("bus: a dispatch whose lease passed and whose key a retry took over cannot record over the retry", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const { bus, counter } = makeBus({
          lease,
          hold: (claimed) =>
            claimed === 1 ? Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(gate)) : Effect.void
        })
        const scope = randomUUID()
        const slow = yield* Effect.fork(bus.dispatch(chargeOf(scope, "k")))
        yield* Deferred.await(started)
        yield* elapse(Duration.sum(lease, live ? Duration.millis(100) : margin))
        const retry = yield* bus.dispatch(chargeOf(scope, "k"))
        expect(counter.runs).toBe(1)

        // the slow one finishes: its record is refused. A store in the transaction rolls the
        // dispatch back rather than answer twice; one outside it cannot undo a committed
        // dispatch, so that one succeeds, and the retry's record stands either way.
        yield* Deferred.succeed(gate, undefined)
        if ((yield* Idempotency.IdempotencyStore).joinsTransaction) {
          const lost = yield* Effect.flip(Fiber.join(slow))
          assertError(lost, new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: "k" }))
        } else {
          expect((yield* Fiber.join(slow)).charged).toBe(10)
        }
        expect(counter.runs).toBe(2)
        const replay = yield* Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))
        expect(replay.replayed).toBe(true)
        expect(yield* replay.exit).toEqual(retry)
      }))

    it.effect("bus: does not record a retryable failure: a later dispatch runs again", () =>
      Effect.gen(function*() {
        const conflict = new CommandError.ConcurrencyConflict({
          aggregateType: "Account",
          aggregateId: "acc-1",
          expectedVersion: 1
        })
        const { bus, counter } = makeBus({
          handle: (command, run) => run <= 3 ? Effect.fail(conflict) : charge(command, run)
        })
        const scope = randomUUID()
        assertError(yield* Effect.flip(bus.dispatch(chargeOf(scope, "k"))), conflict)
        expect(counter.runs).toBe(3)
        expect((yield* bus.dispatch(chargeOf(scope, "k"))).charged).toBe(10)
        expect(counter.runs).toBe(4)
      }))

    it.effect("bus: an attempt retried after its commit failed records its own success, once", () =>
      Effect.gen(function*() {
        const { bus, counter } = makeBus()
        const scope = randomUUID()
        const conflict = () =>
          new CommandError.ConcurrencyConflict({ aggregateType: "Account", aggregateId: "acc-1", expectedVersion: 1 })
        const result = yield* commitFailing(bus.dispatch(chargeOf(scope, "k")), 1, conflict)
        expect(counter.runs).toBe(2)
        expect(yield* bus.dispatch(chargeOf(scope, "k"))).toEqual(result)
        expect(counter.runs).toBe(2)
      }))

    if (options.undoesFailedCommit) {
      it.effect("bus: a dispatch whose commit failed after recording its success leaves the key to a retry, which runs", () =>
        Effect.gen(function*() {
          const { bus, counter } = makeBus()
          const scope = randomUUID()
          const unavailable = () => new CommandError.StoreUnavailable({ store: "database", reason: "commit failed" })
          const failed = yield* Effect.flip(commitFailing(bus.dispatch(chargeOf(scope, "k")), 1, unavailable))
          assertError(failed, unavailable())
          const retried = yield* Idempotency.observeReplay(bus.dispatch(chargeOf(scope, "k")))
          expect(Exit.isSuccess(retried.exit)).toBe(true)
          expect(retried.replayed).toBe(false)
          expect(counter.runs).toBe(2)
        }))
    } else {
      it.skip("bus: a dispatch whose commit failed after recording its success leaves the key to a retry (this store has no transaction to undo its record with)", () => {})
    }
  })
}
