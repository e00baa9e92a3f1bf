/**
 * The unit of work on a real database (PGlite, or the server in
 * `DATABASE_URL`): a dispatch that fails, dies, is refused at commit or times
 * out leaves nothing behind, and database outages are told from bugs.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import {
  Command,
  CommandBus,
  CommandError,
  CurrentUser,
  Handler,
  Idempotency,
  Middleware,
  UnitOfWork
} from "../../src/index.js"
import { CreateOrder } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import * as Order from "../../src/orders/Order.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import * as Persistence from "../../src/orders/Persistence.js"
import * as Database from "../../src/server/Database.js"
import { SqlFailure, SqlUnitOfWork } from "../../src/sql/index.js"
import * as PgliteClient from "../../src/sql/PgliteClient.js"
import * as TestDatabase from "../support/Database.js"

const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const alice: CurrentUser.Principal = { userId: "alice", roles: [] }

const count = (table: "orders" | "outbox" | "idempotency_keys") =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => Effect.map(sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, (rows) => rows[0]!.n)
  )

const stock = (productId: string) => Effect.flatMap(Inventory.Inventory, (inventory) => inventory.available(productId))
const restock = (productId: string, available: number) =>
  Effect.flatMap(Inventory.Inventory, (inventory) => inventory.setAvailable(productId, available))

/** Alice's order of 4 of p-1, with an idempotency key. */
const keyedOrder = (idempotencyKey: string) =>
  new CreateOrder({
    customerId,
    items: [{ productId: "p-1", quantity: 4 }],
    shippingAddress,
    userId: "alice",
    idempotencyKey
  })

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

const defectOf = <A, E>(exit: Exit.Exit<A, E>): unknown =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined

// -----------------------------------------------------------------------------
// a command that writes, then ends as the test asks
// -----------------------------------------------------------------------------

class Refused extends Schema.TaggedError<Refused>()("Refused", { stage: Schema.String }) {}

class PlaceOrderThen extends Command.Class<PlaceOrderThen>()("PlaceOrderThen", {
  payload: {
    productId: Schema.String,
    quantity: Schema.Int,
    then: Schema.Literal("commit", "fail", "die", "refuseAtCommit")
  },
  success: Schema.Struct({ orderId: Schema.UUID }),
  failure: Refused
}) {}

/** Reserves stock and stores an order, raising `OrderCreated`; then fails or dies if told to. */
const placeOrderThen = Handler.make(PlaceOrderThen, (command) =>
  Effect.gen(function*() {
    const { events, order } = Order.create({
      id: command.commandId,
      customerId,
      userId: "alice",
      items: [{ productId: command.productId, quantity: command.quantity }],
      shippingAddress,
      now: yield* DateTime.now
    })
    yield* Effect.flatMap(Inventory.Inventory, (inventory) => inventory.reserve(order.items)).pipe(Effect.orDie)
    yield* Effect.flatMap(OrderRepository.OrderRepository, (orders) => orders.insert(order)).pipe(Effect.orDie)
    if (command.then === "fail") return yield* new Refused({ stage: "handler" })
    if (command.then === "die") return yield* Effect.dieMessage("the handler crashed after writing")
    return Handler.result({ orderId: order.id }, events)
  }))

/** What the refusing before-commit hook saw inside the transaction. */
const seenAtCommit: Array<{ readonly orders: number; readonly outbox: number }> = []

/** Refuses `refuseAtCommit` commands after their events were appended, before commit. */
const refuseAtCommit = Middleware.make<Refused, SqlClient.SqlClient>(
  "refuseAtCommit",
  (self, dispatch) =>
    (dispatch.command as PlaceOrderThen).then !== "refuseAtCommit"
      ? self
      : Effect.flatMap(SqlClient.SqlClient, (sql) => {
        dispatch.beforeCommit.push(() =>
          Effect.all({ orders: count("orders"), outbox: count("outbox") }).pipe(
            Effect.provideService(SqlClient.SqlClient, sql),
            Effect.tap((seen) => Effect.sync(() => seenAtCommit.push(seen))),
            Effect.zipRight(Effect.fail(new Refused({ stage: "before commit" })))
          )
        )
        return self
      })
)

