/**
 * Model-based, differential tests of the order domain: random sequences of
 * `CreateOrder`, `CancelOrder` and `RestockProduct` (as various principals,
 * with and without idempotency keys, repeated, with stale expected versions,
 * with out-of-range quantities and duplicate products) go through the
 * service's bus (`OrderBus.make()`, the full middleware stack) against
 *
 * - a reference model written here from the README and the doc comments,
 * - the in-memory stores (`Persistence.layerMemory`, the test kit's `InMemory.layer`),
 * - the SQL stores (`Persistence.layerSql`) on this run's database (PGlite,
 *   or the server in `DATABASE_URL`).
 *
 * Per step the outcomes must agree (success value, or failure with its
 * fields); at the end the state must: stock per product, every order
 * (status, version, items, owner, reason), the events appended (type,
 * aggregate, version, correlation and causation, payload). Invariants that
 * need no model are checked too: stock within 0 and `maxAvailable`, aggregate
 * versions contiguous from 1, one event per state-changing success. The
 * events published (the relay's, on SQL) and the event log's `read` must be
 * the appended ones, once each, at positions 1..n.
 *
 * Three more properties: the same sequences under deadlines short enough to
 * cut dispatches (what timed out left nothing, the rest is the model's);
 * concurrent batches (stock conserved, a key runs once, versions contiguous,
 * no defect); dispatches interrupted at random points (all or nothing, and
 * the key free again at once; on a server, no connection left in a
 * transaction).
 *
 * Sizes: MODEL_RUNS, MODEL_DEADLINE_RUNS, MODEL_BATCH_RUNS,
 * MODEL_INTERRUPT_RUNS; MODEL_SEED replays a run, MODEL_NO_SHRINK stops at
 * the first failure, MODEL_VERBOSE prints what the runs exercised.
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as fc from "fast-check"
import { CurrentUser, EventPublisher, Outbox } from "../../src/index.js"
import { CancelOrder, CreateOrder, RestockProduct } from "../../src/orders/Commands.js"
import * as Inventory from "../../src/orders/Inventory.js"
import * as OrderBus from "../../src/orders/OrderBus.js"
import * as OrderRepository from "../../src/orders/OrderRepository.js"
import * as Persistence from "../../src/orders/Persistence.js"
import * as TestDatabase from "../support/Database.js"

// -----------------------------------------------------------------------------
// the vocabulary of a run
// -----------------------------------------------------------------------------

// Plain ids, and ids that a driver's array or JSON encoding could get wrong.
const products = [
  "p1",
  "p2",
  "P1",
  "NULL",
  "a,b",
  "{x}",
  "q\"uote",
  "back\\slash",
  " sp ",
  "\u00e9",
  "e\u0301",
  "\u{1F600}",
  "x".repeat(100)
] as const
const customers = ["6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10", "0b7c2f7a-1d2e-4f3a-8b4c-5d6e7f8a9b0c"] as const
const shippingAddress = { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
const unknownOrderId = "00000000-0000-4000-8000-000000000000"
const max = Inventory.maxAvailable

type Actor = "alice" | "bob" | "admin" | "anon"
const principals: Record<Actor, CurrentUser.Principal | undefined> = {
  alice: { userId: "alice", roles: [] },
  bob: { userId: "bob", roles: [] },
  admin: { userId: "admin", roles: ["admin"] },
  anon: undefined
}
/** Which `userId` the command carries: the actor's own, someone else's, none. */
type UserIdChoice = "self" | "other" | "none"

type Step =
  | {
    readonly kind: "create"
    readonly actor: Actor
    readonly userId: UserIdChoice
    readonly customer: 0 | 1
    readonly items: ReadonlyArray<{ readonly productId: string; readonly quantity: number }>
    readonly key: string | null
    readonly commandId: string
    readonly upper: boolean
  }
  | {
    readonly kind: "cancel"
    readonly actor: Actor
    readonly userId: UserIdChoice
    /**
     * The order: one of those the model says are live (not cancelled), one of
     * those created so far (with any outcome), or an id nobody uses.
     */
    readonly target: { readonly from: "live" | "any" | "unknown"; readonly pick: number }
    readonly upper: boolean
    readonly expectedVersion: number | null
    readonly reason: string
    readonly key: string | null
  }
  | {
    readonly kind: "restock"
    readonly actor: Actor
    readonly userId: UserIdChoice
    readonly productId: string
    readonly available: number
    readonly key: string | null
  }
  /** The very same command (same command id and metadata) dispatched again, as a redelivery. */
  | { readonly kind: "repeat"; readonly of: number }

const actorArb = fc.constantFrom<Actor>("alice", "alice", "alice", "bob", "bob", "bob", "admin", "anon")
const userIdArb: fc.Arbitrary<UserIdChoice> = fc.oneof(
  { weight: 16, arbitrary: fc.constant<UserIdChoice>("self") },
  { weight: 1, arbitrary: fc.constant<UserIdChoice>("other") },
  { weight: 1, arbitrary: fc.constant<UserIdChoice>("none") }
)
const keyArb = fc.option(fc.constantFrom("k1", "k2", "k3"), { freq: 2 })
const quantityArb = fc.oneof(
  { weight: 30, arbitrary: fc.integer({ min: 1, max: 6 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, -1, 1000, 1001) }
)
const productArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("p1", "p2") },
  { weight: 2, arbitrary: fc.constantFrom(...products) }
)
const lineArb = fc.record({ productId: productArb, quantity: quantityArb })

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("create" as const),
      actor: actorArb,
      userId: userIdArb,
      customer: fc.constantFrom<0 | 1>(0, 1),
      items: fc.oneof(
        { weight: 12, arbitrary: fc.array(lineArb, { minLength: 1, maxLength: 2 }) },
        { weight: 2, arbitrary: fc.array(lineArb, { minLength: 3, maxLength: 4 }) },
        { weight: 1, arbitrary: fc.constant([]) }
      ),
      key: keyArb,
      commandId: fc.uuid(),
      upper: fc.boolean()
    })
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("cancel" as const),
      actor: actorArb,
      userId: userIdArb,
      target: fc.record({
        from: fc.constantFrom("live", "live", "live", "live", "live", "any", "unknown"),
        pick: fc.nat(20)
      }),
      upper: fc.boolean(),
      expectedVersion: fc.option(fc.constantFrom(0, 1, 2, 3), { freq: 2 }),
      reason: fc.constantFrom("changed my mind", "too late"),
      key: keyArb
    })
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("restock" as const),
      actor: fc.constantFrom<Actor>("admin", "admin", "admin", "alice", "anon"),
      userId: userIdArb,
      productId: productArb,
      available: fc.oneof(
        { weight: 8, arbitrary: fc.integer({ min: 0, max: 20 }) },
        { weight: 1, arbitrary: fc.constantFrom(max, max - 1) }
      ),
      key: keyArb
    })
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("repeat" as const), of: fc.nat(40) }) }
)

