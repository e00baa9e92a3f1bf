/**
 * The order service's stores on a real database (PGlite, or the server in
 * `DATABASE_URL`), through the full bus: stock under concurrent orders, the
 * outbox and relay behind them, and orders kept across a restart.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import { CurrentUser, EventPublisher, Outbox, UnitOfWork } from "../../src/index.js"
import { CancelOrder, CreateOrder } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import * as Order from "../../src/orders/Order.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import * as Persistence from "../../src/orders/Persistence.js"
import * as Database from "../../src/server/Database.js"
import { Specification } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const alice: CurrentUser.Principal = { userId: "alice", roles: [] }

const createOrder = (productId: string, quantity: number) =>
  new CreateOrder({ customerId, items: [{ productId, quantity }], shippingAddress, userId: "alice" })

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

const stockOf = (productId: string) =>
  Effect.flatMap(Inventory.Inventory, (inventory) => inventory.available(productId))

const setStock = (productId: string, available: number) =>
  Effect.flatMap(Inventory.Inventory, (inventory) => inventory.setAvailable(productId, available))

const count = (table: "orders" | "outbox") =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => Effect.map(sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, (rows) => rows[0]!.n)
  )

const Shared = TestDatabase.layer().pipe(Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error)))

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(
  `order persistence (${TestDatabase.kind})`,
  (it) => {
    it.effect("ids in any case: the SQL stores and the in-memory ones agree, in lowercase", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const orderId = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"
        const scenario = Effect.gen(function*() {
          const bus = OrderBus.make()
          yield* setStock("p-case", 5)
          const created = yield* bus.dispatch(
            new CreateOrder({
              commandId: orderId,
              customerId: customerId.toUpperCase(),
              items: [{ productId: "p-case", quantity: 2 }],
              shippingAddress,
              userId: "alice"
            })
          )
          const orders = yield* OrderRepository.OrderRepository
          const found = Option.getOrThrow(yield* orders.findById(orderId))
          const cancelled = yield* bus.dispatch(
            new CancelOrder({ orderId, reason: "changed my mind", userId: "alice" })
          )
          const again = yield* Effect.flip(
            bus.dispatch(new CancelOrder({ orderId: orderId.toLowerCase(), reason: "twice", userId: "alice" }))
          )
          return {
            created,
            found: [found.id, found.customerId],
            cancelled,
            again: again._tag,
            stock: yield* stockOf("p-case")
          }
        }).pipe(CurrentUser.as(alice))
        const onSql = yield* scenario.pipe(Effect.provide(Persistence.layerSql(false)))
        const inMemory = yield* scenario.pipe(Effect.provide(Persistence.layerMemory()))
        expect(onSql).toEqual(inMemory)
        expect(onSql).toEqual({
          created: { orderId: orderId.toLowerCase(), status: "created", version: 1 },
          found: [orderId.toLowerCase(), customerId],
          cancelled: { orderId: orderId.toLowerCase(), status: "cancelled", version: 2 },
          again: "OrderAlreadyCancelled",
          stock: 5
        })
      }))

    it.effect("a specification over the SQL stores sees the events its command committed, not yet published", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        // The database only: the test's whole context would bring its CurrentUser along.
        const database = Layer.succeedContext(
          Context.pick(SqlClient.SqlClient, PgClient.PgClient)(
            yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
          )
        )
        const spec = Specification.make({
          bus: OrderBus.make(),
          // No relay: nothing is published, the events are only committed.
          layer: Persistence.layerSql(false).pipe(Layer.provideMerge(database))
        })
        const items = [{ productId: "p-spec", quantity: 2 }]
        const command = createOrder("p-spec", 2)
        const stock = (available: number) => setStock("p-spec", available)
        yield* spec.given(stock(3)).when(command)
          .thenSucceeds(
            { orderId: command.commandId, status: "created", version: 1 },
            new Order.OrderCreated({ orderId: command.commandId, customerId, userId: "alice", items, shippingAddress })
          ).pipe(CurrentUser.as(alice))
        const refused = spec.given(stock(1)).when(createOrder("p-spec", 5)).thenFails(
          new Inventory.InsufficientInventory({ productId: "p-spec", requested: 5, available: 1 })
        )
        yield* refused.pipe(CurrentUser.as(alice))
        // And a wrong expectation is reported, not passed.
        const wrong = yield* Effect.flip(
          spec.given(stock(1)).when(createOrder("p-spec", 1)).then().pipe(CurrentUser.as(alice))
        )
        expect(wrong.message).toContain("OrderCreated")
      }))

    it.scoped("commits exactly 10 of 50 concurrent orders against a stock of 10, and relays their 10 events", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const published = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        yield* setStock("p-1", 10)
        const bus = OrderBus.make()
        const commands = Array.from({ length: 50 }, () => createOrder("p-1", 1))

        const exits = yield* Effect.all(
          commands.map((command) => Effect.exit(bus.dispatch(command).pipe(CurrentUser.as(alice)))),
          { concurrency: "unbounded" }
        )

        const committed = exits.flatMap((exit) => Exit.isSuccess(exit) ? [exit.value.orderId] : [])
        expect(committed).toHaveLength(10)
        const refused = exits.filter((exit) => failureOf(exit) instanceof Inventory.InsufficientInventory)
        expect(refused).toHaveLength(40)
        expect(yield* stockOf("p-1")).toBe(0)
        expect(yield* count("orders")).toBe(10)
        const sql = yield* SqlClient.SqlClient
        const rows = yield* sql<{ readonly event_type: string; readonly aggregate_id: string }>`
        SELECT event_type, aggregate_id FROM outbox`.withoutTransform
        expect(rows.map((row) => row.event_type)).toEqual(Array.from({ length: 10 }, () => "OrderCreated"))
        expect(new Set(rows.map((row) => row.aggregate_id))).toEqual(new Set(committed))

        // the relay publishes the 10 events, once each
        const relayed = Chunk.toReadonlyArray(yield* Queue.takeN(published, 10).pipe(Effect.timeout("15 seconds")))
        expect(new Set(relayed.map((event) => event.aggregateId))).toEqual(new Set(committed))
        yield* Effect.sleep("300 millis")
        expect(yield* Queue.size(published)).toBe(0)

        const stored = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 100 }))
        expect(stored.map((event) => event.position)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1))
        expect(stored.map((event) => event.event.eventId)).toEqual(relayed.map((event) => event.eventId))
      }).pipe(Effect.provide(Persistence.layerSql({ pollInterval: "100 millis" }))))

    it.effect("Outbox.read refuses the same bad options in memory as in SQL, and reads nothing for them", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const scenario = Effect.gen(function*() {
          const bus = OrderBus.make()
          yield* setStock("p-read", 5)
          for (let i = 0; i < 3; i++) yield* bus.dispatch(createOrder("p-read", 1)).pipe(CurrentUser.as(alice))
          const outbox = yield* Outbox.Outbox
          // On SQL the relay gives committed events their positions.
          yield* outbox.read({ after: 0, limit: 10 }).pipe(
            Effect.filterOrFail((read) => read.length === 3),
            Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 250 })
          )
          const answers: Array<string> = []
          for (
            const options of [
              { after: 0, limit: -1 },
              { after: 0, limit: 0 },
              { after: 0, limit: 1.5 },
              { after: 2.5, limit: 1 },
              { after: -1, limit: 1 },
              { after: 0, limit: Number.NaN }
            ]
          ) {
            const exit = yield* Effect.exit(outbox.read(options))
            answers.push(Exit.isFailure(exit) ? Cause.pretty(exit.cause).split("\n")[0]! : "read")
          }
          const read = yield* outbox.read({ after: 1, limit: 1 })
          return { answers, positions: read.map((event) => event.position) }
        })
        const inMemory = yield* scenario.pipe(Effect.provide(Persistence.layerMemory()))
        const inSql = yield* scenario.pipe(Effect.provide(Persistence.layerSql({ pollInterval: "20 millis" })))
        expect(inMemory).toEqual(inSql)
        expect(inSql.positions).toEqual([2])
        expect(inSql.answers).toEqual([
          "RuntimeException: Outbox.read: limit must be a positive integer, got -1",
          "RuntimeException: Outbox.read: limit must be a positive integer, got 0",
          "RuntimeException: Outbox.read: limit must be a positive integer, got 1.5",
          "RuntimeException: Outbox.read: after must be a non-negative integer, got 2.5",
          "RuntimeException: Outbox.read: after must be a non-negative integer, got -1",
          "RuntimeException: Outbox.read: limit must be a positive integer, got NaN"
        ])
      }))

    it.effect("gives a cancelled order's stock back up to the most stock can hold, in memory as in SQL", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const bus = OrderBus.make()
        const stock = stockOf("p-max")
        yield* setStock("p-max", 1000)
        const { orderId } = yield* bus.dispatch(createOrder("p-max", 1000)).pipe(CurrentUser.as(alice))
        // Restocked to the most it can hold while the order holds 1000: giving
        // those back would overflow the column (an error, and an order that
        // could not be cancelled), so it saturates.
        yield* setStock("p-max", Inventory.maxAvailable)
        const cancel = new CancelOrder({ orderId, reason: "too many", userId: "alice" })
        yield* bus.dispatch(cancel).pipe(CurrentUser.as(alice))
        expect(yield* stock).toBe(Inventory.maxAvailable)

        const memory = yield* Inventory.makeMemory([["p-max", Inventory.maxAvailable - 1]])
        yield* memory.release([{ productId: "p-max", quantity: 5 }])
        expect(yield* memory.available("p-max")).toBe(Inventory.maxAvailable)
      }).pipe(Effect.provide(Persistence.layerSql(false))))

    // On the server the order's insert goes out with the transaction's
    // COMMIT, so the taken id is found at the commit, not at the insert.
    it.effect("a redelivered CreateOrder fails with OrderAlreadyExists, and none of its writes commit", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const bus = OrderBus.make()
        const stock = stockOf("p-again")
        yield* setStock("p-again", 10)
        const command = createOrder("p-again", 3)
        yield* bus.dispatch(command).pipe(CurrentUser.as(alice))
        // Another key, so the idempotency store does not answer for it: the handler runs again.
        const redelivered = new CreateOrder({ ...command, idempotencyKey: "k-again" })
        const exit = yield* Effect.exit(bus.dispatch(redelivered).pipe(CurrentUser.as(alice)))
        expect(failureOf(exit)).toEqual(new Order.OrderAlreadyExists({ orderId: command.commandId }))
        expect([yield* stock, yield* count("orders"), yield* count("outbox")]).toEqual([7, 1, 1])
        // The failure is the command's own outcome: recorded, and replayed.
        const replayed = yield* Effect.exit(bus.dispatch(redelivered).pipe(CurrentUser.as(alice)))
        expect(failureOf(replayed)).toEqual(new Order.OrderAlreadyExists({ orderId: command.commandId }))
        expect(yield* stock).toBe(7)
      }).pipe(Effect.provide(Persistence.layerSql(false))))

    // Held on the server, the insert is sent ahead of the read, and fails there.
    it.effect("an insert of a taken id, read back in the same transaction: OrderAlreadyExists", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const bus = OrderBus.make()
        yield* setStock("p-read-back", 10)
        const command = createOrder("p-read-back", 1)
        yield* bus.dispatch(command).pipe(CurrentUser.as(alice))
        const orders = yield* OrderRepository.OrderRepository
        const { order } = Order.create({
          id: command.commandId,
          customerId,
          userId: "alice",
          items: command.items,
          shippingAddress,
          now: yield* DateTime.now
        })
        const unitOfWork = yield* UnitOfWork.UnitOfWork
        const exit = yield* Effect.exit(unitOfWork.transactional(Effect.gen(function*() {
          yield* Effect.flatMap(Inventory.Inventory, (inventory) => inventory.reserve(order.items))
          yield* orders.insert(order)
          return yield* orders.findById(order.id)
        })))
        expect(failureOf(exit)).toEqual(new Order.OrderAlreadyExists({ orderId: command.commandId }))
        expect(yield* stockOf("p-read-back")).toBe(9)
      }).pipe(Effect.provide(Persistence.layerSql(false))))

    // Server only (PGlite runs one transaction at a time): reservations lock
    // inventory rows in product order, so orders and cancellations sharing
    // products never deadlock (40P01).
    const onServer = TestDatabase.serverUrl === undefined ? it.effect.skip : it.effect
    onServer(
      "never deadlocks on concurrent orders and cancellations over the same products",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          const products = ["p-a", "p-b", "p-c", "p-d"]
          yield* Effect.flatMap(
            Inventory.Inventory,
            (inventory) => Effect.forEach(products, (productId) => inventory.setAvailable(productId, 100_000))
          )
          const bus = OrderBus.make({ timeout: "3 seconds" })
          const outcomeOf = (exit: Exit.Exit<unknown, unknown>) => {
            if (Exit.isSuccess(exit)) return "success"
            const error: unknown = failureOf(exit) ?? Option.getOrUndefined(Cause.dieOption(exit.cause))
            return error instanceof Error
              ? `${error.name}: ${error.message} ${String(error.cause ?? "")}`
              : "interrupted"
          }
          // an order of 2 to 4 products in a rotating order, cancelled every other time
          const placeAndMaybeCancel = (i: number) =>
            bus.dispatch(
              new CreateOrder({
                customerId,
                items: [...products.slice(i % 4), ...products.slice(0, i % 4)].slice(0, 2 + (i % 3)).map((
                  productId
                ) => ({
                  productId,
                  quantity: 1
                })),
                shippingAddress,
                userId: "alice"
              })
            ).pipe(
              Effect.flatMap(({ orderId }) =>
                i % 2 === 0
                  ? bus.dispatch(new CancelOrder({ orderId, reason: "changed my mind", userId: "alice" }))
                  : Effect.void
              ),
              CurrentUser.as(alice),
              Effect.exit,
              Effect.map(outcomeOf)
            )
          for (let round = 0; round < 3; round++) {
            const outcomes = yield* Effect.all(Array.from({ length: 20 }, (_, i) => placeAndMaybeCancel(i)), {
              concurrency: "unbounded"
            })
            expect(outcomes.filter((outcome) => outcome !== "success")).toEqual([])
          }
        }).pipe(Effect.provide(Persistence.layerSql(false)))
    )

    // Server only, as above. A reservation checks the stock of the row it
    // writes: checked against the locking CTE's copy instead, a give-back
    // committing meanwhile let it past the check and into the CHECK
    // constraint (a defect, a 500), where the stock short is a refusal.
    onServer(
      "reservations racing with give-backs of the same product are refused, never a defect",
      () =>
        Effect.gen(function*() {
          yield* TestDatabase.truncateAll
          const inventory = yield* Inventory.Inventory
          const unitOfWork = yield* UnitOfWork.UnitOfWork
          yield* inventory.setAvailable("p-race", 50)
          const lines = [{ productId: "p-race", quantity: 2 }]
          const outcomes = yield* Effect.forEach(
            Array.from({ length: 200 }, (_, i) => i),
            (i) =>
              Effect.exit(unitOfWork.transactional(inventory.reserve(lines))).pipe(
                Effect.tap((exit) =>
                  Exit.isSuccess(exit) && i % 3 === 0 ? unitOfWork.transactional(inventory.release(lines)) : Effect.void
                ),
                Effect.map((exit) =>
                  Exit.isSuccess(exit) ? "reserved" : failureOf(exit)?._tag ?? Cause.pretty(exit.cause)
                )
              ),
            { concurrency: 20 }
          )
          expect(outcomes.filter((outcome) => outcome !== "reserved" && outcome !== "InsufficientInventory"))
            .toEqual([])
          const reserved = outcomes.filter((outcome) => outcome === "reserved").length
          const givenBack = outcomes.filter((outcome, i) => outcome === "reserved" && i % 3 === 0).length
          expect(yield* inventory.available("p-race")).toBe(50 - 2 * (reserved - givenBack))
        }).pipe(Effect.provide(Persistence.layerSql(false)))
    )

    it.scoped("keeps every committed order, its stock and its events across a restart of the database", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        // Embedded: a database of its own in a folder, closed and opened again.
        // On a server: this file's schema, through a new pool each time.
        const dataDir = yield* TestDatabase.tempDir("ecb-restart")
        const schema = (yield* Effect.flatMap(
          SqlClient.SqlClient,
          (sql) => sql<{ readonly schema: string }>`SELECT current_schema() AS schema`
        ))[0]!.schema
        const database = TestDatabase.serverUrl === undefined
          ? TestDatabase.layer({ dataDir })
          : Database.serverLayer({
            url: Redacted.make(TestDatabase.serverUrl),
            schema: Option.some(schema),
            poolSize: 2,
            connectTimeout: Duration.seconds(5),
            statementTimeout: Duration.seconds(30)
          })
        const session = <A, E>(
          self: Effect.Effect<A, E, Persistence.Stores | SqlClient.SqlClient>
        ): Effect.Effect<A, unknown> =>
          self.pipe(Effect.provide(Persistence.layerSql(false).pipe(Layer.provideMerge(database))))

        const bus = OrderBus.make()
        const placed = yield* session(Effect.gen(function*() {
          yield* setStock("p-1", 6)
          const results = yield* Effect.forEach(
            [1, 2, 3],
            (quantity) => bus.dispatch(createOrder("p-1", quantity)).pipe(CurrentUser.as(alice))
          )
          // committed, then refused: only the committed ones may come back
          const refused = yield* Effect.flip(bus.dispatch(createOrder("p-1", 1)).pipe(CurrentUser.as(alice)))
          assert.instanceOf(refused, Inventory.InsufficientInventory)
          return results.map((result) => result.orderId)
        }))

        const reopened = yield* session(Effect.gen(function*() {
          const orders = yield* OrderRepository.OrderRepository
          const found = yield* Effect.forEach(placed, (id) => Effect.map(orders.findById(id), Option.getOrThrow))
          return {
            orders: found.map((order) => [order.id, order.status, order.version, order.items]),
            total: yield* count("orders"),
            stock: yield* stockOf("p-1"),
            events: yield* count("outbox")
          }
        }))
        expect(reopened).toEqual({
          orders: placed.map((id, i) => [id, "created", 1, [{ productId: "p-1", quantity: i + 1 }]]),
          total: 3,
          stock: 0,
          events: 3
        })
      }))
  }
)
