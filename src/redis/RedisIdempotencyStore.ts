/**
 * The idempotency store on Redis, for handlers whose effects live outside
 * PostgreSQL (calls to other services, another database). The rules are the
 * SQL store's; what differs is that the record is not in the command's
 * transaction (see "Redis and transactions" below).
 *
 * Data: one hash per key, `<prefix><scope>:<key>` (both parts URI-encoded,
 * so no scope and key pair can collide with another), with the fields
 * `state` (`in_flight` or `completed`), `fingerprint`, `command_type`,
 * `token` (the owner of the claim), `lease_expires_at` (milliseconds on the
 * Redis clock, while in flight) and `result` (the stored result as JSON,
 * once completed). The key's own expiry (`PEXPIRE`) is the retention, so
 * Redis removes expired records itself and `prune` has nothing to do; the
 * lease is a field, checked against `TIME` inside the claim script, so it is
 * separate from the retention and every instance reads one clock.
 *
 * Each operation is one Lua script, atomic on the server:
 * - claim: a completed record or a live in-flight claim is reported with
 *   its fingerprint (and result); anything else (no record, an expired one,
 *   an in-flight claim whose lease passed) is replaced by a new in-flight
 *   claim with a fresh token, as `SET NX PX` would, plus the takeover.
 * - complete: records the result and restarts the retention, only while
 *   `token` owns the record: a dispatch whose lease passed and whose key was
 *   claimed again gets `false` and cannot overwrite the newer claim.
 * - release: deletes the record, only while `token` owns it.
 *
 * Redis and transactions: the SQL store's completion rolls back with the
 * command's transaction; a Redis write cannot. So the middleware records a
 * success only once the command's transaction committed (`joinsTransaction`
 * is false), and a release drops only a claim still in flight: a completed
 * record stays, whoever asks.
 *
 * Outages: every call is bounded by `timeout` and fails with the typed,
 * retryable `StoreUnavailable`; the client neither queues commands while
 * disconnected nor resends them after a reconnect (a resent claim could find
 * itself in flight), and it reconnects in the background, so the service
 * stays up and serves again once Redis is back. Releases are the exception:
 * one that could not be sent is sent once the connection is back (and before
 * a new claim of its key), so a key whose claim reached Redis just before
 * the connection dropped is free again then, not only when its lease passes.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { Redis } from "ioredis"
import { randomUUID } from "node:crypto"
import { StoreUnavailable } from "../CommandError.js"
import * as Idempotency from "../Idempotency.js"
import { maxTimerMillis, storedMillis } from "../internal/limit.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; of
   * query parameters, only `family` (4 or 6). Others would override the
   * store's own client options (`maxRetriesPerRequest` resending a command
   * that may have run). A `url` that `urlProblem` refuses is a defect.
   */
  readonly url: string | Redacted.Redacted
  /** Prefix of every key this store writes. Default `idempotency:`. */
  readonly keyPrefix?: string
  /** Bound of each call to Redis, and of connecting. Default 2 seconds. */
  readonly timeout?: Duration.DurationInput
}

/**
 * What is wrong with a Redis URL, in words, or `undefined` when nothing is.
 * A database number that the server does not have is found only when the
 * store connects (logged `redis.select-failed`; every call then fails).
 *
 * @since 0.1.0
 * @category utils
 */