/** Stock to start from (admins' restocks, part of the sequence), then the steps. */
const runArb = fc.tuple(
  fc.array(fc.integer({ min: 0, max: 25 }), { minLength: products.length - 1, maxLength: products.length - 1 }),
  fc.array(stepArb, { minLength: 1, maxLength: 30, size: "max" })
)

// -----------------------------------------------------------------------------
// concrete commands, dispatched alike in every world
// -----------------------------------------------------------------------------

type AnyOrderCommand = CreateOrder | CancelOrder | RestockProduct

interface Concrete {
  readonly command: AnyOrderCommand
  readonly principal: CurrentUser.Principal | undefined
}

const userIdOf = (actor: Actor, choice: UserIdChoice): string | undefined => {
  if (choice === "none") return undefined
  if (choice === "self") return principals[actor]?.userId ?? "alice"
  return actor === "alice" ? "bob" : "alice"
}

const concretize = (initial: ReadonlyArray<number>, steps: ReadonlyArray<Step>): Array<Concrete> => {
  const out: Array<Concrete> = initial.map((available, i) => ({
    command: new RestockProduct({ productId: products[i]!, available, userId: "admin" }),
    principal: principals.admin
  }))
  const created: Array<string> = []
  // The model, run as the commands are made, so that cancellations can aim at live orders.
  const model: Model = { stock: new Map(), orders: new Map(), records: new Map(), events: [] }
  out.forEach((step) => modelDispatch(model, step))
  for (const step of steps) {
    switch (step.kind) {
      case "create": {
        const userId = userIdOf(step.actor, step.userId)
        const commandId = step.upper ? step.commandId.toUpperCase() : step.commandId
        created.push(step.commandId.toLowerCase())
        out.push({
          command: new CreateOrder({
            commandId,
            customerId: customers[step.customer],
            items: step.items,
            shippingAddress,
            ...(userId === undefined ? {} : { userId }),
            ...(step.key === null ? {} : { idempotencyKey: step.key })
          }),
          principal: principals[step.actor]
        })
        break
      }
      case "cancel": {
        const userId = userIdOf(step.actor, step.userId)
        const live = [...model.orders.values()].filter((order) => order.status === "created").map((order) => order.id)
        const from = step.target.from === "live" ? live : step.target.from === "any" ? created : []
        const target = from.length === 0 ? unknownOrderId : from[step.target.pick % from.length]!
        out.push({
          command: new CancelOrder({
            orderId: step.upper ? target.toUpperCase() : target,
            reason: step.reason,
            ...(step.expectedVersion === null ? {} : { expectedVersion: step.expectedVersion }),
            ...(userId === undefined ? {} : { userId }),
            ...(step.key === null ? {} : { idempotencyKey: step.key })
          }),
          principal: principals[step.actor]
        })
        break
      }
      case "restock": {
        const userId = userIdOf(step.actor, step.userId)
        out.push({
          command: new RestockProduct({
            productId: step.productId,
            available: step.available,
            ...(userId === undefined ? {} : { userId }),
            ...(step.key === null ? {} : { idempotencyKey: step.key })
          }),
          principal: principals[step.actor]
        })
        break
      }
      case "repeat": {
        out.push(out[step.of % out.length]!)
        break
      }
    }
    modelDispatch(model, out[out.length - 1]!)
  }
  return out
}

/** Every keyed command of the run, dispatched once more at its end: each must replay (or mismatch). */
const withReplays = (run: ReadonlyArray<Concrete>): Array<Concrete> => [
  ...run,
  ...run.filter((step) => step.command.idempotencyKey !== undefined)
]

// -----------------------------------------------------------------------------
// outcomes and state, as plain JSON
// -----------------------------------------------------------------------------

type Json = unknown

const plain = (value: unknown): Json => JSON.parse(JSON.stringify(value))

const outcomeOf = (exit: Exit.Exit<unknown, unknown>): Json =>
  Exit.match(exit, {
    onSuccess: (value) => ({ ok: plain(value) }),
    onFailure: (cause) => {
      const failure = Cause.failureOption(cause)
      if (Option.isSome(failure)) {
        const error = failure.value as { readonly _tag: string }
        return { error: plain({ ...error, _tag: error._tag }) }
      }
      return { defect: Cause.pretty(cause).split("\n")[0] }
    }
  })

interface EventView {
  readonly type: string
  readonly aggregateId: string
  readonly aggregateVersion: number
  readonly correlationId: string
  readonly causationId: string
  readonly payload: Json
}

interface State {
  readonly stock: Record<string, number>
  readonly orders: Record<string, Json>
  readonly events: ReadonlyArray<EventView>
}

const orderView = (order: {
  readonly userId: string
  readonly customerId: string
  readonly status: string
  readonly version: number
  readonly items: ReadonlyArray<{ readonly productId: string; readonly quantity: number }>
  readonly cancelReason?: string | undefined
}): Json =>
  plain({
    userId: order.userId,
    customerId: order.customerId,
    status: order.status,
    version: order.version,
    items: order.items.map((line) => ({ productId: line.productId, quantity: line.quantity })),
    cancelReason: order.cancelReason ?? null
  })

const readState = (
  orderIds: ReadonlyArray<string>,
  events: Effect.Effect<ReadonlyArray<EventView>, unknown, Persistence.Stores | SqlClient.SqlClient>
) =>
  Effect.gen(function*() {
    const inventory = yield* Inventory.Inventory
    const repository = yield* OrderRepository.OrderRepository
    const stock: Record<string, number> = {}
    for (const productId of products) stock[productId] = yield* inventory.available(productId)
    const orders: Record<string, Json> = {}
    for (const id of orderIds) {
      const found = yield* repository.findById(id)
      if (Option.isSome(found)) orders[id] = orderView(found.value)
    }
    return { stock, orders, events: yield* events } satisfies State
  })

const memoryEvents = Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 100_000 })).pipe(
  Effect.map((stored) => stored.map(({ event }) => eventView(event)))
)

