/**
 * Reactions that fail in the ways a follower must survive: a handler whose
 * own work ends interrupted (a failure, not a shutdown), and, with
 * `sequencing: "aggregate"`, events at or before an aggregate's dead letter
 * (run again after an unsaved checkpoint or a replay, not parked behind it).
 */
import { assert, describe, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { CommandError, DomainEvent, EventPublisher, Outbox, Reaction } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

class Ping extends DomainEvent.Class<Ping>()("Ping", { n: Schema.Int }) {}

const envelope = (n: number) =>
  new DomainEvent.Envelope({
    eventId: crypto.randomUUID(),
    type: "Ping",
    aggregateType: "P",
    aggregateId: `p-${n}`,
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: crypto.randomUUID(),
    causationId: crypto.randomUUID(),
    payload: { n }
  })

// A handler whose own work ends interrupted (a child fiber it joins was
// interrupted), while the reacting fiber itself is not interrupted.
const reactions = (seen: Queue.Queue<number>) => [
  Reaction.make(Ping, (event) =>
    event.n === 1
      ? Effect.flatMap(Effect.fork(Effect.never), (child) => Effect.zipRight(Fiber.interrupt(child), Fiber.join(child)))
      : Queue.offer(seen, event.n), { name: "ping" })
]

describe("Reaction: a handler that ends interrupted", () => {
  it.live("start: the next event still runs", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const seen = yield* Queue.unbounded<number>()
        const fiber = yield* Reaction.start(reactions(seen))
        const publisher = yield* EventPublisher.EventPublisher
        yield* publisher.publish([envelope(1), envelope(2)])
        const got = yield* Effect.timeoutOption(Queue.take(seen), "2 seconds")
        assert.strictEqual(Option.getOrUndefined(got), 2, "event 2 handled")
        assert.isNull(fiber.unsafePoll())
      })
    ).pipe(Effect.provide(InMemory.layer)))

  it.live("follow: the follower goes on with the next event", () =>
    Effect.scoped(Effect.gen(function*() {
      const seen = yield* Queue.unbounded<number>()
      const outbox = yield* Outbox.Outbox
      yield* outbox.append([envelope(1), envelope(2)])
      const fiber = yield* Reaction.follow("f", reactions(seen), { pollInterval: "50 millis" })
      const got = yield* Effect.timeoutOption(Queue.take(seen), "2 seconds")
      assert.strictEqual(Option.getOrUndefined(got), 2, "event 2 handled")
      assert.isNull(fiber.unsafePoll())
    })).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))
})

// A schema whose transformation throws on a payload it did not expect, and
// a reaction written by hand whose handle throws: each a failure of that
// event's reaction, not of the loop that runs them.
const Sku = Schema.transform(Schema.String, Schema.String, {
  strict: true,
  decode: (sku) => {
    if (!sku.startsWith("sku-")) throw new Error(`not a sku: ${sku}`)
    return sku.slice(4)
  },
  encode: (sku) => `sku-${sku}`
})
class ItemAdded extends DomainEvent.Class<ItemAdded>()("ItemAdded", { sku: Sku }) {}

const itemAdded = (sku: string) =>
  new DomainEvent.Envelope({
    eventId: crypto.randomUUID(),
    type: "ItemAdded",
    aggregateType: "Cart",
    aggregateId: `c-${sku}`,
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: crypto.randomUUID(),
    causationId: crypto.randomUUID(),
    payload: { sku }
  })

const throwing = (seen: Queue.Queue<string>): ReadonlyArray<Reaction.Reaction<never, never>> => [
  Reaction.make(ItemAdded, (event) => Queue.offer(seen, event.sku), { name: "items" }),
  {
    name: "by-hand",
    eventType: "ItemAdded",
    handle: (envelope) => {
      if ((envelope.payload as { sku: string }).sku === "oops") throw new Error("by-hand threw")
      return Effect.void
    }
  }
]

