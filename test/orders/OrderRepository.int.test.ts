/**
 * The SQL order repository on a real database (PGlite, or the server in
 * `DATABASE_URL`): optimistic concurrency on its own, and a conflict between
 * a handler's read and its write retried by the full bus on fresh state.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import { randomUUID } from "node:crypto"
import { CommandError, CurrentUser, EventPublisher } from "../../src/index.js"
import { CancelOrder, CreateOrder } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import * as Order from "../../src/orders/Order.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import * as Persistence from "../../src/orders/Persistence.js"
import * as TestDatabase from "../support/Database.js"

const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const movedTo = { line1: "2 Side St", line2: "Flat 3", city: "Shelbyville", postalCode: "54321", country: "US" }
const alice: CurrentUser.Principal = { userId: "alice", roles: [] }

const newOrder = (now: DateTime.Utc, id: string = randomUUID()) =>
  Order.create({
    id,
    customerId,
    userId: "alice",
    items: [{ productId: "p-1", quantity: 2 }, { productId: "p-2", quantity: 1 }],
    shippingAddress,
    now
  }).order

/** The order as a concurrent writer saves it: moved to another address, one version on. */
const moved = (order: Order.Order, now: DateTime.Utc) =>
  new Order.Order({ ...order, shippingAddress: movedTo, version: order.version + 1, updatedAt: now })

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

const findOrder = (id: string) =>
  Effect.flatMap(OrderRepository.OrderRepository, (orders) => orders.findById(id)).pipe(Effect.map(Option.getOrThrow))

/**
 * Reads a handler made before a concurrent write: while `left` is positive,
 * a read of `order.id` returns `order` as it was, then the stored order.
 */
interface StaleReads {
  order: Order.Order | undefined
  left: number
  reads: number
}

const servingStaleReads = (stale: StaleReads) =>
  Layer.effect(
    OrderRepository.OrderRepository,
    Effect.map(OrderRepository.makeSql, (orders): OrderRepository.Service => ({
      ...orders,
      findById: (id) =>
        Effect.suspend(() => {
          stale.reads++
          if (stale.order?.id !== id || stale.left <= 0) return orders.findById(id)
          stale.left--
          return Effect.succeedSome(stale.order)
        })
    }))
  )

