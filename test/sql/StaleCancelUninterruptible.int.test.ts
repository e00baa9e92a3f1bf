/**
 * A stale cancel (its fiber interrupted between its statement's
 * answer and its resumption) must not end the statement of the fiber that
 * took the connection next, even when that fiber has been interrupted too
 * but runs its statement uninterruptibly: a finalizer after a timeout, as the
 * idempotency middleware releases its claim.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { onePool, withClient } from "../support/CancelPool.js"
import * as TestDatabase from "../support/Database.js"

/** Polls `check` every 20 ms, at most 10 s. */
const until = (check: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 500 && !check(); i++) yield* Effect.sleep("20 millis")
    expect(check()).toBe(true)
  })

describe.skipIf(TestDatabase.serverUrl === undefined)(
  "a stale cancel and an uninterruptible statement (postgres)",
  () => {
    it.scopedLive("does not end the uninterruptible statement of an interrupted fiber that took the connection next", () =>
      Effect.gen(function*() {
        const pool = yield* onePool()
        yield* withClient(pool, (sql) =>
          Effect.gen(function*() {
            const acquired = yield* Deferred.make<void>()
            pool.once("acquire", () => Deferred.unsafeDone(acquired, Exit.void))
            // A: its statement, interrupted when its connection goes back to the pool.
            const first = yield* Effect.fork(sql`SELECT pg_sleep(1)`)
            yield* Deferred.await(acquired)
            let interrupted = false
            pool.on("release", () => {
              if (interrupted) return
              interrupted = true
              first.unsafeInterruptAsFork(first.id())
            })
            // B: a fiber interrupted while A holds the one connection, whose
            // finalizer (uninterruptible) runs a statement: it waits for the
            // connection, and gets it as A's statement ends.
            const cleanup = yield* Deferred.make<Exit.Exit<unknown, unknown>>()
            const second = yield* Effect.fork(
              Effect.never.pipe(Effect.ensuring(
                Effect.exit(sql`SELECT 'cleanup' AS who FROM pg_sleep(0.5)`).pipe(
                  Effect.flatMap((exit) => Deferred.succeed(cleanup, exit))
                )
              ))
            )
            yield* Effect.yieldNow()
            yield* Fiber.interruptFork(second)
            yield* until(() => pool.waitingCount === 1)
            const exit = yield* Deferred.await(cleanup)
            expect(Exit.isInterrupted(yield* Fiber.await(first))).toBe(true)
            // The cleanup's statement ran to its end, not cancelled by A's cancel.
            expect(exit).toEqual(Exit.succeed([{ who: "cleanup" }]))
          }))
      }))
  }
)
