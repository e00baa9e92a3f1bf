/**
 * The idempotency contract on the Redis store, and what only Redis has: its
 * data layout, and outages. Runs against `REDIS_URL` when set (keys under a
 * prefix of their own, deleted at the end), else against a `redis-server`
 * it starts on loopback, else is skipped. The outage tests stop and freeze
 * their server, so they always run on one this file started (never on the
 * shared `REDIS_URL`), and are skipped without `redis-server`.
 */
import { afterAll, assert, describe, expect, it, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { Redis } from "ioredis"
import { randomUUID } from "node:crypto"
import { CommandError, EventPublisher, Idempotency, Outbox, UnitOfWork } from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import * as RedisServer from "./RedisServer.js"
import { Charge, contract, makeBus } from "./StoreContract.js"

const externalUrl = process.env.REDIS_URL !== undefined && process.env.REDIS_URL.trim() !== ""
  ? process.env.REDIS_URL.trim()
  : undefined
const canStart = RedisServer.available()
const server = externalUrl === undefined && canStart ? await RedisServer.start() : undefined
const url = externalUrl ?? server?.url
const outageServer = url === undefined || !canStart ? undefined : server ?? await RedisServer.start()
const keyPrefix = `test:idempotency:${randomUUID()}:`

const quiet = Logger.minimumLogLevel(LogLevel.Error)

const servicesWith = (store: Layer.Layer<Idempotency.IdempotencyStore>) =>
  Layer.mergeAll(Outbox.layerMemory, UnitOfWork.layerNone, store).pipe(
    Layer.provide(EventPublisher.layerMemory),
    Layer.provideMerge(quiet)
  )

/** A client of its own, to look at what the store wrote. */
const rawClient = (redisUrl: string) =>
  Effect.acquireRelease(
    Effect.sync(() => new Redis(redisUrl, { maxRetriesPerRequest: 1 })),
    (client) => Effect.promise(() => client.quit()).pipe(Effect.orElse(() => Effect.sync(() => client.disconnect())))
  )

const unavailableOf = <A, E>(exit: Exit.Exit<A, E>) => {
  assert(Exit.isFailure(exit), "expected a failure")
  expect(Cause.isDie(exit.cause)).toBe(false)
  const failure = Option.getOrUndefined(Cause.failureOption(exit.cause))
  assert.instanceOf(failure, CommandError.StoreUnavailable)
  expect(failure.store).toBe("redis")
  return failure
}

const retryWhileUnavailable = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.retry(self, {
    while: (error) => error instanceof CommandError.StoreUnavailable,
    schedule: Schedule.spaced("100 millis"),
    times: 100
  })

if (url === undefined) {
  describe("idempotency contract (redis)", () => {
    it.skip("needs REDIS_URL or redis-server on PATH (apt-get install redis-server)", () => {})
  })
} else {
  afterAll(async () => {
    await outageServer?.stop()
    if (server !== undefined) return
    // A shared server: delete what this run wrote.
    const client = new Redis(url, { maxRetriesPerRequest: 1 })
    try {
      let cursor = "0"
      do {
        const [next, keys] = await client.scan(cursor, "MATCH", `${keyPrefix}*`, "COUNT", 1000)
        if (keys.length > 0) await client.del(...keys)
        cursor = next
      } while (cursor !== "0")
    } finally {
      await client.quit()
    }
  }, 30_000)

  contract("idempotency contract (redis)", servicesWith(RedisIdempotencyStore.layer({ url, keyPrefix })), {
    clock: "live",
    undoesFailedCommit: true
  })

  layer(servicesWith(RedisIdempotencyStore.layer({ url, keyPrefix })), { excludeTestServices: true })(
    "redis store",
    (it) => {
      it.scoped(
        "keeps each record as a hash whose expiry is its retention and whose lease is a field; prune has nothing to do",
        () =>
          Effect.gen(function*() {
            const store = yield* Idempotency.IdempotencyStore
            const raw = yield* rawClient(url)
            const scope = `user:${randomUUID()}`
            const key = `${keyPrefix}${encodeURIComponent(scope)}:${encodeURIComponent("k/1")}`
            const claim = yield* store.claim({
              scope,
              key: "k/1",
              fingerprint: "f-1",
              commandType: "Charge",
              lease: Duration.minutes(1),
              retention: Duration.hours(1)
            })
            assert(claim._tag === "Claimed")
            const inFlight = yield* Effect.promise(() => raw.hgetall(key))
            const [seconds, micros] = yield* Effect.promise(() => raw.time())
            const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
            expect(inFlight).toMatchObject({
              state: "in_flight",
              fingerprint: "f-1",
              command_type: "Charge",
              token: claim.token
            })
            expect(Number(inFlight.lease_expires_at) - now).toBeGreaterThan(55_000)
            expect(Number(inFlight.lease_expires_at) - now).toBeLessThanOrEqual(60_000)
            expect(yield* Effect.promise(() => raw.pttl(key))).toBeGreaterThan(3_590_000)

            const result = { _tag: "Success", value: { receipt: "r" } } as const
            const completed = yield* store.complete({
              scope,
              key: "k/1",
              token: claim.token,
              retention: Duration.minutes(10),
              result
            })
            expect(completed).toBe(true)
            const record = yield* Effect.promise(() => raw.hgetall(key))
            expect(record).not.toHaveProperty("lease_expires_at")
            expect(record).toMatchObject({ state: "completed", token: claim.token })
            expect(JSON.parse(record.result!)).toEqual(result)
            const ttl = yield* Effect.promise(() => raw.pttl(key))
            expect(ttl).toBeGreaterThan(590_000)
            expect(ttl).toBeLessThanOrEqual(600_000)

            expect(yield* store.prune).toBe(0)
          })
      )

      if (outageServer === undefined) {
        it.skip("outages (need redis-server on PATH, to stop a server of their own)", () => {})
        return
      }
      const server = outageServer
      const timeout = Duration.millis(400)
      const outageStore = RedisIdempotencyStore.make({ url: server.url, keyPrefix, timeout })

      it.scoped("a slow Redis: calls fail with StoreUnavailable at the timeout; a claim that timed out holds nothing", () =>
        Effect.gen(function*() {
          const store = yield* outageStore
          const { bus, counter } = makeBus()
          const scope = randomUUID()
          const dispatch = (key: string) =>
            bus.dispatch(new Charge({ account: "a", amount: 1, userId: scope, idempotencyKey: key })).pipe(
              Effect.provideService(Idempotency.IdempotencyStore, store)
            )
          yield* dispatch("before")

          server.pause()
          const started = Date.now()
          const exit = yield* Effect.exit(dispatch("k")).pipe(Effect.ensuring(Effect.sync(() => server.resume())))
          const elapsed = Date.now() - started
          expect(unavailableOf(exit).reason).toBe(`no reply within ${Duration.toMillis(timeout)} ms`)
          expect(elapsed).toBeGreaterThanOrEqual(Duration.toMillis(timeout) - 20)
          expect(elapsed).toBeLessThan(Duration.toMillis(timeout) + 3000)
          expect(counter.runs).toBe(1)

          // Redis answers again: the claim that timed out was dropped after it ran there
          const retried = yield* Idempotency.observeReplay(retryWhileUnavailable(dispatch("k")))
          expect(Exit.isSuccess(retried.exit)).toBe(true)
          expect(retried.replayed).toBe(false)
          expect(counter.runs).toBe(2)
        }))

      it.scoped(
        "Redis stopped mid-suite: typed StoreUnavailable at once, no defect, no run without a claim; back: normal service",
        () =>
          Effect.gen(function*() {
            const store = yield* outageStore
            const { bus, counter } = makeBus()
            const scope = randomUUID()
            const dispatch = (key: string | undefined) =>
              bus.dispatch(
                new Charge({
                  account: "a",
                  amount: 1,
                  userId: scope,
                  ...(key === undefined ? {} : { idempotencyKey: key })
                })
              ).pipe(Effect.provideService(Idempotency.IdempotencyStore, store))
            const before = yield* dispatch("before")
            expect(counter.runs).toBe(1)

            yield* Effect.promise(() => server.kill())
            yield* Effect.addFinalizer(() => Effect.promise(() => server.start()).pipe(Effect.ignore))
            const started = Date.now()
            const during = yield* Effect.exit(dispatch("k"))
            expect(Date.now() - started).toBeLessThan(Duration.toMillis(timeout) + 3000)
            expect(unavailableOf(during).reason).toMatch(/^(not connected|connection lost)$/)
            expect(counter.runs).toBe(1)

            // each operation of the store fails typed, within its bound
            const request = {
              scope,
              key: "direct",
              fingerprint: "f",
              commandType: "Charge",
              lease: Duration.minutes(1),
              retention: Duration.hours(1)
            }
            for (
              const operation of [
                store.claim(request),
                store.complete({ ...request, token: "t", result: { _tag: "Success", value: 1 } }),
                store.release({ ...request, token: "t" })
              ]
            ) {
              const at = Date.now()
              unavailableOf(yield* Effect.exit(operation))
              expect(Date.now() - at).toBeLessThan(Duration.toMillis(timeout) + 3000)
            }
            // a command without a key does not need Redis
            yield* dispatch(undefined)
            expect(counter.runs).toBe(2)

            yield* Effect.promise(() => server.start())
            const after = yield* retryWhileUnavailable(dispatch("k"))
            expect(counter.runs).toBe(3)
            expect(yield* dispatch("k")).toEqual(after)
            expect(counter.runs).toBe(3)
            // the records written before the outage went with it (no persistence): the key runs anew
            const again = yield* dispatch("before")
            expect(again.receipt).not.toBe(before.receipt)
          })
      )
    }
  )
}