// The SQL outbox's `read` only returns events the relay published (with a
// position); this run has no relay, so the rows are read in append order.
const sqlEvents = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{
    readonly event_type: string
    readonly aggregate_id: string
    readonly aggregate_version: number
    readonly correlation_id: string
    readonly causation_id: string
    readonly payload: unknown
  }>`SELECT event_type, aggregate_id, aggregate_version, correlation_id, causation_id, payload
     FROM outbox ORDER BY id`.withoutTransform).pipe(
    Effect.map((rows) =>
      rows.map((row) =>
        eventView({
          type: row.event_type,
          aggregateId: row.aggregate_id,
          aggregateVersion: row.aggregate_version,
          correlationId: row.correlation_id,
          causationId: row.causation_id,
          payload: typeof row.payload === "string" ? JSON.parse(row.payload) : row.payload
        })
      )
    )
  )

const eventView = (event: EventView): EventView => ({
  type: event.type,
  aggregateId: event.aggregateId,
  aggregateVersion: event.aggregateVersion,
  correlationId: event.correlationId,
  causationId: event.causationId,
  payload: plain(event.payload)
})

/** Runs the steps through the service's bus in one world, then reads its state. */
const runWorld = (
  run: ReadonlyArray<Concrete>,
  orderIds: ReadonlyArray<string>,
  events: Effect.Effect<ReadonlyArray<EventView>, unknown, Persistence.Stores | SqlClient.SqlClient>,
  timeout?: Duration.DurationInput
) =>
  Effect.gen(function*() {
    const bus = OrderBus.make(timeout === undefined ? {} : { timeout })
    const outcomes: Array<Json> = []
    for (const { command, principal } of run) {
      const dispatched = bus.dispatch(command)
      const exit = yield* Effect.exit(
        principal === undefined ? dispatched : dispatched.pipe(CurrentUser.as(principal))
      )
      outcomes.push(outcomeOf(exit))
    }
    return { outcomes, state: yield* readState(orderIds, events) }
  })

/**
 * `runWorld`, and what the world published and what its event log reads
 * (`Outbox.read`) once every appended event is out: at once in memory, once
 * the relay has been through them on SQL.
 */
const runWorldPublished = (
  run: ReadonlyArray<Concrete>,
  orderIds: ReadonlyArray<string>,
  events: Effect.Effect<ReadonlyArray<EventView>, unknown, Persistence.Stores | SqlClient.SqlClient>
) =>
  Effect.scoped(Effect.gen(function*() {
    const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
    const result = yield* runWorld(run, orderIds, events)
    const published = yield* Queue.takeN(subscription, result.state.events.length).pipe(
      Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("events not all published") })
    )
    // The relay publishes, then gives the events their positions in the same
    // transaction: the log may lag what was published by that commit.
    const outbox = yield* Outbox.Outbox
    const log = yield* outbox.read({ after: 0, limit: 100_000 }).pipe(
      Effect.filterOrFail((log) => log.length >= result.state.events.length, () => new Error("log behind")),
      Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.upTo("20 seconds")))
    )
    return {
      ...result,
      published: Chunk.toReadonlyArray(published).map(eventView),
      log: log.map((stored) => ({ position: stored.position, ...eventView(stored.event) }))
    }
  }))

// -----------------------------------------------------------------------------
// the reference model
// -----------------------------------------------------------------------------

interface ModelOrder {
  readonly id: string
  readonly userId: string
  readonly customerId: string
  status: "created" | "cancelled"
  version: number
  readonly items: ReadonlyArray<{ readonly productId: string; readonly quantity: number }>
  cancelReason: string | null
}

interface Model {
  readonly stock: Map<string, number>
  readonly orders: Map<string, ModelOrder>
  readonly records: Map<string, { readonly fingerprint: string; readonly outcome: Json }>
  readonly events: Array<Omit<EventView, "payload"> & { readonly payload: Json }>
}

const declaredFailures: Record<string, ReadonlySet<string>> = {
  CreateOrder: new Set(["InsufficientInventory", "OrderAlreadyExists", "Forbidden"]),
  CancelOrder: new Set(["OrderNotFound", "OrderAlreadyCancelled", "OrderVersionMismatch", "Forbidden"]),
  RestockProduct: new Set()
}

const fail = (error: Record<string, unknown>): Json => ({ error })

const payloadOf = (command: AnyOrderCommand): Record<string, unknown> => {
  switch (command._tag) {
    case "CreateOrder":
      return { customerId: command.customerId, items: command.items, shippingAddress: command.shippingAddress }
    case "CancelOrder":
      return { orderId: command.orderId, reason: command.reason, expectedVersion: command.expectedVersion }
    case "RestockProduct":
      return { productId: command.productId, available: command.available }
  }
}

const modelDispatch = (model: Model, { command, principal }: Concrete): Json => {
  // authorization
  if (command._tag === "RestockProduct" && !(principal?.roles.includes("admin") ?? false)) {
    return fail({ _tag: "Forbidden", reason: `RestockProduct requires the role "admin"` })
  }
  if (principal !== undefined && command.userId !== undefined && command.userId !== principal.userId) {
    return fail({ _tag: "Forbidden", reason: "The command's userId is not the authenticated user" })
  }
  // validation
  if (command._tag === "CreateOrder") {
    const paths: Array<Array<string | number>> = []
    if (command.items.length < 1 || command.items.length > 100) paths.push(["items"])
    const seen = new Set<string>()
    command.items.forEach((line, i) => {
      if (line.quantity < 1 || line.quantity > 1000) paths.push(["items", i, "quantity"])
      if (seen.has(line.productId)) paths.push(["items", i, "productId"])
      seen.add(line.productId)
    })
    if (paths.length > 0) {
      return fail({
        _tag: "CommandValidationError",
        commandType: "CreateOrder",
        issues: paths.map((path) => ({ path }))
      })
    }
  }
  // idempotency
  const key = command.idempotencyKey
  const scope = command.userId ?? principal?.userId ?? ""
  const fingerprint = JSON.stringify([command._tag, payloadOf(command)])
  if (key !== undefined) {
    const record = model.records.get(`${scope}\u0000${key}`)
    if (record !== undefined) {
      return record.fingerprint === fingerprint
        ? record.outcome
        : fail({ _tag: "IdempotencyKeyMismatch", idempotencyKey: key })
    }
  }
  const outcome = modelHandle(model, command, principal)
  if (key !== undefined) {
    const tag = (outcome as { readonly error?: { readonly _tag: string } }).error?._tag
    if (tag === undefined || declaredFailures[command._tag]!.has(tag)) {
      model.records.set(`${scope}\u0000${key}`, { fingerprint, outcome })
    }
  }
  return outcome
}