describe("Reaction: a schema or a handle that throws", () => {
  it.live("start: the event is a failure of its reactions; the next event still runs", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const seen = yield* Queue.unbounded<string>()
        const fiber = yield* Reaction.start(throwing(seen))
        const publisher = yield* EventPublisher.EventPublisher
        yield* publisher.publish([itemAdded("oops"), itemAdded("sku-2")])
        const got = yield* Effect.timeoutOption(Queue.take(seen), "2 seconds")
        assert.strictEqual(Option.getOrUndefined(got), "2", "the next event handled")
        assert.isNull(fiber.unsafePoll())
      })
    ).pipe(Effect.provide(InMemory.layer)))

  it.live("follow: the event becomes dead letters (undecodable; a defect); the follower goes on", () =>
    Effect.scoped(Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const outbox = yield* Outbox.Outbox
      const broken = itemAdded("oops")
      yield* outbox.append([broken, itemAdded("sku-2")])
      const fiber = yield* Reaction.follow("items", throwing(seen), { pollInterval: "50 millis" })
      const got = yield* Effect.timeoutOption(Queue.take(seen), "2 seconds")
      assert.strictEqual(Option.getOrUndefined(got), "2", "the next event handled")
      assert.isNull(fiber.unsafePoll())
      const letters = yield* Effect.flatMap(Reaction.DeadLetters, (store) => store.list("items"))
      assert.deepStrictEqual(
        letters.map((letter) => [letter.reaction, letter.event.eventId]).sort(),
        [["by-hand", broken.eventId], ["items", broken.eventId]]
      )
    })).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))
})

class OrderPlaced extends DomainEvent.Class<OrderPlaced>()("OrderPlaced", { orderId: Schema.String }) {}
class Declined extends Schema.TaggedError<Declined>()("Declined", { orderId: Schema.String }) {}

const on = (aggregateId: string, orderId: string, type = "OrderPlaced") =>
  new DomainEvent.Envelope({
    eventId: crypto.randomUUID(),
    type,
    aggregateType: "Order",
    aggregateId,
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: crypto.randomUUID(),
    causationId: crypto.randomUUID(),
    payload: { orderId }
  })

const took = <A>(queue: Queue.Queue<A>) =>
  Effect.map(Effect.timeoutOption(Queue.take(queue), "1 second"), Option.getOrUndefined)