const testBus = CommandBus.make([PlaceOrderThen], { PlaceOrderThen: placeOrderThen }).pipe(
  CommandBus.withMiddleware(refuseAtCommit, Middleware.transaction)
)

/** An order repository whose insert writes, then hangs for 10 seconds. */
const slowAfterInsert = Layer.effect(
  OrderRepository.OrderRepository,
  Effect.map(OrderRepository.makeSql, (orders): OrderRepository.Service => ({
    ...orders,
    // Never done: a dispatch that ends at all was ended by its deadline.
    insert: (order) => orders.insert(order).pipe(Effect.zipRight(Effect.never))
  }))
)

/** A pool pointed at a port nothing listens on. */
const unreachableDatabase = Database.serverLayer({
  url: Redacted.make("postgres://postgres@127.0.0.1:1/postgres"),
  schema: Option.none(),
  poolSize: 2,
  connectTimeout: Duration.seconds(2),
  statementTimeout: Duration.seconds(5)
})

const Shared = Persistence.layerSql(false).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`unit of work (${TestDatabase.kind})`, (it) => {
  it.effect("commits the writes and the event of a dispatch that succeeds", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      yield* testBus.dispatch(new PlaceOrderThen({ productId: "p-1", quantity: 3, then: "commit" }))
      expect(yield* stock("p-1")).toBe(7)
      expect(yield* count("orders")).toBe(1)
      expect(yield* count("outbox")).toBe(1)
    }))

  it.effect("rolls back the writes of a handler that fails after writing", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const exit = yield* Effect.exit(
        testBus.dispatch(new PlaceOrderThen({ productId: "p-1", quantity: 3, then: "fail" }))
      )
      expect(failureOf(exit)).toEqual(new Refused({ stage: "handler" }))
      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
    }))

  it.effect("rolls back the writes of a handler that dies after writing", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const exit = yield* Effect.exit(
        testBus.dispatch(new PlaceOrderThen({ productId: "p-1", quantity: 3, then: "die" }))
      )
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
    }))

  it.effect("rolls back the writes and the appended event when a before-commit hook fails", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      seenAtCommit.length = 0
      const exit = yield* Effect.exit(
        testBus.dispatch(new PlaceOrderThen({ productId: "p-1", quantity: 3, then: "refuseAtCommit" }))
      )
      expect(failureOf(exit)).toEqual(new Refused({ stage: "before commit" }))
      // the order and its event were written in the transaction...
      expect(seenAtCommit).toEqual([{ orders: 1, outbox: 1 }])
      // ...and are gone with it
      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
    }))

  it.effect("leaves no reservation of an order whose second line is short of stock", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 5)
      yield* restock("p-2", 1)
      const command = new CreateOrder({
        customerId,
        items: [{ productId: "p-1", quantity: 2 }, { productId: "p-2", quantity: 3 }],
        shippingAddress,
        userId: "alice"
      })
      const exit = yield* Effect.exit(OrderBus.make().dispatch(command).pipe(CurrentUser.as(alice)))
      const refused = failureOf(exit)
      assert.instanceOf(refused, Inventory.InsufficientInventory)
      expect(refused).toMatchObject({ productId: "p-2", requested: 3, available: 1 })
      expect(yield* stock("p-1")).toBe(5)
      expect(yield* stock("p-2")).toBe(1)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
    }))

  it.effect("times out a handler that writes then hangs, and rolls its transaction back", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const bus = OrderBus.make({ timeout: "300 millis" })
      const command = keyedOrder("k-timeout")
      const exit = yield* bus.dispatch(command).pipe(
        CurrentUser.as(alice),
        Effect.provide(slowAfterInsert),
        Effect.exit
      )
      expect(failureOf(exit)).toEqual(
        new CommandError.CommandTimeout({ commandType: "CreateOrder", timeoutMillis: 300 })
      )

      // nothing it wrote is visible, and its idempotency claim was released
      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
      expect(yield* count("idempotency_keys")).toBe(0)

      // so the client's retry runs
      const retried = yield* Idempotency.observeReplay(bus.dispatch(command).pipe(CurrentUser.as(alice)))
      expect(Exit.isSuccess(retried.exit)).toBe(true)
      expect(retried.replayed).toBe(false)
      expect(yield* stock("p-1")).toBe(6)
      expect(yield* count("orders")).toBe(1)
    }))

  it.effect("reports a dispatch whose deadline passes during its COMMIT as done, since it committed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      // The commit of an order takes a second: a deferred trigger sleeps in it.
      yield* sql.unsafe(
        "CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$"
      )
      yield* sql.unsafe(
        "CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED" +
          " FOR EACH ROW EXECUTE FUNCTION test_slow_commit()"
      )
      const bus = OrderBus.make({ timeout: "300 millis" })
      const command = keyedOrder("k-slow-commit")
      const first = yield* Idempotency.observeReplay(bus.dispatch(command).pipe(CurrentUser.as(alice)), command)
      // Not a CommandTimeout: the caller would retry work that is done.
      expect(first).toMatchObject({ exit: { _tag: "Success", value: { status: "created" } }, replayed: false })
      expect(yield* stock("p-1")).toBe(6)
      expect(yield* count("orders")).toBe(1)
      expect(yield* count("outbox")).toBe(1)
      // Its idempotency record committed with it: a retry replays.
      const retried = yield* Idempotency.observeReplay(bus.dispatch(command).pipe(CurrentUser.as(alice)), command)
      expect(retried).toEqual({ exit: first.exit, replayed: true })
      expect(yield* count("orders")).toBe(1)
    }).pipe(
      Effect.ensuring(
        Effect.flatMap(
          SqlClient.SqlClient,
          (sql) =>
            sql.unsafe("DROP TRIGGER IF EXISTS test_slow_commit ON orders; DROP FUNCTION IF EXISTS test_slow_commit()")
        )
          .pipe(Effect.orDie)
      )
    ))

  it.effect("reports an unreachable database as StoreUnavailable, not as a defect", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const error = yield* Effect.flip(sql`SELECT 1`)
      assert.instanceOf(error, SqlError)
      expect(SqlFailure.isUnavailable(error)).toBe(true)

      const unitOfWork = yield* SqlUnitOfWork.make
      const exit = yield* Effect.exit(unitOfWork.transactional(sql`SELECT 1`))
      assert.instanceOf(failureOf(exit), CommandError.StoreUnavailable)
      // A store's StoreUnavailable that a handler died on is the same outage.
      const classified = new CommandError.StoreUnavailable({ store: "scheduled commands", reason: "gone" })
      expect(SqlFailure.isUnavailable(classified)).toBe(true)
      expect(failureOf(yield* Effect.exit(SqlFailure.classify(Effect.die(classified))))).toBe(classified)

      // through the whole bus, with and without an idempotency key
      const bus = OrderBus.make()
      const command = (idempotencyKey?: string) =>
        new CreateOrder({
          customerId,
          items: [{ productId: "p-1", quantity: 1 }],
          shippingAddress,
          userId: "alice",
          ...(idempotencyKey === undefined ? {} : { idempotencyKey })
        })
      for (const dispatched of [command(), command("k-outage")]) {
        const outcome = yield* Effect.exit(bus.dispatch(dispatched).pipe(CurrentUser.as(alice)))
        assert.instanceOf(failureOf(outcome), CommandError.StoreUnavailable)
      }
    }).pipe(Effect.provide(Persistence.layerSql(false)), Effect.provide(unreachableDatabase)))

  it.effect("reports a statement error that is not an outage as a defect", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const unitOfWork = yield* SqlUnitOfWork.make
      const exit = yield* Effect.exit(unitOfWork.transactional(sql`SELECT * FROM no_such_table`))
      const defect = defectOf(exit)
      assert.instanceOf(defect, SqlError)
      expect(SqlFailure.sqlState(defect)).toBe("42P01")
      expect(SqlFailure.isUnavailable(defect)).toBe(false)
    }))

  it.effect.skipIf(TestDatabase.serverUrl === undefined)(
    "reports a connection the server terminates mid-transaction as StoreUnavailable (server only: PGlite has one session)",
    () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const unitOfWork = yield* SqlUnitOfWork.make
        const exit = yield* Effect.exit(
          unitOfWork.transactional(sql`SELECT pg_terminate_backend(pg_backend_pid())`)
        )
        assert.instanceOf(failureOf(exit), CommandError.StoreUnavailable)
        // the pool replaces the connection
        expect(yield* sql<{ readonly ok: number }>`SELECT 1 AS ok`).toEqual([{ ok: 1 }])
      })
  )

  // A closed database, embedded ("the database is closed") or a closed `pg`
  // pool ("Cannot use a pool after calling end"), is StoreUnavailable.
  it.effect(
    "reports a database that was closed as StoreUnavailable",
    () =>
      Effect.gen(function*() {
        const closed = TestDatabase.serverUrl === undefined
          ? PgliteClient.layer({ dataDir: "memory://" })
          : Database.serverLayer({
            url: Redacted.make(TestDatabase.serverUrl),
            schema: Option.none(),
            poolSize: 1,
            connectTimeout: Duration.seconds(5),
            statementTimeout: Duration.seconds(5)
          })
        const sql = yield* Effect.scoped(
          Effect.flatMap(Layer.build(closed), (context) =>
            Effect.provide(
              Effect.flatMap(SqlClient.SqlClient, (sql) => Effect.as(sql`SELECT 1`, sql)),
              context
            ))
        )
        const unitOfWork = yield* SqlUnitOfWork.make.pipe(Effect.provideService(SqlClient.SqlClient, sql))
        const exit = yield* Effect.exit(unitOfWork.transactional(sql`SELECT 1`))
        assert.instanceOf(failureOf(exit), CommandError.StoreUnavailable)
      })
  )

  // Its connection went back to the pool, where it may be in another's
  // transaction: joining it would write there, or fail (25P01, or PGlite's
  // "used after its transaction ended").
  it.effect("a transaction begun by a fiber forked in one that has ended is one of its own", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const ended = yield* Deferred.make<void>()
      const forked = yield* unitOfWork.transactional(Effect.gen(function*() {
        yield* restock("p-1", 1)
        return yield* Effect.forkDaemon(
          Effect.zipRight(Deferred.await(ended), unitOfWork.transactional(restock("p-2", 5)))
        )
      }))
      yield* Deferred.succeed(ended, undefined)
      const exit = yield* Fiber.await(forked)
      assert.isTrue(Exit.isSuccess(exit), String(exit))
      expect(yield* stock("p-1")).toBe(1)
      expect(yield* stock("p-2")).toBe(5)
    }))

  // Begun while the outer was open, it wrote after the outer had ended: on a
  // pool, into the transaction the connection served next (another
  // request's, which committed it as its own).
  it.effect("a savepoint a forked fiber began in a transaction fails once that transaction's work is done", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const started = yield* Deferred.make<void>()
      const ended = yield* Deferred.make<void>()
      const forked = yield* unitOfWork.transactional(Effect.gen(function*() {
        yield* restock("p-1", 1)
        const fiber = yield* Effect.forkDaemon(unitOfWork.transactional(Effect.gen(function*() {
          yield* Deferred.succeed(started, undefined)
          yield* Deferred.await(ended)
          yield* restock("p-2", 5)
        })))
        yield* Deferred.await(started)
        return fiber
      }))
      const otherIn = yield* Deferred.make<void>()
      const forkedDone = yield* Deferred.make<void>()
      const other = yield* Effect.fork(unitOfWork.transactional(Effect.gen(function*() {
        yield* restock("p-3", 7)
        yield* Deferred.succeed(otherIn, undefined)
        yield* Deferred.await(forkedDone)
      })))
      yield* Deferred.await(otherIn)
      yield* Deferred.succeed(ended, undefined)
      const exit = yield* Fiber.await(forked)
      yield* Deferred.succeed(forkedDone, undefined)
      yield* Fiber.join(other)
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(exit))
      expect(yield* stock("p-1")).toBe(1)
      expect(yield* stock("p-2")).toBe(0)
      expect(yield* stock("p-3")).toBe(7)
    }))
})