const modelHandle = (model: Model, command: AnyOrderCommand, principal: CurrentUser.Principal | undefined): Json => {
  const meta = { correlationId: command.correlationId, causationId: command.commandId }
  switch (command._tag) {
    case "RestockProduct": {
      model.stock.set(command.productId, command.available)
      return { ok: { productId: command.productId, available: command.available } }
    }
    case "CreateOrder": {
      if (command.userId === undefined) {
        return fail({ _tag: "Forbidden", reason: "Orders belong to a user; dispatch with a userId" })
      }
      for (const line of command.items) {
        const available = model.stock.get(line.productId) ?? 0
        if (available < line.quantity) {
          return fail({ _tag: "InsufficientInventory", productId: line.productId, requested: line.quantity, available })
        }
      }
      const id = command.commandId.toLowerCase()
      if (model.orders.has(id)) return fail({ _tag: "OrderAlreadyExists", orderId: id })
      for (const line of command.items) {
        model.stock.set(line.productId, model.stock.get(line.productId)! - line.quantity)
      }
      const customerId = command.customerId.toLowerCase()
      model.orders.set(id, {
        id,
        userId: command.userId,
        customerId,
        status: "created",
        version: 1,
        items: command.items,
        cancelReason: null
      })
      model.events.push({
        type: "OrderCreated",
        aggregateId: id,
        aggregateVersion: 1,
        ...meta,
        payload: plain({
          _tag: "OrderCreated",
          orderId: id,
          customerId,
          userId: command.userId,
          items: command.items,
          shippingAddress
        })
      })
      return { ok: { orderId: id, status: "created", version: 1 } }
    }
    case "CancelOrder": {
      const order = model.orders.get(command.orderId.toLowerCase())
      if (order === undefined) return fail({ _tag: "OrderNotFound", orderId: command.orderId })
      if (order.userId !== command.userId && !(principal?.roles.includes("admin") ?? false)) {
        return fail({ _tag: "Forbidden", reason: "Only the order's owner or an admin may cancel it" })
      }
      if (command.expectedVersion !== undefined && command.expectedVersion !== order.version) {
        return fail({
          _tag: "OrderVersionMismatch",
          orderId: order.id,
          expectedVersion: command.expectedVersion,
          actualVersion: order.version
        })
      }
      if (order.status === "cancelled") return fail({ _tag: "OrderAlreadyCancelled", orderId: order.id })
      order.status = "cancelled"
      order.version += 1
      order.cancelReason = command.reason
      for (const line of order.items) {
        model.stock.set(line.productId, Math.min((model.stock.get(line.productId) ?? 0) + line.quantity, max))
      }
      model.events.push({
        type: "OrderCancelled",
        aggregateId: order.id,
        aggregateVersion: order.version,
        ...meta,
        payload: plain({
          _tag: "OrderCancelled",
          orderId: order.id,
          reason: command.reason,
          releasedItems: order.items
        })
      })
      return { ok: { orderId: order.id, status: "cancelled", version: order.version } }
    }
  }
}

const runModel = (run: ReadonlyArray<Concrete>, orderIds: ReadonlyArray<string>) => {
  const model: Model = { stock: new Map(), orders: new Map(), records: new Map(), events: [] }
  const outcomes = run.map((step) => modelDispatch(model, step))
  const stock: Record<string, number> = {}
  for (const productId of products) stock[productId] = model.stock.get(productId) ?? 0
  const orders: Record<string, Json> = {}
  for (const id of orderIds) {
    const order = model.orders.get(id)
    if (order !== undefined) orders[id] = orderView({ ...order, cancelReason: order.cancelReason ?? undefined })
  }
  return { outcomes, state: { stock, orders, events: model.events } satisfies State }
}

// -----------------------------------------------------------------------------
// invariants that need no model
// -----------------------------------------------------------------------------

const checkInvariants = (name: string, run: ReadonlyArray<Concrete>, outcomes: ReadonlyArray<Json>, state: State) => {
  for (const [productId, available] of Object.entries(state.stock)) {
    expect(available, `${name}: stock of ${productId}`).toBeGreaterThanOrEqual(0)
    expect(available, `${name}: stock of ${productId}`).toBeLessThanOrEqual(max)
  }
  const versions = new Map<string, Array<number>>()
  for (const event of state.events) {
    versions.set(event.aggregateId, [...(versions.get(event.aggregateId) ?? []), event.aggregateVersion])
  }
  for (const [aggregateId, seen] of versions) {
    expect(seen, `${name}: versions of ${aggregateId}`).toEqual(seen.map((_, i) => i + 1))
    const order = state.orders[aggregateId] as { readonly version: number } | undefined
    expect(order?.version, `${name}: order ${aggregateId} at the version of its last event`).toBe(seen.length)
  }
  // One event per successful create or cancel that ran (not replayed): a
  // replay answers with the result of a dispatch seen earlier in the run.
  const seenResults = new Set<string>()
  let changes = 0
  run.forEach((step, i) => {
    const outcome = outcomes[i] as { readonly ok?: unknown }
    if (outcome.ok === undefined || step.command._tag === "RestockProduct") return
    const result = JSON.stringify(outcome.ok)
    if (!seenResults.has(result)) changes++
    seenResults.add(result)
  })
  expect(state.events.length, `${name}: one event per state change`).toBe(changes)
}

// -----------------------------------------------------------------------------
// concurrent batches
// -----------------------------------------------------------------------------

type BatchStep =
  | {
    readonly kind: "create"
    readonly actor: "alice" | "bob"
    readonly items: ReadonlyArray<{ readonly productId: "p1" | "p2"; readonly quantity: number }>
    readonly key: string | null
    readonly commandId: string
  }
  | {
    readonly kind: "cancel"
    readonly actor: "owner" | "admin"
    readonly target: number
    readonly expectedVersion: 1 | null
    readonly key: string | null
  }
  /** The same command object as an earlier one of the batch, at the same time. */
  | { readonly kind: "twice"; readonly of: number }

interface Batch {
  readonly stock: readonly [number, number]
  /** Orders placed (sequentially) before the batch, to be cancelled in it. */
  readonly placed: ReadonlyArray<
    { readonly actor: "alice" | "bob"; readonly quantity: number; readonly commandId: string }
  >
  readonly steps: ReadonlyArray<BatchStep>
}

