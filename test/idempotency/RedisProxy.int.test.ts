/**
 * The Redis store behind a proxy that misbehaves as a network or a Redis
 * can: a connection that drops just as a claim's reply comes back, and a
 * Redis that refuses writes (MISCONF, a snapshot it cannot save).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { randomUUID } from "node:crypto"
import * as Net from "node:net"
import { CommandError, EventPublisher, Outbox, UnitOfWork } from "../../src/index.js"
import { RedisIdempotencyStore } from "../../src/redis/index.js"
import * as RedisServer from "./RedisServer.js"
import { Charge, makeBus } from "./StoreContract.js"

const externalUrl = process.env.REDIS_URL !== undefined && process.env.REDIS_URL.trim() !== ""
  ? process.env.REDIS_URL.trim()
  : undefined
const server = externalUrl === undefined && RedisServer.available() ? await RedisServer.start() : undefined
const url = externalUrl ?? server?.url

interface Proxy {
  readonly port: number
  /** The next reply from Redis that holds `marker` drops the connection instead. */
  readonly dropOnReply: (marker: string) => void
  /** Scripts (EVAL, EVALSHA) are answered with this error instead of run. */
  readonly refuseScripts: (error: string | undefined) => void
}

const proxy = (redisUrl: string) =>
  Effect.acquireRelease(
    Effect.async<Proxy & { readonly close: () => void }>((resume) => {
      const target = new URL(redisUrl)
      let marker: string | undefined
      let refusal: string | undefined
      const sockets = new Set<Net.Socket>()
      const server = Net.createServer((client) => {
        const upstream = Net.connect(Number(target.port), target.hostname)
        sockets.add(client).add(upstream)
        client.on("data", (chunk: Buffer) => {
          if (refusal !== undefined && /\beval(sha)?\b/i.test(chunk.toString("latin1"))) {
            client.write(`-${refusal}\r\n`)
            return
          }
          upstream.write(chunk)
        })
        upstream.on("data", (chunk: Buffer) => {
          if (marker !== undefined && chunk.toString("latin1").includes(marker)) {
            marker = undefined
            client.destroy()
            upstream.destroy()
            return
          }
          client.write(chunk)
        })
        for (const socket of [client, upstream]) {
          socket.on("error", () => {})
          socket.on("close", () => {
            client.destroy()
            upstream.destroy()
          })
        }
      })
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({
          port: (server.address() as Net.AddressInfo).port,
          dropOnReply: (text) => (marker = text),
          refuseScripts: (error) => (refusal = error),
          close: () => {
            for (const socket of sockets) socket.destroy()
            server.close()
          }
        })))
    }),
    ({ close }) => Effect.sync(close)
  )

const storeBehind = (port: number) =>
  Layer.build(
    Layer.mergeAll(
      Outbox.layerMemory,
      UnitOfWork.layerNone,
      RedisIdempotencyStore.layer({ url: `redis://127.0.0.1:${port}`, keyPrefix: `test:proxy:${randomUUID()}:` })
    ).pipe(Layer.provide(EventPublisher.layerMemory), Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error)))
  )

const failureOf = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) && !Cause.isDie(exit.cause) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

describe.skipIf(url === undefined)("Redis store behind a misbehaving network", () => {
  it.scopedLive(
    "a claim whose reply was lost with the connection: once reconnected, a retry runs",
    () =>
      Effect.gen(function*() {
        const { dropOnReply, port } = yield* proxy(url!)
        const context = yield* storeBehind(port)
        const { bus, counter } = makeBus()
        const dispatch = bus.dispatch(new Charge({ account: "a", amount: 1, userId: "u", idempotencyKey: "k" })).pipe(
          Effect.provide(context)
        )
        dropOnReply("claimed")
        expect(failureOf(yield* Effect.exit(dispatch))).toBeInstanceOf(CommandError.StoreUnavailable)
        expect(counter.runs).toBe(0)
        // Retried while Redis is out of reach (reconnecting), then it runs: never "in flight".
        const charged = yield* dispatch.pipe(
          Effect.retry({
            while: (error) => error instanceof CommandError.StoreUnavailable,
            schedule: Schedule.spaced("100 millis"),
            times: 50
          })
        )
        expect(charged.charged).toBe(1)
        expect(counter.runs).toBe(1)
      }),
    30_000
  )

  it.scopedLive(
    "a Redis that refuses writes (MISCONF) is unavailable (503), not a defect (500)",
    () =>
      Effect.gen(function*() {
        const { port, refuseScripts } = yield* proxy(url!)
        const context = yield* storeBehind(port)
        const { bus, counter } = makeBus()
        refuseScripts("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk")
        const exit = yield* Effect.exit(
          bus.dispatch(new Charge({ account: "a", amount: 1, userId: "u", idempotencyKey: "m" })).pipe(
            Effect.provide(context)
          )
        )
        const failure = failureOf(exit)
        expect(failure).toBeInstanceOf(CommandError.StoreUnavailable)
        expect((failure as CommandError.StoreUnavailable).reason).toContain("MISCONF")
        expect(counter.runs).toBe(0)
      }),
    30_000
  )
})

afterAll(() => server?.stop())
