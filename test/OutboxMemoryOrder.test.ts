/**
 * The in-memory outbox under concurrent appends: a subscriber receives the
 * log in log order, as the SQL relay publishes it.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import { EventPublisher, Outbox, UnitOfWork } from "../src/index.js"
import { envelope } from "./support/Counted.js"

const World = UnitOfWork.layerMemory.pipe(
  Layer.provideMerge(Outbox.layerMemory),
  Layer.provideMerge(EventPublisher.layerMemory)
)

// Appends from several fibers at once, some inside a unit of work, each of
// two events; answers the events' ids as published and as logged.
const appendAtOnce = (maxOpsBeforeYield: number) =>
  Effect.gen(function*() {
    const outbox = yield* Outbox.Outbox
    const unitOfWork = yield* UnitOfWork.UnitOfWork
    const subscription = yield* (yield* EventPublisher.EventPublisher).subscribe
    yield* Effect.all(
      Array.from({ length: 8 }, (_, i) => {
        const append = outbox.append([envelope(2 * i + 1), envelope(2 * i + 2)])
        return i % 2 === 0 ? append : unitOfWork.transactional(append)
      }),
      { concurrency: "unbounded" }
    ).pipe(Effect.withMaxOpsBeforeYield(maxOpsBeforeYield))
    const logged = yield* outbox.read({ after: 0, limit: 100 })
    const published = yield* Queue.takeAll(subscription)
    return {
      logged: logged.map((stored) => stored.event.eventId),
      published: [...published].map((event) => event.eventId)
    }
  }).pipe(Effect.scoped, Effect.provide(World))

describe("the in-memory outbox under concurrent appends", () => {
  // A fiber yields every few steps here, at each step in turn as the limit
  // grows, so one append stops wherever it can: between taking its positions
  // and publishing them, another append's events were published first.
  it.effect("a subscriber receives the events in the order of their positions", () =>
    Effect.gen(function*() {
      for (let maxOps = 10; maxOps <= 80; maxOps++) {
        const { logged, published } = yield* appendAtOnce(maxOps)
        assert.strictEqual(logged.length, 16)
        assert.deepStrictEqual(published, logged, `yielding every ${maxOps} steps`)
      }
    }))
})