const batchArb: fc.Arbitrary<Batch> = fc.record({
  stock: fc.tuple(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 12 })),
  placed: fc.array(
    fc.record({
      actor: fc.constantFrom("alice" as const, "bob" as const),
      quantity: fc.integer({ min: 1, max: 3 }),
      commandId: fc.uuid()
    }),
    { minLength: 0, maxLength: 4 }
  ),
  steps: fc.array(
    fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant("create" as const),
          actor: fc.constantFrom("alice" as const, "bob" as const),
          items: fc.uniqueArray(
            fc.record({
              productId: fc.constantFrom("p1" as const, "p2" as const),
              quantity: fc.integer({ min: 1, max: 4 })
            }),
            { minLength: 1, maxLength: 2, selector: (line) => line.productId }
          ),
          key: fc.option(fc.constantFrom("k1", "k2"), { freq: 2 }),
          commandId: fc.uuid()
        })
      },
      {
        weight: 3,
        arbitrary: fc.record({
          kind: fc.constant("cancel" as const),
          actor: fc.constantFrom("owner" as const, "admin" as const),
          target: fc.nat(10),
          expectedVersion: fc.option(fc.constant(1 as const), { freq: 2 }),
          key: fc.option(fc.constantFrom("k1", "k2"), { freq: 2 })
        })
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("twice" as const), of: fc.nat(20) }) }
    ),
    { minLength: 2, maxLength: 12 }
  )
})

const batchStock = (batch: Batch): Record<string, number> => ({ p1: batch.stock[0], p2: batch.stock[1] })

const concretizeBatch = (batch: Batch) => {
  // Enough stock for the orders placed before, on top of the batch's own.
  const placedTotal = batch.placed.reduce((total, order) => total + order.quantity, 0)
  const before: Array<Concrete> = [
    {
      command: new RestockProduct({ productId: "p1", available: batch.stock[0] + placedTotal, userId: "admin" }),
      principal: principals.admin
    },
    {
      command: new RestockProduct({ productId: "p2", available: batch.stock[1], userId: "admin" }),
      principal: principals.admin
    },
    ...batch.placed.map((order): Concrete => ({
      command: new CreateOrder({
        commandId: order.commandId,
        customerId: customers[0],
        items: [{ productId: "p1", quantity: order.quantity }],
        shippingAddress,
        userId: order.actor
      }),
      principal: principals[order.actor]
    }))
  ]
  const during: Array<Concrete> = []
  for (const step of batch.steps) {
    switch (step.kind) {
      case "create":
        during.push({
          command: new CreateOrder({
            commandId: step.commandId,
            customerId: customers[0],
            items: step.items,
            shippingAddress,
            userId: step.actor,
            ...(step.key === null ? {} : { idempotencyKey: step.key })
          }),
          principal: principals[step.actor]
        })
        break
      case "cancel": {
        const placed = batch.placed.length === 0 ? undefined : batch.placed[step.target % batch.placed.length]!
        const actor = step.actor === "admin" ? "admin" : placed?.actor ?? "alice"
        during.push({
          command: new CancelOrder({
            orderId: placed?.commandId ?? unknownOrderId,
            reason: "changed my mind",
            userId: actor,
            ...(step.expectedVersion === null ? {} : { expectedVersion: step.expectedVersion }),
            ...(step.key === null ? {} : { idempotencyKey: step.key })
          }),
          principal: principals[actor]
        })
        break
      }
      case "twice":
        if (during.length > 0) during.push(during[step.of % during.length]!)
        break
    }
  }
  return { before, during }
}

const runBatch = (
  before: ReadonlyArray<Concrete>,
  during: ReadonlyArray<Concrete>,
  orderIds: ReadonlyArray<string>,
  events: Effect.Effect<ReadonlyArray<EventView>, unknown, Persistence.Stores | SqlClient.SqlClient>
) =>
  Effect.gen(function*() {
    const bus = OrderBus.make()
    const dispatch = ({ command, principal }: Concrete) =>
      Effect.exit(
        principal === undefined ? bus.dispatch(command) : bus.dispatch(command).pipe(CurrentUser.as(principal))
      )
    for (const step of before) {
      const exit = yield* dispatch(step)
      if (Exit.isFailure(exit)) return yield* Effect.dieMessage(`setup failed: ${Cause.pretty(exit.cause)}`)
    }
    const exits = yield* Effect.forEach(during, dispatch, { concurrency: "unbounded" })
    return { outcomes: exits.map(outcomeOf), state: yield* readState(orderIds, events) }
  })

const allowedInBatch = new Set([
  "InsufficientInventory",
  "OrderAlreadyExists",
  "OrderAlreadyCancelled",
  "OrderVersionMismatch",
  "OrderNotFound",
  "IdempotencyKeyInFlight",
  "IdempotencyKeyMismatch"
])