const Shared = OrderRepository.layerSql.pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `order repository (${TestDatabase.kind})`,
  (it) => {
    it.effect("stores an order and reads it back; a second insert of its id fails", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const orders = yield* OrderRepository.OrderRepository
        const order = newOrder(yield* DateTime.now)
        yield* orders.insert(order)
        expect(yield* findOrder(order.id)).toEqual(order)
        expect(yield* orders.findById(randomUUID())).toEqual(Option.none())

        const again = yield* Effect.flip(orders.insert(moved(order, yield* DateTime.now)))
        expect(again).toEqual(new Order.OrderAlreadyExists({ orderId: order.id }))
        expect(yield* findOrder(order.id)).toEqual(order)
      }))

    it.effect("refuses an update from a stale version with ConcurrencyConflict and changes nothing", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const orders = yield* OrderRepository.OrderRepository
        const order = newOrder(yield* DateTime.now)
        yield* orders.insert(order)
        const current = moved(order, yield* DateTime.now)
        yield* orders.update(current, 1)

        const cancelled = Order.cancel(order, "too late", yield* DateTime.now)
        assert(cancelled._tag === "Right")
        const conflict = yield* Effect.flip(orders.update(cancelled.right.order, 1))
        expect(conflict).toEqual(
          new CommandError.ConcurrencyConflict({ aggregateType: "Order", aggregateId: order.id, expectedVersion: 1 })
        )
        expect(yield* findOrder(order.id)).toEqual(current)

        // an update of an order that does not exist conflicts too
        const missing = newOrder(yield* DateTime.now)
        assert.instanceOf(yield* Effect.flip(orders.update(missing, 1)), CommandError.ConcurrencyConflict)
      }))

    it.effect("lets exactly one of 10 concurrent updates from the same version win", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const orders = yield* OrderRepository.OrderRepository
        const order = newOrder(yield* DateTime.now)
        yield* orders.insert(order)
        const now = yield* DateTime.now
        const attempts = Array.from(
          { length: 10 },
          (_, i) =>
            new Order.Order({ ...order, version: 2, updatedAt: now, status: "cancelled", cancelReason: `writer ${i}` })
        )
        const exits = yield* Effect.all(attempts.map((next) => Effect.exit(orders.update(next, 1))), {
          concurrency: "unbounded"
        })
        const won = exits.flatMap((exit, i) => Exit.isSuccess(exit) ? [i] : [])
        expect(won).toHaveLength(1)
        expect(exits.filter((exit) => failureOf(exit) instanceof CommandError.ConcurrencyConflict)).toHaveLength(9)
        expect(yield* findOrder(order.id)).toEqual(attempts[won[0]!])
      }))

    it.scoped("retries a conflict between the handler's read and its write, on fresh state", () => {
      const stale: StaleReads = { order: undefined, left: 0, reads: 0 }
      return Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const published = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        const bus = OrderBus.make()
        yield* Effect.flatMap(
          Inventory.Inventory,
          (inventory) => Effect.zipRight(inventory.setAvailable("p-1", 10), inventory.setAvailable("p-2", 10))
        )
        const create = new CreateOrder({
          customerId,
          items: [{ productId: "p-1", quantity: 2 }],
          shippingAddress,
          userId: "alice"
        })
        const { orderId } = yield* bus.dispatch(create).pipe(CurrentUser.as(alice))

        // the handler will read the order as it was before this concurrent write
        const before = yield* findOrder(orderId)
        yield* Effect.flatMap(
          OrderRepository.OrderRepository,
          (orders) => Effect.flatMap(DateTime.now, (now) => orders.update(moved(before, now), before.version))
        )
        stale.order = before
        stale.left = 1
        stale.reads = 0

        const result = yield* bus.dispatch(
          new CancelOrder({ orderId, reason: "changed my mind", userId: "alice" })
        ).pipe(CurrentUser.as(alice))

        expect(result).toEqual({ orderId, status: "cancelled", version: 3 })
        // one attempt on the stale read, one on fresh state
        expect(stale.reads).toBe(2)
        const stored = yield* findOrder(orderId)
        expect(stored.status).toBe("cancelled")
        expect(stored.version).toBe(3)
        // the concurrent write is kept, not overwritten by the stale read
        expect(stored.shippingAddress).toEqual(movedTo)
        expect(yield* Effect.flatMap(Inventory.Inventory, (inventory) => inventory.available("p-1"))).toBe(10)

        // one OrderCancelled event, at the version the retry saved
        const sql = yield* SqlClient.SqlClient
        const events = yield* sql<{ readonly event_type: string; readonly aggregate_version: number }>`
        SELECT event_type, aggregate_version FROM outbox ORDER BY id`.withoutTransform
        expect(events).toEqual([
          { event_type: "OrderCreated", aggregate_version: 1 },
          { event_type: "OrderCancelled", aggregate_version: 3 }
        ])
        const relayed = yield* Queue.takeN(published, 2).pipe(Effect.timeout("15 seconds"))
        expect(Chunk.toReadonlyArray(relayed).map((event) => [event.type, event.aggregateVersion])).toEqual([
          ["OrderCreated", 1],
          ["OrderCancelled", 3]
        ])
      }).pipe(
        Effect.provide(servingStaleReads(stale)),
        Effect.provide(Persistence.layerSql({ pollInterval: "100 millis" }))
      )
    })

    it.effect("fails with ConcurrencyConflict when every retry meets a conflict", () => {
      const stale: StaleReads = { order: undefined, left: 0, reads: 0 }
      return Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const orders = yield* OrderRepository.OrderRepository
        const order = newOrder(yield* DateTime.now)
        yield* orders.insert(order)
        const current = moved(order, yield* DateTime.now)
        yield* orders.update(current, 1)
        stale.order = order
        stale.left = Number.POSITIVE_INFINITY

        const exit = yield* Effect.exit(
          OrderBus.make().dispatch(new CancelOrder({ orderId: order.id, reason: "changed my mind", userId: "alice" }))
            .pipe(CurrentUser.as(alice), Effect.provide(servingStaleReads(stale)))
        )
        expect(failureOf(exit)).toEqual(
          new CommandError.ConcurrencyConflict({ aggregateType: "Order", aggregateId: order.id, expectedVersion: 1 })
        )
        // the first attempt and the default schedule's 4 retries
        expect(stale.reads).toBe(5)
        expect(yield* findOrder(order.id)).toEqual(current)
        expect(
          yield* Effect.flatMap(
            SqlClient.SqlClient,
            (sql) => sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM outbox`
          )
        ).toEqual([{ n: 0 }])
      }).pipe(Effect.provide(Persistence.layerSql(false)))
    })
  }
)
