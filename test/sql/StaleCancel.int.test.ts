/**
 * The cancel of an interrupted statement that had already ended reaches no
 * other statement. `@effect/sql-pg` cancels an interrupted fiber's
 * statement by its connection's process id; when the interruption lands
 * between the statement's answer and the fiber's resumption, the statement
 * is over and its connection back in the pool, perhaps already running
 * someone else's statement, which the cancel then ended with 57014
 * ("canceling statement due to user request"). It made a test that truncated
 * tables after a scope closed on a follower fail at random on a loaded
 * machine.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type Pg from "pg"
import { nextAfterSlowCancel, onePool, slowCancels, withClient } from "../support/CancelPool.js"
import * as TestDatabase from "../support/Database.js"

/** `effect`, or a failure after 10 seconds: a statement cancelled ends long before. */
const soon = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.timeoutFail(effect, { duration: "10 seconds", onTimeout: () => new Error("not cancelled") })

/**
 * Runs `first` in a fiber, and interrupts that fiber when its statement's
 * connection goes back to the pool: after the answer, before the fiber has
 * seen it, as a scope that closes at that moment does. `released` is done
 * then.
 */
const interruptedAtRelease = <A, E>(pool: Pg.Pool, first: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const released = yield* Deferred.make<void>()
    const fiber = yield* Effect.fork(first)
    let interrupted = false
    const onRelease = () => {
      if (interrupted) return
      interrupted = true
      fiber.unsafeInterruptAsFork(fiber.id())
      Deferred.unsafeDone(released, Exit.void)
    }
    pool.on("release", onRelease)
    yield* Effect.addFinalizer(() => Effect.sync(() => pool.off("release", onRelease)))
    return { fiber, released: Deferred.await(released) }
  })

describe.skipIf(TestDatabase.serverUrl === undefined)("a cancel after the statement ended (postgres)", () => {
  it.scopedLive("does not end the statement that took the connection next", () =>
    Effect.gen(function*() {
      const pool = yield* onePool()
      yield* withClient(pool, (sql) =>
        Effect.gen(function*() {
          const first = yield* interruptedAtRelease(pool, sql`SELECT pg_sleep(0.2)`)
          // Waits for the pool's one connection: it gets it as the first
          // statement's ends, before the first fiber sees its interruption.
          const next = yield* Effect.fork(sql`SELECT 'next' AS who FROM pg_sleep(0.5)`)
          expect(Exit.isInterrupted(yield* Fiber.await(first.fiber))).toBe(true)
          expect(yield* Fiber.join(next)).toEqual([{ who: "next" }])
        }))
    }))

  it.scopedLive("does not end a statement sent on the connection while the cancel is on its way", () =>
    Effect.gen(function*() {
      const pool = yield* onePool()
      yield* withClient(pool, (sql) =>
        Effect.gen(function*() {
          const first = yield* interruptedAtRelease(pool, sql`SELECT pg_sleep(0.2)`)
          yield* first.released
          // At once, on the idle connection, while the first fiber ends: a
          // cancel sent for its statement reaches the server as this one runs.
          expect(yield* sql`SELECT 'next' AS who FROM pg_sleep(0.5)`).toEqual([{ who: "next" }])
          expect(Exit.isInterrupted(yield* Fiber.await(first.fiber))).toBe(true)
        }))
    }))

  it.scopedLive("does not end the next statement when the first one's answer comes while its cancel is on its way", () =>
    // The cancel arrives 400 ms after it went out, after the first statement's answer.
    Effect.map(nextAfterSlowCancel(400, 0.5), (next) => expect(next).toEqual([{ who: "next" }])))

  it.scopedLive("drops a connection that fails while it waits for its cancel to arrive, and goes on", () =>
    Effect.gen(function*() {
      const pool = yield* onePool(yield* slowCancels(800))
      yield* withClient(pool, (sql) =>
        Effect.gen(function*() {
          const [{ pid }] = yield* sql<{ readonly pid: number }>`SELECT pg_backend_pid() AS pid`
          const first = yield* Effect.fork(sql`SELECT pg_sleep(0.3)`)
          yield* Effect.sleep("100 millis")
          // The cancel arrives 800 ms later; the answer comes at 300 ms, and the
          // connection waits for the cancel, out of the pool.
          const interrupted = yield* Effect.fork(Fiber.interrupt(first))
          yield* Effect.sleep("400 millis")
          // Its error had no listener then, and crashed the process.
          yield* TestDatabase.admin(`SELECT pg_terminate_backend(${pid})`)
          yield* Fiber.join(interrupted)
          const [again] = yield* sql<{ readonly pid: number }>`SELECT pg_backend_pid() AS pid`
          expect(again!.pid).not.toBe(pid)
        }))
    }))

  it.scopedLive("still cancels an interrupted statement that runs", () =>
    Effect.gen(function*() {
      const pool = yield* onePool()
      yield* withClient(pool, (sql) =>
        Effect.gen(function*() {
          const slow = yield* Effect.fork(sql`SELECT pg_sleep(30)`)
          yield* Effect.sleep("300 millis")
          yield* Fiber.interrupt(slow)
          // Cancelled, the connection is free for the next statement soon; not cancelled, in 30 s.
          expect(yield* soon(sql`SELECT 1 AS one`)).toEqual([{ one: 1 }])
        }))
    }))

  it.scopedLive("still cancels a statement of a transaction whose own fiber is interrupted, not the transaction's", () =>
    Effect.gen(function*() {
      const pool = yield* onePool()
      yield* withClient(pool, (sql) =>
        Effect.gen(function*() {
          // The transaction's fiber holds the connection; the statement runs
          // in a fiber of the timeout's, which alone is interrupted.
          const exit = yield* soon(
            sql.withTransaction(sql`SELECT pg_sleep(30)`.pipe(Effect.timeout("300 millis"))).pipe(Effect.exit)
          )
          expect(exit._tag).toBe("Failure")
          expect(yield* soon(sql`SELECT 1 AS one`)).toEqual([{ one: 1 }])
        }))
    }))
})