const checkBatch = (
  name: string,
  batch: Batch,
  before: ReadonlyArray<Concrete>,
  during: ReadonlyArray<Concrete>,
  world: { readonly outcomes: ReadonlyArray<Json>; readonly state: State }
): void => {
  const { outcomes, state } = world
  outcomes.forEach((outcome, i) => {
    const { error, defect } = outcome as { readonly error?: { readonly _tag: string }; readonly defect?: string }
    expect(defect, `${name}: step ${i} died`).toBeUndefined()
    if (error !== undefined) {
      expect(allowedInBatch.has(error._tag), `${name}: step ${i} failed with ${error._tag}`).toBe(true)
    }
  })
  // Orders: placed ones at version 1 or 2, batch ones only if a dispatch said so.
  const orders = state.orders as Record<
    string,
    {
      readonly status: string
      readonly version: number
      readonly items: ReadonlyArray<{ readonly productId: string; readonly quantity: number }>
    }
  >
  const createdInBatch = new Set(
    outcomes.flatMap((outcome, i) =>
      during[i]!.command._tag === "CreateOrder" && (outcome as { readonly ok?: unknown }).ok !== undefined
        ? [(outcome as { readonly ok: { readonly orderId: string } }).ok.orderId]
        : []
    )
  )
  const placedIds = new Set(batch.placed.map((order) => order.commandId.toLowerCase()))
  for (const id of Object.keys(orders)) {
    expect(placedIds.has(id) || createdInBatch.has(id), `${name}: order ${id} exists, but no dispatch created it`).toBe(
      true
    )
  }
  for (const id of createdInBatch) expect(orders[id], `${name}: order ${id} was reported created`).toBeDefined()
  // An idempotency key (per user) ran its command at most once.
  const byKey = new Map<string, Set<string>>()
  during.forEach(({ command }, i) => {
    const ok = (outcomes[i] as { readonly ok?: unknown }).ok
    if (command.idempotencyKey === undefined || ok === undefined) return
    const key = `${command.userId}/${command.idempotencyKey}/${command._tag}`
    byKey.set(key, new Set([...(byKey.get(key) ?? []), JSON.stringify(ok)]))
  })
  for (const [key, results] of byKey) {
    expect(results.size, `${name}: key ${key} answered with ${[...results].join(", ")}`).toBe(1)
  }
  // Stock: what the restocks put in, less what live orders hold.
  const held: Record<string, number> = { p1: 0, p2: 0 }
  for (const order of Object.values(orders)) {
    if (order.status !== "created") continue
    for (const line of order.items) held[line.productId] = (held[line.productId] ?? 0) + line.quantity
  }
  const placedTotal = batch.placed.reduce((total, order) => total + order.quantity, 0)
  const initial = batchStock(batch)
  expect({ p1: state.stock.p1! + held.p1!, p2: state.stock.p2! + held.p2! }, `${name}: stock conserved`).toEqual({
    p1: initial.p1! + placedTotal,
    p2: initial.p2!
  })
  // Events: one per order created, one per order cancelled, versions contiguous.
  const expectedEvents = Object.values(orders).reduce((total, order) => total + order.version, 0)
  expect(state.events.length, `${name}: events`).toBe(expectedEvents)
  const versions = new Map<string, Array<number>>()
  for (const event of state.events) {
    versions.set(event.aggregateId, [...(versions.get(event.aggregateId) ?? []), event.aggregateVersion])
  }
  for (const [id, seen] of versions) {
    expect([...seen].sort(), `${name}: versions of ${id}`).toEqual(seen.map((_, i) => i + 1))
    expect(orders[id]?.version, `${name}: order ${id} at its last event's version`).toBe(seen.length)
  }
  void before
}

// -----------------------------------------------------------------------------
// the properties
// -----------------------------------------------------------------------------

const describeRun = (run: ReadonlyArray<Concrete>) =>
  run.map(({ command, principal }, i) => `${i}: ${principal?.userId ?? "anon"} ${JSON.stringify(command)}`).join("\n")

const compare = (
  run: ReadonlyArray<Concrete>,
  expected: { readonly outcomes: ReadonlyArray<Json>; readonly state: State },
  actual: { readonly outcomes: ReadonlyArray<Json>; readonly state: State },
  name: string
) => {
  actual.outcomes.forEach((outcome, i) => {
    expect(outcome, `${name}, step ${i} (${run[i]!.command._tag})`).toMatchObject(expected.outcomes[i] as object)
  })
  expect(actual.state.stock, `${name}: stock`).toEqual(expected.state.stock)
  expect(actual.state.orders, `${name}: orders`).toEqual(expected.state.orders)
  expect(actual.state.events, `${name}: events`).toEqual(expected.state.events)
}

const Shared = TestDatabase.layer().pipe(Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None)))

