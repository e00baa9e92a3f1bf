/**
 * Stock per product. Reserving is all-or-nothing for an order's lines and
 * never lets stock go below zero, however many dispatches run at once.
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Tracing } from "../index.js"
import { SqlStatement } from "../sql/index.js"
import type { OrderLine } from "./Order.js"

/**
 * @since 0.1.0
 * @category errors
 */
export class InsufficientInventory extends Schema.TaggedError<InsufficientInventory>()(
  "InsufficientInventory",
  { productId: Schema.String, requested: Schema.Int, available: Schema.Int },
  HttpApiSchema.annotations({ status: 409, title: "Insufficient inventory" })
) {
  override get message() {
    return `Product ${this.productId}: ${this.requested} requested, ${this.available} available`
  }
}

/**
 * The most a product's stock can hold: PostgreSQL's `integer`, the column's
 * type. Stock given back (a cancelled order's) saturates here rather than
 * fail, so an order can always be cancelled.
 *
 * @since 0.1.0
 * @category constants
 */
export const maxAvailable = 2_147_483_647

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Takes every line's quantity from stock, or none of them. */
  readonly reserve: (lines: ReadonlyArray<OrderLine>) => Effect.Effect<void, InsufficientInventory>
  /** Puts the lines' quantities back, up to `maxAvailable`. */
  readonly release: (lines: ReadonlyArray<OrderLine>) => Effect.Effect<void>
  /** Sets the available quantity of a product (a stock count). */
  readonly setAvailable: (productId: string, available: number) => Effect.Effect<void>
  /** The available quantity; 0 for a product never stocked. */
  readonly available: (productId: string) => Effect.Effect<number>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Inventory extends Context.Tag("orders/Inventory")<Inventory, Service>() {}

/**
 * The quantity per product, summing lines that name the same product, so a
 * reservation checks what is really taken.
 *
 * @since 0.1.0
 * @category utils
 */
export const totalsByProduct = (lines: ReadonlyArray<OrderLine>): Map<string, number> => {
  const totals = new Map<string, number>()
  for (const line of lines) totals.set(line.productId, (totals.get(line.productId) ?? 0) + line.quantity)
  return totals
}

