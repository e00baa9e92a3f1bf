/**
 * An `EventStore` whose first `racers` reads of a stream wait for one
 * another: each of those dispatches has read the same version (on a
 * database, in its own open transaction) before any of them decides, so a
 * race on a stream happens every run rather than by chance.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import { EventStore } from "../../src/index.js"

export const racingReads = (racers: number): Effect.Effect<EventStore.Service, never, EventStore.EventStore> =>
  Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const allRead = yield* Deferred.make<void>()
    let reads = 0
    return {
      ...store,
      read: (stream, options) =>
        Effect.tap(store.read(stream, options), () => {
          reads++
          if (reads > racers) return Effect.void
          return Effect.zipRight(
            reads === racers ? Deferred.succeed(allRead, undefined) : Effect.void,
            Deferred.await(allRead)
          )
        })
    }
  })

/** `self` with the racing store in place of the one in context. */
export const racing = <A, E, R>(racers: number, self: Effect.Effect<A, E, R>) =>
  Effect.flatMap(racingReads(racers), (store) => Effect.provideService(self, EventStore.EventStore, store))
