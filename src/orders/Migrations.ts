/**
 * The order service's tables, recorded in their own migrations table beside
 * the library's.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import { SqlMigrations } from "../sql/index.js"

/**
 * Each migration's statements; a released one never changes (see
 * `SqlMigrations.sources`).
 *
 * @since 0.1.0
 * @category migrations
 */
export const sources: Readonly<Record<string, ReadonlyArray<string>>> = {
  "1_orders": [
    `CREATE TABLE orders (
      id uuid PRIMARY KEY,
      customer_id uuid NOT NULL,
      user_id text NOT NULL,
      status text NOT NULL CHECK (status IN ('created', 'cancelled')),
      version integer NOT NULL CHECK (version > 0),
      items jsonb NOT NULL,
      shipping_address jsonb NOT NULL,
      created_at timestamptz NOT NULL,
      updated_at timestamptz NOT NULL,
      cancel_reason text
    )`,
    `CREATE INDEX orders_user ON orders (user_id)`
  ],
  "2_inventory": [
    `CREATE TABLE inventory (
      product_id text PRIMARY KEY,
      available integer NOT NULL CHECK (available >= 0),
      updated_at timestamptz NOT NULL DEFAULT now()
    )`
  ]
}

/**
 * @since 0.1.0
 * @category migrations
 */
export const migrations = SqlMigrations.fromSources(sources)

/**
 * Runs the library's migrations, then the order service's.
 *
 * @since 0.1.0
 * @category migrations
 */
export const run = Effect.zipRight(SqlMigrations.run, SqlMigrations.runWith({ table: "orders_migrations", sources }))