/**
 * In memory. Each operation is one synchronous step, so a reservation checks
 * and takes every line before any other fiber runs.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory = (initial: Iterable<readonly [string, number]> = []): Effect.Effect<Service> =>
  Effect.sync(() => {
    const stock = new Map(initial)
    return {
      reserve: (lines) =>
        Effect.suspend(() => {
          const requested = totalsByProduct(lines)
          for (const [productId, quantity] of requested) {
            const available = stock.get(productId) ?? 0
            if (available < quantity) {
              return Effect.fail(new InsufficientInventory({ productId, requested: quantity, available }))
            }
          }
          for (const [productId, quantity] of requested) stock.set(productId, stock.get(productId)! - quantity)
          return Effect.void
        }),
      release: (lines) =>
        Effect.sync(() => {
          for (const line of lines) {
            stock.set(line.productId, Math.min((stock.get(line.productId) ?? 0) + line.quantity, maxAvailable))
          }
        }),
      setAvailable: (productId, available) => Effect.sync(() => void stock.set(productId, available)),
      available: (productId) => Effect.sync(() => stock.get(productId) ?? 0)
    }
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (initial?: Iterable<readonly [string, number]>): Layer.Layer<Inventory> =>
  Layer.effect(Inventory, makeMemory(initial))

// Lines as two array parameters (product ids, quantities), sorted by product
// so concurrent reservations lock inventory rows in the same order and cannot
// deadlock. Arrays cost the planner less than a jsonb recordset.
const linesParams = (totals: Map<string, number>) => {
  const sorted = [...totals].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  return { productIds: sorted.map(([productId]) => productId), quantities: sorted.map(([, quantity]) => quantity) }
}

/**
 * On PostgreSQL: a reservation is one conditional `UPDATE` for every line
 * (`available >= quantity`), and the `CHECK (available >= 0)` backs it, so
 * stock cannot be oversold by any number of concurrent commands or
 * instances. If a line falls short, the lines already taken are put back in
 * the same transaction, so the reservation is all-or-nothing on its own.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeSql: Effect.Effect<Service, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): Service => {
    const give = (lines: ReturnType<typeof linesParams>) =>
      SqlStatement.run(sql`WITH requested AS (
            SELECT product_id, quantity FROM unnest(${lines.productIds}::text[], ${lines.quantities}::integer[])
              AS r(product_id, quantity)
          ), locked AS (
            SELECT i.product_id FROM inventory AS i
            WHERE i.product_id = ANY(${lines.productIds}::text[])
            ORDER BY i.product_id FOR UPDATE
          )
          UPDATE inventory AS i
          SET available = LEAST(i.available::bigint + r.quantity, ${maxAvailable})::integer, updated_at = now()
          FROM locked AS l JOIN requested AS r USING (product_id)
          WHERE i.product_id = l.product_id`)
    return {
      reserve: (lines) =>
        Effect.gen(function*() {
          const totals = totalsByProduct(lines)
          const params = linesParams(totals)
          // The rows are locked first, in product order, so that concurrent
          // reservations of the same products cannot deadlock (a plain UPDATE
          // … FROM may lock them in any order the plan visits them). The
          // stock is checked on the row written, which PostgreSQL checks
          // again on its newest version: the CTE's copy of it can be an older
          // one, and checked there, a give-back committing meanwhile let a
          // reservation past this check into the CHECK constraint.
          const taken = yield* SqlStatement.rows(sql<{ readonly product_id: string }>`
            WITH requested AS (
              SELECT product_id, quantity FROM unnest(${params.productIds}::text[], ${params.quantities}::integer[])
                AS r(product_id, quantity)
            ), locked AS (
              SELECT i.product_id FROM inventory AS i
              WHERE i.product_id = ANY(${params.productIds}::text[])
              ORDER BY i.product_id FOR UPDATE
            )
            UPDATE inventory AS i SET available = i.available - r.quantity, updated_at = now()
            FROM locked AS l JOIN requested AS r USING (product_id)
            WHERE i.product_id = l.product_id AND i.available >= r.quantity
            RETURNING i.product_id`)
          if (taken.length === totals.size) return
          const takenIds = new Set(taken.map((row) => row.product_id))
          if (takenIds.size > 0) {
            yield* give(linesParams(new Map([...totals].filter(([productId]) => takenIds.has(productId)))))
          }
          const [productId, requested] = [...totals].find(([productId]) => !takenIds.has(productId))!
          const [row] = yield* SqlStatement.rows(sql<{ readonly available: number }>`
            SELECT available FROM inventory WHERE product_id = ${productId}`)
          return yield* new InsufficientInventory({ productId, requested, available: row?.available ?? 0 })
        }).pipe(
          Effect.catchTag("SqlError", Effect.die),
          Tracing.withSpan("Inventory.reserve")
        ),
      release: (lines) =>
        give(linesParams(totalsByProduct(lines))).pipe(
          Effect.asVoid,
          Effect.orDie,
          Tracing.withSpan("Inventory.release")
        ),
      setAvailable: (productId, available) =>
        sql`INSERT INTO inventory (product_id, available) VALUES (${productId}, ${available})
            ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, updated_at = now()`.raw.pipe(
          Effect.asVoid,
          Effect.orDie,
          Tracing.withSpan("Inventory.setAvailable")
        ),
      available: (productId) =>
        sql<{ readonly available: number }>`SELECT available FROM inventory WHERE product_id = ${productId}`
          .withoutTransform.pipe(
            Effect.map((rows) => rows[0]?.available ?? 0),
            Effect.orDie,
            Tracing.withSpan("Inventory.available")
          )
    }
  }
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerSql: Layer.Layer<Inventory, never, SqlClient.SqlClient> = Layer.effect(Inventory, makeSql)
