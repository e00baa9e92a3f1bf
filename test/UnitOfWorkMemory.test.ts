/**
 * The in-memory unit of work, where a fiber forked in a transaction appends
 * events: as on a database, they join the transaction that is open around
 * it, and an append after the whole transaction ended fails.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { EventPublisher, Outbox, UnitOfWork } from "../src/index.js"
import { envelope } from "./support/Counted.js"

const World = UnitOfWork.layerMemory.pipe(
  Layer.provideMerge(Outbox.layerMemory),
  Layer.provide(EventPublisher.layerMemory)
)

const counts = Effect.flatMap(
  Outbox.Outbox,
  (outbox) => Effect.map(outbox.read({ after: 0, limit: 10 }), (stored) => stored.map((s) => s.event.aggregateId))
)

describe("the in-memory unit of work and forked fibers", () => {
  // They went into the kept savepoint's array, already copied into the
  // outer one, and were never published.
  it.live("events a fiber forked in a kept savepoint appends while the transaction is open commit with it", () =>
    Effect.gen(function*() {
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const outbox = yield* Outbox.Outbox
      yield* unitOfWork.transactional(Effect.gen(function*() {
        yield* outbox.append([envelope(1)])
        const go = yield* Deferred.make<void>()
        const fiber = yield* unitOfWork.transactional(
          Effect.fork(Effect.zipRight(Deferred.await(go), outbox.append([envelope(2)])))
        )
        yield* Deferred.succeed(go, undefined)
        yield* Fiber.join(fiber)
      }))
      assert.deepStrictEqual(yield* counts, ["c-1", "c-2"])
    }).pipe(Effect.provide(World)))

  it.live("an append by a fiber forked in a transaction that ended before it fails, and nothing of it is kept", () =>
    Effect.gen(function*() {
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const outbox = yield* Outbox.Outbox
      const go = yield* Deferred.make<void>()
      const fiber = yield* unitOfWork.transactional(Effect.gen(function*() {
        yield* outbox.append([envelope(1)])
        return yield* Effect.forkDaemon(Effect.zipRight(Deferred.await(go), outbox.append([envelope(2)])))
      }))
      yield* Deferred.succeed(go, undefined)
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(exit))
      assert.deepStrictEqual(yield* counts, ["c-1"])
    }).pipe(Effect.provide(World)))
})