describe("follow with sequencing: \"aggregate\" parks only events after a dead letter", () => {
  it.live("an event that runs again (its checkpoint was not saved) is not parked behind its own dead letter", () =>
    Effect.scoped(Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      let runs = 0
      const ship = Reaction.make(OrderPlaced, (event) => {
        runs++
        // A transient failure: the first run fails, later ones pass.
        return runs === 1 ? Effect.fail(new Declined({ orderId: event.orderId })) : Queue.offer(seen, event.orderId)
      }, { name: "ship" })
      // The checkpoint store is down for its first save, right after the failure was recorded.
      let saves = 0
      const checkpoints = Layer.effect(
        Reaction.Checkpoints,
        Effect.map(Effect.provide(Reaction.Checkpoints, Reaction.layerCheckpointsMemory), (memory) => ({
          ...memory,
          save: (name: string, position: number) =>
            ++saves === 1
              ? Effect.fail(new CommandError.StoreUnavailable({ store: "checkpoints", reason: "down" }))
              : memory.save(name, position)
        }))
      )
      const outbox = yield* Outbox.Outbox
      const event = on("A", "a-1")
      yield* outbox.append([event])
      yield* Reaction.follow("shipping", [ship], { retry: Schedule.recurs(0), sequencing: "aggregate" }).pipe(
        Effect.provide(checkpoints)
      )
      yield* Effect.sleep("100 millis")
      // Wake the follower: it reads the event again, the checkpoint not having moved.
      const publisher = yield* EventPublisher.EventPublisher
      yield* publisher.publish([on("Z", "z", "Unrelated")])
      const got = yield* took(seen)
      const letters = yield* Effect.flatMap(Reaction.DeadLetters, (store) => store.list("shipping"))
      assert.deepStrictEqual(letters.map((letter) => letter.reason.split(":")[0]), ["Declined"])
      assert.strictEqual(got, "a-1", "the event ran again")
    })).pipe(Effect.provide([InMemory.layer, Reaction.layerDeadLettersMemory])))

  it.live("after replay, an aggregate's events before its dead letter run again, not parked", () =>
    Effect.scoped(Effect.gen(function*() {
      const seen = yield* Queue.unbounded<string>()
      const failing = new Set(["a-2"])
      const ship = Reaction.make(
        OrderPlaced,
        (event) =>
          failing.has(event.orderId)
            ? Effect.fail(new Declined({ orderId: event.orderId }))
            : Queue.offer(seen, event.orderId),
        { name: "ship" }
      )
      const options = { retry: Schedule.recurs(0), sequencing: "aggregate" } as const
      const outbox = yield* Outbox.Outbox
      yield* outbox.append([on("A", "a-1"), on("A", "a-2")])
      const first = yield* Scope.make()
      yield* Reaction.follow("shipping", [ship], options).pipe(Scope.extend(first))
      assert.strictEqual(yield* took(seen), "a-1")
      yield* Effect.sleep("100 millis")
      yield* Scope.close(first, Exit.void)
      const deadLetters = yield* Reaction.DeadLetters
      assert.deepStrictEqual((yield* deadLetters.list("shipping")).map((letter) => letter.position), [2])

      // Rebuild from the start (README "Reacting to events": replay runs the reactions on the log from there).
      yield* Reaction.replay("shipping")
      yield* Reaction.follow("shipping", [ship], options)
      const got = yield* took(seen)
      const letters = yield* deadLetters.list("shipping")
      assert.deepStrictEqual(
        letters.map((letter) => [letter.position, letter.reason.split(":")[0]]),
        [[2, "Declined"]],
        "event 1 is earlier than the dead letter at position 2"
      )
      assert.strictEqual(got, "a-1")
    })).pipe(Effect.provide([InMemory.layer, Reaction.layerCheckpointsMemory, Reaction.layerDeadLettersMemory])))
})

describe("redrive with sequencing: \"aggregate\"", () => {
  it.effect("reads on past an aggregate held behind a letter that keeps failing: other aggregates' letters run", () =>
    Effect.gen(function*() {
      const deadLetters = yield* Reaction.DeadLetters
      // 120 letters of aggregate A (its first keeps failing), then one of B (fixed now).
      const stuck = Array.from({ length: 120 }, (_, i) => on("A", `a-${i + 1}`))
      for (const [i, event] of stuck.entries()) {
        yield* deadLetters.add({ follower: "mail", reaction: "notify", position: i + 1, event, reason: "down" })
      }
      yield* deadLetters.add({
        follower: "mail",
        reaction: "notify",
        position: 121,
        event: on("B", "b-1"),
        reason: "down"
      })
      const seen: Array<string> = []
      const notify = Reaction.make(OrderPlaced, (event) =>
        event.orderId.startsWith("a-")
          ? Effect.fail(new Declined({ orderId: event.orderId }))
          : Effect.sync(() => void seen.push(event.orderId)), { name: "notify" })
      const options = { retry: Schedule.recurs(0), sequencing: "aggregate", limit: 100 } as const
      const redriven = yield* Reaction.redrive("mail", [notify], options)
      assert.deepStrictEqual(seen, ["b-1"])
      assert.deepStrictEqual(redriven, { resolved: 1, failed: 1, unmatched: 0, held: 119 })
      assert.strictEqual((yield* deadLetters.list("mail", { limit: 1000 })).length, 120)
    }).pipe(Effect.provide(Reaction.layerDeadLettersMemory)))
})
