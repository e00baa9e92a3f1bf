/**
 * Idempotency keys on a real database (PGlite, or the server in
 * `DATABASE_URL`), through the order service's full bus: concurrent
 * duplicates, replays, payload mismatches, crashed dispatches and pruning.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { CurrentUser, EventPublisher, Idempotency, UnitOfWork } from "../../src/index.js"
import { CreateOrder } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import type { OrderLine } from "../../src/orders/Order.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const alice: CurrentUser.Principal = { userId: "alice", roles: [] }
const bob: CurrentUser.Principal = { userId: "bob", roles: [] }

const createOrder = (
  items: ReadonlyArray<OrderLine>,
  fields: { readonly idempotencyKey?: string; readonly userId?: string } = {}
) => new CreateOrder({ customerId, items, shippingAddress, userId: "alice", ...fields })

const bus = OrderBus.make()

/** Dispatches as the command's user, telling whether the outcome was a replay. */
const dispatch = (command: CreateOrder, orders: OrderBus.OrderBus = bus) =>
  Idempotency.observeReplay(
    orders.dispatch(command).pipe(CurrentUser.as(command.userId === "bob" ? bob : alice))
  )

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

const count = (table: "orders" | "outbox" | "idempotency_keys") =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => Effect.map(sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`, (rows) => rows[0]!.n)
  )

interface KeyRow {
  readonly scope: string
  readonly key: string
  readonly state: string
  readonly result: unknown
}

const keyRows = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql<KeyRow>`SELECT scope, key, state, result FROM idempotency_keys ORDER BY scope, key`.withoutTransform
)

const stock = (productId: string) => Effect.flatMap(Inventory.Inventory, (inventory) => inventory.available(productId))
const restock = (productId: string, available: number) =>
  Effect.flatMap(Inventory.Inventory, (inventory) => inventory.setAvailable(productId, available))

/** An inventory whose reservation takes the stock, says so, then hangs: a dispatch stuck in its transaction. */
const hangingAfterReserve = (reserved: Deferred.Deferred<void>) =>
  Layer.effect(
    Inventory.Inventory,
    Effect.map(Inventory.makeSql, (inventory): Inventory.Service => ({
      ...inventory,
      reserve: (lines) =>
        inventory.reserve(lines).pipe(
          Effect.zipRight(Deferred.succeed(reserved, undefined)),
          Effect.zipRight(Effect.never)
        )
    }))
  )

/** An order repository whose insert writes, says so, then takes 2 seconds: a dispatch slower than its lease. */
const slowInsert = (inserted: Deferred.Deferred<void>) =>
  Layer.effect(
    OrderRepository.OrderRepository,
    Effect.map(OrderRepository.makeSql, (orders): OrderRepository.Service => ({
      ...orders,
      insert: (order) =>
        orders.insert(order).pipe(
          Effect.zipRight(Deferred.succeed(inserted, undefined)),
          Effect.zipRight(Effect.sleep("2 seconds"))
        )
    }))
  )

/** A claim of `key` for alice, held for `lease`, kept an hour. */
const claimRequest = (key: string, lease: Duration.Duration) => ({
  scope: "alice",
  key,
  fingerprint: "f",
  commandType: "CreateOrder",
  lease,
  retention: Duration.hours(1)
})

/** The SQL store of a process that dies before it can release its claims. */
const neverReleasing = Layer.effect(
  Idempotency.IdempotencyStore,
  Effect.map(SqlIdempotencyStore.make, (store): Idempotency.Store => ({ ...store, release: () => Effect.void }))
)

// The stores of `Persistence.layerSql`, with the SQL idempotency store but
// without its background pruning, so `prune` counts only what a test expired.
const Stores = Layer.mergeAll(
  OrderRepository.layerSql,
  Inventory.layerSql,
  SqlOutbox.layer,
  SqlUnitOfWork.layer,
  Layer.effect(Idempotency.IdempotencyStore, SqlIdempotencyStore.make)
).pipe(Layer.provideMerge(EventPublisher.layerMemory))

const Shared = Stores.pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

layer(Shared, { excludeTestServices: true, timeout: "120 seconds" })(`idempotency (${TestDatabase.kind})`, (it) => {
  it.effect("runs 20 concurrent dispatches with one key once; the others replay it or find it in flight", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      // distinct commands (ids), one payload, one key: a client retrying
      const commands = Array.from(
        { length: 20 },
        () => createOrder([{ productId: "p-1", quantity: 2 }], { idempotencyKey: "k-1" })
      )
      const outcomes = yield* Effect.all(commands.map((command) => dispatch(command)), { concurrency: "unbounded" })

      const ran = outcomes.filter((outcome) => Exit.isSuccess(outcome.exit) && !outcome.replayed)
      expect(ran).toHaveLength(1)
      const result = Exit.isSuccess(ran[0]!.exit) ? ran[0]!.exit.value : undefined
      for (const outcome of outcomes) {
        if (outcome === ran[0]) continue
        if (Exit.isSuccess(outcome.exit)) {
          expect(outcome.replayed).toBe(true)
          expect(outcome.exit.value).toEqual(result)
        } else {
          assert.instanceOf(failureOf(outcome.exit), Idempotency.IdempotencyKeyInFlight)
        }
      }

      // the handler's effects happened once
      expect(yield* count("orders")).toBe(1)
      expect(yield* stock("p-1")).toBe(8)
      expect(yield* count("outbox")).toBe(1)
      expect(yield* keyRows).toEqual([{
        scope: "alice",
        key: "k-1",
        state: "completed",
        result: { _tag: "Success", value: result }
      }])

      // and a later retry replays the same success
      const later = yield* dispatch(createOrder([{ productId: "p-1", quantity: 2 }], { idempotencyKey: "k-1" }))
      expect(later.replayed).toBe(true)
      expect(Exit.isSuccess(later.exit) && later.exit.value).toEqual(result)
      expect(yield* count("orders")).toBe(1)
    }))

  it.effect("refuses the same key with another payload, and scopes keys by user", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const first = yield* dispatch(createOrder([{ productId: "p-1", quantity: 1 }], { idempotencyKey: "k-2" }))
      expect(Exit.isSuccess(first.exit)).toBe(true)

      const other = yield* dispatch(createOrder([{ productId: "p-1", quantity: 3 }], { idempotencyKey: "k-2" }))
      const mismatch = failureOf(other.exit)
      assert.instanceOf(mismatch, Idempotency.IdempotencyKeyMismatch)
      expect(mismatch.idempotencyKey).toBe("k-2")
      expect(yield* count("orders")).toBe(1)
      expect(yield* stock("p-1")).toBe(9)

      // another user's "k-2" is another key
      const bobs = yield* dispatch(
        createOrder([{ productId: "p-1", quantity: 3 }], { idempotencyKey: "k-2", userId: "bob" })
      )
      expect(Exit.isSuccess(bobs.exit)).toBe(true)
      expect(bobs.replayed).toBe(false)
      expect(yield* count("orders")).toBe(2)
      expect((yield* keyRows).map((row) => [row.scope, row.key, row.state])).toEqual([
        ["alice", "k-2", "completed"],
        ["bob", "k-2", "completed"]
      ])
    }))

  it.effect("records a domain failure and replays it without running the handler again", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 1)
      const command = createOrder([{ productId: "p-1", quantity: 2 }], { idempotencyKey: "k-3" })
      const first = yield* dispatch(command)
      const refused = failureOf(first.exit)
      assert.instanceOf(refused, Inventory.InsufficientInventory)
      expect(refused).toMatchObject({ productId: "p-1", requested: 2, available: 1 })
      const [row] = yield* keyRows
      expect(row).toMatchObject({ key: "k-3", state: "completed", result: { _tag: "Failure" } })

      // with stock back, a run would now succeed: the replay shows it did not run
      yield* restock("p-1", 10)
      const again = yield* dispatch(createOrder([{ productId: "p-1", quantity: 2 }], { idempotencyKey: "k-3" }))
      expect(again.replayed).toBe(true)
      const replayed = failureOf(again.exit)
      assert.instanceOf(replayed, Inventory.InsufficientInventory)
      expect(replayed).toMatchObject({ productId: "p-1", requested: 2, available: 1 })
      expect(yield* count("orders")).toBe(0)
      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("outbox")).toBe(0)
    }))

  it.effect("does not record a command without a key", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const done = yield* dispatch(createOrder([{ productId: "p-1", quantity: 1 }]))
      expect(Exit.isSuccess(done.exit)).toBe(true)
      expect(done.replayed).toBe(false)
      const refused = yield* dispatch(createOrder([{ productId: "p-1", quantity: 100 }]))
      assert.instanceOf(failureOf(refused.exit), Inventory.InsufficientInventory)
      expect(yield* count("orders")).toBe(1)
      expect(yield* count("idempotency_keys")).toBe(0)
    }))

  it.effect("releases the claim of an interrupted dispatch and keeps none of its writes", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const command = createOrder([{ productId: "p-1", quantity: 4 }], { idempotencyKey: "k-4" })
      const reserved = yield* Deferred.make<void>()
      const running = yield* dispatch(command).pipe(Effect.provide(hangingAfterReserve(reserved)), Effect.fork)
      yield* Deferred.await(reserved).pipe(Effect.timeout("10 seconds"))
      const interrupted = yield* Fiber.interrupt(running).pipe(Effect.timeout("10 seconds"))
      expect(Exit.isInterrupted(interrupted)).toBe(true)

      expect(yield* stock("p-1")).toBe(10)
      expect(yield* count("orders")).toBe(0)
      expect(yield* count("outbox")).toBe(0)
      expect(yield* count("idempotency_keys")).toBe(0)

      // the key is free: a retry runs at once
      const retried = yield* dispatch(command)
      expect(Exit.isSuccess(retried.exit)).toBe(true)
      expect(retried.replayed).toBe(false)
      expect(yield* stock("p-1")).toBe(6)
    }))

  it.effect("holds the key of a crashed dispatch until its lease passes, then runs the retry", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const leased = OrderBus.make({ idempotency: { lease: "1 second" } })
      const command = createOrder([{ productId: "p-1", quantity: 4 }], { idempotencyKey: "k-5" })

      // claimed, then the process dies inside the handler: nothing releases the claim
      const reserved = yield* Deferred.make<void>()
      const crashed = yield* dispatch(command, leased).pipe(
        Effect.provide(hangingAfterReserve(reserved)),
        Effect.provide(neverReleasing),
        Effect.fork
      )
      yield* Deferred.await(reserved).pipe(Effect.timeout("10 seconds"))
      yield* Fiber.interrupt(crashed).pipe(Effect.timeout("10 seconds"))
      expect((yield* keyRows).map((row) => row.state)).toEqual(["in_flight"])

      // within the lease, a retry is told the key is in flight and does not run
      const early = yield* dispatch(command, leased)
      assert.instanceOf(failureOf(early.exit), Idempotency.IdempotencyKeyInFlight)
      expect(yield* count("orders")).toBe(0)

      // once the lease passed, the retry takes the key over and runs
      const late = yield* dispatch(command, leased).pipe(
        Effect.filterOrFail((outcome) => !(failureOf(outcome.exit) instanceof Idempotency.IdempotencyKeyInFlight)),
        Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 })
      )
      expect(Exit.isSuccess(late.exit)).toBe(true)
      expect(late.replayed).toBe(false)
      expect(yield* count("orders")).toBe(1)
      expect(yield* stock("p-1")).toBe(6)
      expect((yield* keyRows).map((row) => row.state)).toEqual(["completed"])
    }))

  it.effect("never commits a dispatch that outlived its lease alongside the one that took its key over", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      yield* restock("p-1", 10)
      const leased = OrderBus.make({ idempotency: { lease: "300 millis" } })
      const command = createOrder([{ productId: "p-1", quantity: 4 }], { idempotencyKey: "k-lease" })
      const inserted = yield* Deferred.make<void>()
      const slow = yield* dispatch(command, leased).pipe(Effect.provide(slowInsert(inserted)), Effect.fork)
      // the first is in its transaction, claimed before it wrote: its lease
      // passes while it still has more than a second to go
      yield* Deferred.await(inserted).pipe(Effect.timeout("10 seconds"))
      yield* Effect.sleep("500 millis")
      const retry = yield* dispatch(command, leased)
      const first = yield* Fiber.join(slow)

      if (TestDatabase.serverUrl !== undefined) {
        // the retry took the key over and ran; the slow one lost its claim and rolled back
        expect(retry.replayed).toBe(false)
        expect(Exit.isSuccess(retry.exit)).toBe(true)
        assert.instanceOf(failureOf(first.exit), Idempotency.IdempotencyKeyInFlight)
      } else {
        // one session: the retry's claim waited for the slow one to commit, then replayed it
        expect(first.replayed).toBe(false)
        expect(Exit.isSuccess(first.exit)).toBe(true)
        expect(retry.replayed).toBe(true)
        expect(retry.exit).toEqual(first.exit)
      }
      expect(yield* count("orders")).toBe(1)
      expect(yield* stock("p-1")).toBe(6)
      expect(yield* count("outbox")).toBe(1)
      expect((yield* keyRows).map((row) => row.state)).toEqual(["completed"])
    }))

  it.effect("a record whose claim was taken over: false at once, its transaction usable; or the commit stopped", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* TestDatabase.truncateAll
      const store = yield* SqlIdempotencyStore.make
      const request = claimRequest("k-taken-over", Duration.millis(1))
      const first = yield* store.claim(request)
      assert(first._tag === "Claimed")
      yield* Effect.sleep("20 millis")
      expect((yield* store.claim(request))._tag).toBe("Claimed")
      const complete = store.complete({ ...request, token: first.token, result: { _tag: "Success", value: 1 } })
      // Outside a transaction: at once.
      expect(yield* complete).toBe(false)
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const inTransaction = yield* Effect.exit(unitOfWork.transactional(Effect.gen(function*() {
        yield* sql`INSERT INTO inventory (product_id, available) VALUES ('p-taken-over', 1)`
        return yield* complete
      })))
      if (TestDatabase.serverUrl !== undefined) {
        // Held for the commit (the service's pool): the lost claim stops it.
        expect(inTransaction).toEqual(
          Exit.fail(new Idempotency.IdempotencyKeyInFlight({ idempotencyKey: request.key }))
        )
        expect(yield* stock("p-taken-over")).toBe(0)
      } else {
        // Run at once: no row, and the transaction goes on to commit.
        expect(inTransaction).toEqual(Exit.succeed(false))
        expect(yield* stock("p-taken-over")).toBe(1)
      }
      expect((yield* keyRows).map((row) => row.state)).toEqual(["in_flight"])
    }))

  it.effect("a claim made late in a long transaction (a nested dispatch's) holds its whole lease from the claim, not from the transaction's start", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* TestDatabase.truncateAll
      const store = yield* SqlIdempotencyStore.make
      const request = claimRequest("k-nested-late", Duration.seconds(2))
      const unitOfWork = yield* UnitOfWork.UnitOfWork
      const claimed = yield* unitOfWork.transactional(Effect.gen(function*() {
        yield* sql`INSERT INTO inventory (product_id, available) VALUES ('p-nested-late', 1)`
        // The transaction has run for longer than the lease when the claim comes.
        yield* sql`SELECT pg_sleep(2.5)`
        const claim = yield* store.claim(request)
        const [row] = yield* sql<{ readonly left: number }>`
          SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8 AS left
          FROM idempotency_keys WHERE key = ${request.key}`.withoutTransform
        return { claim, left: row!.left }
      }))
      assert(claimed.claim._tag === "Claimed")
      expect(claimed.left).toBeGreaterThan(1)
      // Committed: a duplicate right after finds the key in flight, not free to take over.
      expect((yield* store.claim(request))._tag).toBe("InFlight")
    }))

  it.effect("prunes expired records, in flight or completed, and keeps live ones", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const store = yield* SqlIdempotencyStore.make
      const request = (key: string, retention: Duration.DurationInput) => ({
        scope: "alice",
        key,
        fingerprint: `fingerprint-${key}`,
        commandType: "CreateOrder",
        lease: Duration.minutes(1),
        retention: Duration.decode(retention)
      })
      const completed = (key: string, retention: Duration.DurationInput) =>
        Effect.gen(function*() {
          const claim = yield* store.claim(request(key, retention))
          assert(claim._tag === "Claimed")
          const held = yield* store.complete({
            scope: "alice",
            key,
            token: claim.token,
            retention: Duration.decode(retention),
            result: { _tag: "Success", value: { key } }
          })
          expect(held).toBe(true)
        })
      yield* completed("expired-completed", "1 millis")
      yield* store.claim(request("expired-in-flight", "1 millis"))
      yield* completed("live-completed", "1 hour")
      yield* store.claim(request("live-in-flight", "1 hour"))
      yield* Effect.sleep("50 millis")

      expect(yield* store.prune).toBe(2)
      expect((yield* keyRows).map((row) => row.key)).toEqual(["live-completed", "live-in-flight"])
      expect(yield* store.prune).toBe(0)

      // a live record answers a claim; a pruned key is claimed anew
      const live = yield* store.claim(request("live-completed", "1 hour"))
      expect(live).toEqual({
        _tag: "Completed",
        fingerprint: "fingerprint-live-completed",
        result: { _tag: "Success", value: { key: "live-completed" } }
      })
      expect((yield* store.claim(request("expired-completed", "1 hour")))._tag).toBe("Claimed")
    }))

  it.effect("claims an expired record anew before it is pruned", () =>
    Effect.gen(function*() {
      yield* TestDatabase.truncateAll
      const store = yield* SqlIdempotencyStore.make
      const request = {
        scope: "alice",
        key: "k-6",
        fingerprint: "f",
        commandType: "CreateOrder",
        lease: Duration.minutes(1),
        retention: Duration.millis(1)
      }
      const first = yield* store.claim(request)
      assert(first._tag === "Claimed")
      yield* store.complete({ ...request, token: first.token, result: { _tag: "Success", value: 1 } })
      yield* Effect.sleep("50 millis")
      const second = yield* store.claim({ ...request, retention: Duration.hours(1) })
      assert(second._tag === "Claimed")
      expect(second.token).not.toBe(first.token)
      // the old claim's token no longer completes the record
      expect(yield* store.complete({ ...request, token: first.token, result: { _tag: "Success", value: 2 } })).toBe(
        false
      )
      expect(yield* store.prune).toBe(0)
    }))
})