export const urlProblem = (url: string): string | undefined => {
  // As written, lower case and first: the client turns TLS on only for a
  // URL that begins `rediss://` (`REDISS://`, or one after a space, went
  // without), where the URL parser would take either.
  if (!/^rediss?:\/\//.test(url)) return "must be a redis:// or rediss:// URL"
  if (!URL.canParse(url)) return "must be a redis:// or rediss:// URL (with a port of 0 to 65535)"
  const parsed = new URL(url)
  if (parsed.hostname === "") return "must name a host"
  if (parsed.port === "0") return "must name a port of 1 to 65535"
  if (!/^(\/(\d{1,9})?)?$/.test(parsed.pathname)) return "must end in a database number (/0, /1, ...) or nothing"
  for (const [name, value] of parsed.searchParams) {
    if (name !== "family") return `takes no query parameter but family (not ${name})`
    if (value !== "4" && value !== "6") return "family must be 4 or 6"
  }
  return undefined
}

const claimScript = `
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'lease_expires_at', 'result')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if record[1] == 'completed' then
  return {'completed', record[2], record[4]}
end
if record[1] == 'in_flight' and tonumber(record[3] or '0') > now then
  return {'in_flight', record[2]}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fingerprint', ARGV[2], 'command_type', ARGV[3],
  'token', ARGV[1], 'lease_expires_at', now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'claimed'}
`

const completeScript = `
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_expires_at')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`

// Only a claim still in flight: a completed record stays, whoever asks.
const releaseScript = `
local record = redis.call('HMGET', KEYS[1], 'token', 'state')
if record[1] ~= ARGV[1] or record[2] ~= 'in_flight' then
  return 0
end
return redis.call('DEL', KEYS[1])
`

interface RedisWithScripts extends Redis {
  idempotencyClaim(
    key: string,
    token: string,
    fingerprint: string,
    commandType: string,
    leaseMillis: number,
    retentionMillis: number
  ): Promise<ReadonlyArray<string>>
  idempotencyComplete(key: string, token: string, result: string, retentionMillis: number): Promise<number>
  idempotencyRelease(key: string, token: string): Promise<number>
}

// Redis replies that mean "not now" (loading, a failover, memory full, a
// script running too long) rather than a bug in this module.
// MISCONF: it cannot save its snapshot and refuses writes until it can.
const transientReplies = /^(LOADING|BUSY|MASTERDOWN|READONLY|TRYAGAIN|CLUSTERDOWN|OOM|NOREPLICAS|MISCONF|UNBLOCKED)\b/

const isReplyError = (error: unknown): error is Error => error instanceof Error && error.name === "ReplyError"

// What the client's own errors mean, in words for an operator.
const reasonOf = (error: unknown, timeoutMillis: number): string => {
  const message = Predicate.hasProperty(error, "message") && typeof error.message === "string"
    ? error.message.split("\n")[0]!
    : "unreachable"
  if (message.startsWith("Stream isn't writeable")) return "not connected"
  if (message === "Connection is closed." || message.startsWith("Reached the max retries")) return "connection lost"
  if (message === "Command timed out") return `no reply within ${timeoutMillis} ms`
  return message
}

// A reply error that is not transient is a bug (a script error, a key of
// another type under the prefix): a defect, as the SQL stores treat SQL
// errors that are not outages. Anything else (connection refused or lost,
// the client offline, a command timeout) is an outage.
const classify = (error: unknown, timeoutMillis: number): Effect.Effect<never, StoreUnavailable> =>
  isReplyError(error) && !transientReplies.test(error.message)
    ? Effect.die(error)
    : Effect.fail(new StoreUnavailable({ store: "redis", reason: reasonOf(error, timeoutMillis) }))

// PEXPIRE 0 deletes the key at once.
const millis = (duration: Duration.Duration) => Math.max(1, storedMillis(duration))

const parseResult = (json: string | undefined): Effect.Effect<Idempotency.StoredResult> =>
  Effect.try(() => JSON.parse(json ?? "") as Idempotency.StoredResult).pipe(Effect.orDie)

/**
 * Connects to Redis for as long as the scope lives (quits when it closes).
 * A Redis that is not reachable at start is logged, not fatal: the client
 * keeps reconnecting and commands fail with `StoreUnavailable` meanwhile.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<Idempotency.Store, never, Scope.Scope> =>
  Effect.gen(function*() {
    // Node's timers (the client's too) fire a delay over 2^31 - 1 ms at once.
    const timeoutMillis = Math.min(millis(Duration.decode(options.timeout ?? "2 seconds")), maxTimerMillis)
    const timeout = Duration.millis(timeoutMillis)
    const prefix = options.keyPrefix ?? "idempotency:"
    const url = typeof options.url === "string" ? options.url : Redacted.value(options.url)
    const problem = urlProblem(url)
    if (problem !== undefined) return yield* Effect.dieMessage(`RedisIdempotencyStore: the url ${problem}`)
    // The database the URL names could not be selected (the server has fewer):
    // the client would go on in database 0, among others' keys.
    let selectFailed: string | undefined
    const runtime = yield* Effect.runtime<never>()
    const log = (effect: Effect.Effect<void>) => Runtime.runFork(runtime)(effect)
    let closing = false
    // Releases that could not be sent (the connection was down): sent once
    // it is back, and before any new claim of their key, which would
    // otherwise find the key "in flight" until its lease passed, though its
    // command is long over. Sending one late is safe: the script drops only
    // a claim still in flight with that token. Bounded: past it, the lease
    // frees the key.
    const unsent = new Map<string, Set<string>>()
    let unsentCount = 0
    const remember = (key: string, token: string) => {
      if (unsentCount >= 10_000) return
      const tokens = unsent.get(key) ?? new Set()
      if (!tokens.has(token)) unsentCount++
      unsent.set(key, tokens.add(token))
    }
    // The releases of a key still unsent, now taken to be sent.
    const takeUnsent = (key: string): ReadonlyArray<string> => {
      const tokens = unsent.get(key)
      if (tokens === undefined) return []
      unsent.delete(key)
      unsentCount -= tokens.size
      return [...tokens]
    }
    const sendUnsent = (key: string): Promise<unknown> =>
      Promise.all(
        takeUnsent(key).map((token) =>
          client.idempotencyRelease(key, token).catch((error: unknown) => {
            remember(key, token)
            return Promise.reject(error)
          })
        )
      )

    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const redis = new Redis(url, {
          lazyConnect: true,
          connectTimeout: timeoutMillis,
          commandTimeout: timeoutMillis,
          // Fail at once while disconnected, fail what was in flight when the
          // connection dropped, and never send a command twice.
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          autoResendUnfulfilledCommands: false,
          retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
          // A failover behind a stable address (a managed Redis, a proxy)
          // leaves this connection on the demoted node, which refuses every
          // write: connect again, to whatever the address now leads to.
          // (1: without sending the failed command again.)
          reconnectOnError: (error) => /^(READONLY|MASTERDOWN)\b/.test(error.message) ? 1 : false
        }) as RedisWithScripts
        redis.defineCommand("idempotencyClaim", { numberOfKeys: 1, lua: claimScript })
        redis.defineCommand("idempotencyComplete", { numberOfKeys: 1, lua: completeScript })
        redis.defineCommand("idempotencyRelease", { numberOfKeys: 1, lua: releaseScript })
        // Without an "error" listener a connection error would be reported
        // as unhandled; each command already fails with its own error. A
        // loss and a recovery are logged once each, not every attempt.
        let connected = false
        let lost = false
        redis.on("error", (error: unknown) => {
          if (
            isReplyError(error) && Predicate.hasProperty(error, "command") &&
            Predicate.hasProperty(error.command, "name") && error.command.name === "select" &&
            selectFailed === undefined
          ) {
            selectFailed = `cannot select the database of REDIS_URL (${error.message.split("\n")[0]})`
            log(Effect.logError("redis.select-failed").pipe(Effect.annotateLogs({ error: selectFailed })))
          }
        })
        redis.on("ready", () => {
          if (lost) log(Effect.logInfo("redis.reconnected"))
          connected = true
          lost = false
          for (const key of [...unsent.keys()]) sendUnsent(key).catch(() => {})
        })
        redis.on("close", () => {
          if (connected && !closing) {
            log(Effect.logWarning("redis.connection-lost"))
            lost = true
          }
          connected = false
        })
        return redis
      }),
      (redis) =>
        Effect.promise(() => {
          closing = true
          return redis.quit()
        }).pipe(
          Effect.timeout(timeout),
          Effect.catchAllCause(() => Effect.void),
          Effect.ensuring(Effect.sync(() => redis.disconnect()))
        )
    )

    yield* Effect.tryPromise({ try: () => client.connect(), catch: (error) => error }).pipe(
      Effect.timeoutFail({ duration: timeout, onTimeout: () => new Error(`no connection within ${timeoutMillis} ms`) }),
      Effect.catchAll((error) =>
        Effect.logWarning("redis.unavailable-at-start").pipe(
          Effect.annotateLogs({ error: error instanceof Error ? error.message : String(error), reconnecting: true })
        )
      )
    )

    const send = <A>(operation: string, run: () => Promise<A>): Effect.Effect<A, StoreUnavailable> =>
      Effect.tryPromise({
        try: () =>
          selectFailed === undefined
            ? run()
            : Promise.reject(new StoreUnavailable({ store: "redis", reason: selectFailed })),
        catch: (error) => error
      }).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new StoreUnavailable({ store: "redis", reason: `no reply within ${timeoutMillis} ms` })
        }),
        Effect.catchAll((error) =>
          error instanceof StoreUnavailable ? Effect.fail(error) : classify(error, timeoutMillis)
        ),
        Effect.withSpan(`RedisIdempotencyStore.${operation}`, {
          attributes: { "db.system": "redis" },
          captureStackTrace: false
        })
      )

    const keyOf = (scope: string, key: string) => `${prefix}${encodeURIComponent(scope)}:${encodeURIComponent(key)}`

    const release = (request: { readonly scope: string; readonly key: string; readonly token: string }) => {
      const key = keyOf(request.scope, request.key)
      return send("release", () => client.idempotencyRelease(key, request.token)).pipe(
        Effect.tapError(() => Effect.sync(() => remember(key, request.token))),
        Effect.asVoid
      )
    }

    // A claim of a key whose release is still unsent sends that release
    // first, on the same connection, so Redis runs them in that order. If
    // its caller gave up meanwhile, the claim's own release has gone out
    // already: the claim, sent after it, would hold the key with a token
    // nobody has until the lease passed, so it is not sent.
    const claimAfterUnsent = (
      key: string,
      abandoned: () => boolean,
      claim: () => Promise<ReadonlyArray<string>>
    ) =>
      unsent.has(key)
        ? sendUnsent(key).then(() => abandoned() ? Promise.reject(new Error("claim abandoned")) : claim())
        : claim()

    return {
      // Not in the command's transaction: a success is recorded after commit.
      joinsTransaction: false,
      claim: (request) =>
        Effect.suspend(() => {
          const key = keyOf(request.scope, request.key)
          const token = randomUUID()
          let abandoned = false
          return send("claim", () =>
            claimAfterUnsent(key, () => abandoned, () =>
              client.idempotencyClaim(
                key,
                token,
                request.fingerprint,
                request.commandType,
                millis(request.lease),
                millis(request.retention)
              ))).pipe(
              // A claim that timed out or was interrupted may still have
              // reached Redis: drop it (the release follows it on the same
              // connection), so the key is not held until its lease passes;
              // one still waiting behind an unsent release is never sent.
              Effect.onExit((exit) =>
                Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => {
                  abandoned = true
                  client.idempotencyRelease(key, token).catch(() => remember(key, token))
                })
              ),
              Effect.flatMap((reply): Effect.Effect<Idempotency.Claim> => {
                switch (reply[0]) {
                  case "claimed":
                    return Effect.succeed({ _tag: "Claimed", token })
                  case "in_flight":
                    return Effect.succeed({ _tag: "InFlight", fingerprint: reply[1] ?? "" })
                  case "completed":
                    return Effect.map(
                      parseResult(reply[2]),
                      (result) => ({ _tag: "Completed", fingerprint: reply[1] ?? "", result })
                    )
                  default:
                    return Effect.dieMessage(`unexpected idempotency claim reply: ${JSON.stringify(reply)}`)
                }
              })
            )
        }),
      complete: (request) =>
        Effect.suspend(() =>
          send("complete", () =>
            client.idempotencyComplete(
              keyOf(request.scope, request.key),
              request.token,
              JSON.stringify(request.result),
              millis(request.retention)
            ))
        ).pipe(Effect.map((updated) => updated === 1)),
      release,
      // Redis expires records itself, by each key's PEXPIRE.
      prune: Effect.succeed(0)
    }
  })

/**
 * The Redis store, connected while the layer lives.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Idempotency.IdempotencyStore> =>
  Layer.scoped(Idempotency.IdempotencyStore, make(options))

/**
 * The Redis store, with its options read from configuration.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options>
): Layer.Layer<Idempotency.IdempotencyStore, ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(options), layer))
