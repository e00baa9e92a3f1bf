/**
 * Where orders live. Saving is optimistic: an update names the version it
 * was read at, and fails with `ConcurrencyConflict` if that is stale.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { CommandError, Tracing } from "../index.js"
import { SqlFailure, SqlStatement } from "../sql/index.js"
import { aggregateType, Order, OrderAlreadyExists, type OrderLine, type ShippingAddress } from "./Order.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly findById: (id: string) => Effect.Effect<Option.Option<Order>>
  /**
   * Stores a new order; an existing id fails with `OrderAlreadyExists`, at
   * once or, for an insert held for its transaction's commit, at the commit.
   */
  readonly insert: (order: Order) => Effect.Effect<void, OrderAlreadyExists>
  /** Replaces the order read at `expectedVersion`. */
  readonly update: (order: Order, expectedVersion: number) => Effect.Effect<void, CommandError.ConcurrencyConflict>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class OrderRepository extends Context.Tag("orders/OrderRepository")<OrderRepository, Service>() {}

/**
 * In memory, with the same version check the SQL repository does. Each
 * operation is one synchronous step, so concurrent fibers cannot interleave
 * inside it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service> = Effect.sync(() => {
  // Keyed by the id in lowercase: PostgreSQL's uuid compares ids whatever
  // their case, and so does this store.
  const orders = new Map<string, Order>()
  return {
    findById: (id) => Effect.sync(() => Option.fromNullable(orders.get(id.toLowerCase()))),
    insert: (order) =>
      Effect.suspend(() => {
        const key = order.id.toLowerCase()
        if (orders.has(key)) return Effect.fail(new OrderAlreadyExists({ orderId: order.id }))
        orders.set(key, order)
        return Effect.void
      }),
    update: (order, expectedVersion) =>
      Effect.suspend(() => {
        const key = order.id.toLowerCase()
        if (orders.get(key)?.version !== expectedVersion) {
          return Effect.fail(
            new CommandError.ConcurrencyConflict({ aggregateType, aggregateId: order.id, expectedVersion })
          )
        }
        orders.set(key, order)
        return Effect.void
      })
  }
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<OrderRepository> = Layer.effect(OrderRepository, makeMemory)

interface OrderRow {
  readonly id: string
  readonly customer_id: string
  readonly user_id: string
  readonly status: "created" | "cancelled"
  readonly version: number
  readonly items: ReadonlyArray<OrderLine>
  readonly shipping_address: ShippingAddress
  readonly created_at: Date
  readonly updated_at: Date
  readonly cancel_reason: string | null
}

const fromRow = (row: OrderRow): Order =>
  new Order({
    id: row.id,
    customerId: row.customer_id,
    userId: row.user_id,
    status: row.status,
    version: row.version,
    items: row.items,
    shippingAddress: row.shipping_address,
    createdAt: DateTime.unsafeMake(row.created_at),
    updatedAt: DateTime.unsafeMake(row.updated_at),
    ...(row.cancel_reason === null ? {} : { cancelReason: row.cancel_reason })
  }, { disableValidation: true })

// A unique violation of the orders' primary key: the id is taken.
const isDuplicateId = (error: SqlError): boolean =>
  SqlFailure.sqlState(error) === "23505" &&
  (error.cause as { readonly constraint?: unknown } | null | undefined)?.constraint === "orders_pkey"

/**
 * On PostgreSQL, one statement per operation. Database errors are defects
 * here (a handler's error channel holds its domain errors only); the unit of
 * work reports outages as `StoreUnavailable`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeSql: Effect.Effect<Service, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): Service => ({
    findById: (id) =>
      SqlStatement.rows(
        sql<OrderRow>`SELECT id, customer_id, user_id, status, version, items, shipping_address, created_at,
                      updated_at, cancel_reason
                    FROM orders WHERE id = ${id}`
      ).pipe(
        Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), fromRow)),
        Effect.orDie,
        Tracing.withSpan("OrderRepository.findById")
      ),
    // In the service's transaction the insert goes out with its COMMIT
    // (`SqlStatement.holdForCommit`): an existing id then fails the commit,
    // with `OrderAlreadyExists` as at once, and the transaction rolls back.
    insert: (order) => {
      const columns = sql`(id, customer_id, user_id, status, version, items, shipping_address, created_at,
            updated_at, cancel_reason)
          VALUES (${order.id}, ${order.customerId}, ${order.userId}, ${order.status}, ${order.version},
            ${JSON.stringify(order.items)}::jsonb, ${JSON.stringify(order.shippingAddress)}::jsonb,
            ${DateTime.formatIso(order.createdAt)}, ${DateTime.formatIso(order.updatedAt)},
            ${order.cancelReason ?? null})`
      // Built only on failure: a tagged error's constructor captures a stack.
      const alreadyExists = Effect.failSync(() => new OrderAlreadyExists({ orderId: order.id }))
      const now = () =>
        SqlStatement.rows(
          sql`INSERT INTO orders ${columns} ON CONFLICT (id) DO NOTHING RETURNING 1 AS inserted`
        ).pipe(
          Effect.orDie,
          Effect.flatMap((rows) => rows.length === 1 ? Effect.void : alreadyExists)
        )
      return SqlStatement.holdForCommit(
        sql`INSERT INTO orders ${columns}`,
        (error) => isDuplicateId(error) ? alreadyExists : Effect.die(error)
      ).pipe(
        Effect.flatMap((held) => held ? Effect.void : now()),
        Tracing.withSpan("OrderRepository.insert")
      )
    },
    update: (order, expectedVersion) =>
      SqlStatement.rows(sql`UPDATE orders SET status = ${order.status}, version = ${order.version},
            items = ${JSON.stringify(order.items)}::jsonb,
            shipping_address = ${JSON.stringify(order.shippingAddress)}::jsonb,
            updated_at = ${DateTime.formatIso(order.updatedAt)}, cancel_reason = ${order.cancelReason ?? null}
          WHERE id = ${order.id} AND version = ${expectedVersion}
          RETURNING 1 AS updated`).pipe(
        Effect.orDie,
        Effect.flatMap((rows) =>
          rows.length === 1
            ? Effect.void
            : Effect.fail(
              new CommandError.ConcurrencyConflict({ aggregateType, aggregateId: order.id, expectedVersion })
            )
        ),
        Tracing.withSpan("OrderRepository.update")
      )
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerSql: Layer.Layer<OrderRepository, never, SqlClient.SqlClient> = Layer.effect(
  OrderRepository,
  makeSql
)