layer(Shared, { excludeTestServices: true, timeout: "600 seconds" })(
  `order domain, model-based: model = in memory = SQL (${TestDatabase.kind})`,
  (it) => {
    it.effect("random command sequences agree, step by step and in the end state", () =>
      Effect.gen(function*() {
        const database = yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
        const quiet = Logger.minimumLogLevel(LogLevel.None)
        const runIn = <A>(world: Effect.Effect<A, unknown, SqlClient.SqlClient | PgClient.PgClient>) =>
          Effect.runPromise(world.pipe(Effect.provide(database), Effect.provide(quiet)))
        const property = fc.asyncProperty(runArb, async ([initial, steps]) => {
          const run = withReplays(concretize(initial, steps))
          const orderIds = [
            ...new Set(
              run.flatMap(({ command }) => command._tag === "CreateOrder" ? [command.commandId.toLowerCase()] : [])
            )
          ]
          const expected = runModel(run, orderIds)
          const memory = await runIn(
            runWorldPublished(run, orderIds, memoryEvents).pipe(Effect.provide(Persistence.layerMemory()))
          )
          const onSql = await runIn(
            Effect.zipRight(
              TestDatabase.truncateAll,
              runWorldPublished(run, orderIds, sqlEvents).pipe(
                // The relay as the service runs it, polling often (notifications wake it anyway).
                Effect.provide(Persistence.layerSql({ pollInterval: "50 millis" }))
              )
            )
          )
          try {
            checkInvariants("in memory", run, memory.outcomes, memory.state)
            checkInvariants(TestDatabase.kind, run, onSql.outcomes, onSql.state)
            // SQL against memory first: a divergence between stores is the finding.
            compare(run, { outcomes: memory.outcomes, state: memory.state }, onSql, `${TestDatabase.kind} vs memory`)
            compare(run, expected, memory, "memory vs model")
            compare(run, expected, onSql, `${TestDatabase.kind} vs model`)
            // Published: every appended event once, in append order (commands ran one at a time).
            expect(memory.published, "memory: published").toEqual(memory.state.events)
            expect(onSql.published, `${TestDatabase.kind}: published`).toEqual(onSql.state.events)
            // The event log: positions 1..n, the appended events in order.
            expect(onSql.log, `${TestDatabase.kind}: event log`).toEqual(memory.log)
            expect(memory.log.map((event) => event.position)).toEqual(memory.state.events.map((_, i) => i + 1))
          } catch (error) {
            throw new Error(`${String(error)}\n--- run ---\n${describeRun(run)}`, { cause: error })
          }
        })
        yield* Effect.promise(() =>
          fc.assert(property, {
            numRuns: Number(process.env.MODEL_RUNS ?? 40),
            ...(process.env.MODEL_SEED === undefined ? {} : { seed: Number(process.env.MODEL_SEED) }),
            endOnFailure: process.env.MODEL_NO_SHRINK !== undefined
          })
        )
      }))

    // Deadlines short enough to cut dispatches anywhere (on the SQL stores;
    // in memory a dispatch is done before any timer). A dispatch that timed
    // out must have left nothing behind (README: "its transaction rolled
    // back ... nothing of it is visible"), and its key must be free again: so
    // the model skips it, and every other outcome and the end state must
    // still be the model's.
    it.effect("with deadlines that cut dispatches, what timed out left nothing, the rest is the model's", () =>
      Effect.gen(function*() {
        const database = yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
        const quiet = Logger.minimumLogLevel(LogLevel.None)
        const runIn = <A>(world: Effect.Effect<A, unknown, SqlClient.SqlClient | PgClient.PgClient>) =>
          Effect.runPromise(world.pipe(Effect.provide(database), Effect.provide(quiet)))
        let timedOut = 0
        const property = fc.asyncProperty(
          runArb,
          fc.integer({
            min: Number(process.env.MODEL_DEADLINE_MIN ?? 1),
            max: Number(process.env.MODEL_DEADLINE_MAX ?? 25)
          }),
          async ([initial, steps], millis) => {
            const run = withReplays(concretize(initial, steps))
            const orderIds = [
              ...new Set(
                run.flatMap(({ command }) => command._tag === "CreateOrder" ? [command.commandId.toLowerCase()] : [])
              )
            ]
            const onSql = await runIn(
              Effect.zipRight(
                TestDatabase.truncateAll,
                // The setup (the first restocks) without a deadline.
                Effect.gen(function*() {
                  const setup = yield* runWorld(run.slice(0, products.length - 1), [], Effect.succeed([]))
                  const rest = yield* runWorld(run.slice(products.length - 1), orderIds, sqlEvents, `${millis} millis`)
                  return { outcomes: [...setup.outcomes, ...rest.outcomes], state: rest.state }
                }).pipe(Effect.provide(Persistence.layerSql(false)))
              )
            )
            const model: Model = { stock: new Map(), orders: new Map(), records: new Map(), events: [] }
            const kept: Array<Concrete> = []
            try {
              onSql.outcomes.forEach((outcome, i) => {
                if ((outcome as { readonly error?: { readonly _tag: string } }).error?._tag === "CommandTimeout") {
                  timedOut++
                  return
                }
                kept.push(run[i]!)
                expect(outcome, `step ${i} (${run[i]!.command._tag})`).toMatchObject(
                  modelDispatch(model, run[i]!) as object
                )
              })
              const expected = runModel(kept, orderIds)
              expect(onSql.state.stock, "stock").toEqual(expected.state.stock)
              expect(onSql.state.orders, "orders").toEqual(expected.state.orders)
              expect(onSql.state.events, "events").toEqual(expected.state.events)
            } catch (error) {
              throw new Error(
                `${String(error)}\n--- run (deadline ${millis} ms) ---\n${describeRun(run)}\n--- outcomes ---\n${
                  onSql.outcomes.map((o, i) => `${i}: ${JSON.stringify(o)}`).join("\n")
                }`,
                { cause: error }
              )
            }
          }
        )
        yield* Effect.promise(() =>
          fc.assert(property, {
            numRuns: Number(process.env.MODEL_DEADLINE_RUNS ?? 30),
            ...(process.env.MODEL_SEED === undefined ? {} : { seed: Number(process.env.MODEL_SEED) }),
            endOnFailure: process.env.MODEL_NO_SHRINK !== undefined
          })
        )
        // Not a check of the code: of the test, that it did cut dispatches.
        if (process.env.MODEL_VERBOSE !== undefined) console.log(`timed out: ${timedOut}`)
      }))

    // Clients that hang up: dispatches interrupted at random points, at once.
    // Each either committed whole (its order, its event, its stock and its
    // key's record) or left nothing, and its key is free at once (README: "a
    // dispatch interrupted as its claim lands ... must not leave the key in
    // flight"): dispatched again with the same key, it replays what committed
    // or runs now, never `IdempotencyKeyInFlight`.
    it.effect("interrupted dispatches commit whole or not at all, and free their keys", () =>
      Effect.gen(function*() {
        const database = yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
        const quiet = Logger.minimumLogLevel(LogLevel.None)
        const runIn = <A>(world: Effect.Effect<A, unknown, SqlClient.SqlClient | PgClient.PgClient>) =>
          Effect.runPromise(world.pipe(Effect.provide(database), Effect.provide(quiet)))
        const interruptArb = fc.record({
          stock: fc.integer({ min: 0, max: 20 }),
          orders: fc.uniqueArray(
            fc.record({
              quantity: fc.integer({ min: 1, max: 4 }),
              commandId: fc.uuid(),
              key: fc.option(fc.string({ minLength: 1, maxLength: 4 }), { freq: 4 }),
              yields: fc.integer({ min: 0, max: Number(process.env.MODEL_YIELDS ?? 3000) })
            }),
            { minLength: 1, maxLength: 10, selector: (order) => order.commandId }
          )
        })
        const property = fc.asyncProperty(interruptArb, async ({ orders, stock }) => {
          const commands = orders.map((order) =>
            new CreateOrder({
              commandId: order.commandId,
              customerId: customers[0],
              items: [{ productId: "p1", quantity: order.quantity }],
              shippingAddress,
              userId: "alice",
              // Distinct keys: one order per key.
              idempotencyKey: `${order.key ?? "k"}-${order.commandId}`
            })
          )
          const world = Effect.gen(function*() {
            const bus = OrderBus.make()
            yield* bus.dispatch(new RestockProduct({ productId: "p1", available: stock, userId: "admin" })).pipe(
              CurrentUser.as(principals.admin!)
            )
            const fibers = yield* Effect.forEach(
              commands,
              (command) => Effect.fork(bus.dispatch(command).pipe(CurrentUser.as(principals.alice!))),
              { concurrency: "unbounded" }
            )
            // Each is interrupted after its own number of scheduler turns.
            const firstExits = yield* Effect.forEach(
              fibers,
              (fiber, i) =>
                Effect.zipRight(
                  Effect.repeatN(Effect.yieldNow(), orders[i]!.yields),
                  Effect.map(Fiber.interrupt(fiber), outcomeOf)
                ),
              { concurrency: "unbounded" }
            )
            // Again, each with its key: a replay of what committed, or a run now.
            const secondExits = yield* Effect.forEach(
              commands,
              (command) => Effect.exit(bus.dispatch(command).pipe(CurrentUser.as(principals.alice!))),
              { concurrency: "unbounded" }
            ).pipe(Effect.map((exits) => exits.map(outcomeOf)))
            const orderIds = commands.map((command) => command.commandId.toLowerCase())
            return { firstExits, secondExits, orderIds }
          })
          const check = (
            name: string,
            result: {
              readonly firstExits: ReadonlyArray<Json>
              readonly secondExits: ReadonlyArray<Json>
              readonly state: State
            }
          ) => {
            const { firstExits, secondExits, state } = result
            secondExits.forEach((outcome, i) => {
              const error = (outcome as { readonly error?: { readonly _tag: string } }).error
              const defect = (outcome as { readonly defect?: string }).defect
              expect(defect, `${name}: order ${i} again died`).toBeUndefined()
              expect(error?._tag, `${name}: order ${i} again`).not.toBe("IdempotencyKeyInFlight")
              const first = firstExits[i] as { readonly ok?: unknown }
              if (first.ok !== undefined) {
                expect(outcome, `${name}: order ${i} replays its first outcome`).toEqual(first)
              }
            })
            // Stock conserved, one event per order, no order without its event.
            const held = Object.values(
              state.orders as Record<string, { readonly items: ReadonlyArray<{ readonly quantity: number }> }>
            )
              .reduce((total, order) => total + order.items[0]!.quantity, 0)
            expect(state.stock.p1! + held, `${name}: stock conserved`).toBe(stock)
            expect(state.events.length, `${name}: one event per order`).toBe(Object.keys(state.orders).length)
            const succeeded = secondExits.filter((outcome) =>
              (outcome as { readonly ok?: unknown }).ok !== undefined
            ).length
            expect(Object.keys(state.orders).length, `${name}: orders = successes`).toBe(succeeded)
          }
          const memory = await runIn(
            Effect.flatMap(
              world,
              (result) => Effect.map(readState(result.orderIds, memoryEvents), (state) => ({ ...result, state }))
            ).pipe(
              Effect.provide(Persistence.layerMemory())
            )
          )
          const onSql = await runIn(
            Effect.zipRight(
              TestDatabase.truncateAll,
              Effect.flatMap(
                world,
                (result) => Effect.map(readState(result.orderIds, sqlEvents), (state) => ({ ...result, state }))
              ).pipe(
                Effect.provide(Persistence.layerSql(false))
              )
            ).pipe(
              // On a server: no connection left inside a transaction by an interrupted dispatch.
              Effect.tap(() =>
                TestDatabase.serverUrl === undefined ?
                  Effect.void :
                  Effect.flatMap(SqlClient.SqlClient, (sql) =>
                    Effect.flatMap(
                      sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity
                      WHERE datname = current_database() AND state LIKE 'idle in transaction%'`,
                      (rows) =>
                        rows[0]!.n === 0
                          ? Effect.void
                          : Effect.fail(new Error(`${rows[0]!.n} connections idle in transaction`))
                    ).pipe(Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("2 seconds")))))
              ),
              Effect.timeoutFail({
                duration: "30 seconds",
                onTimeout: () => new Error("stuck")
              })
            )
          )
          if (process.env.MODEL_VERBOSE !== undefined) {
            console.log(
              onSql.firstExits.map((o) => (o as { readonly ok?: unknown }).ok === undefined ? "x" : "ok").join(" "),
              "|",
              memory.firstExits.map((o) => (o as { readonly ok?: unknown }).ok === undefined ? "x" : "ok").join(" ")
            )
          }
          for (const [name, result] of [["in memory", memory], [TestDatabase.kind, onSql]] as const) {
            try {
              check(name, result)
            } catch (error) {
              throw new Error(
                `${String(error)}\n--- first ---\n${
                  result.firstExits.map((o, i) => `${i}: ${JSON.stringify(o)}`).join("\n")
                }` +
                  `\n--- again ---\n${result.secondExits.map((o, i) => `${i}: ${JSON.stringify(o)}`).join("\n")}` +
                  `\n--- state ---\n${JSON.stringify(result.state)}`,
                { cause: error }
              )
            }
          }
        })
        yield* Effect.promise(() =>
          fc.assert(property, {
            numRuns: Number(process.env.MODEL_INTERRUPT_RUNS ?? 30),
            ...(process.env.MODEL_SEED === undefined ? {} : { seed: Number(process.env.MODEL_SEED) }),
            endOnFailure: process.env.MODEL_NO_SHRINK !== undefined
          })
        )
      }))

    // The same commands at once: no model of the interleaving, but what every
    // interleaving must keep. Stock is only reserved and given back here (no
    // restock in the batch), so it is conserved; a key runs its command once.
    it.effect("concurrent batches keep stock, versions, events and idempotency", () =>
      Effect.gen(function*() {
        const database = yield* Effect.context<SqlClient.SqlClient | PgClient.PgClient>()
        const quiet = Logger.minimumLogLevel(LogLevel.None)
        const runIn = <A>(world: Effect.Effect<A, unknown, SqlClient.SqlClient | PgClient.PgClient>) =>
          Effect.runPromise(world.pipe(Effect.provide(database), Effect.provide(quiet)))
        const property = fc.asyncProperty(batchArb, async (batch) => {
          const { before, during } = concretizeBatch(batch)
          const orderIds = [
            ...new Set(
              [...before, ...during].flatMap(({ command }) =>
                command._tag === "CreateOrder" ? [command.commandId.toLowerCase()] : []
              )
            )
          ]
          const memory = await runIn(
            runBatch(before, during, orderIds, memoryEvents).pipe(Effect.provide(Persistence.layerMemory()))
          )
          const onSql = await runIn(
            Effect.zipRight(
              TestDatabase.truncateAll,
              runBatch(before, during, orderIds, sqlEvents).pipe(Effect.provide(Persistence.layerSql(false)))
            )
          )
          for (const [name, world] of [["in memory", memory], [TestDatabase.kind, onSql]] as const) {
            try {
              checkBatch(name, batch, before, during, world)
            } catch (error) {
              throw new Error(
                `${String(error)}\n--- before ---\n${describeRun(before)}\n--- at once ---\n${describeRun(during)}\n` +
                  `--- outcomes ---\n${world.outcomes.map((o, i) => `${i}: ${JSON.stringify(o)}`).join("\n")}`,
                { cause: error }
              )
            }
          }
        })
        yield* Effect.promise(() =>
          fc.assert(property, {
            numRuns: Number(process.env.MODEL_BATCH_RUNS ?? 30),
            ...(process.env.MODEL_SEED === undefined ? {} : { seed: Number(process.env.MODEL_SEED) }),
            endOnFailure: process.env.MODEL_NO_SHRINK !== undefined
          })
        )
      }))
  }
)
