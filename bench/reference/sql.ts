/**
 * The create-order transaction on a bare `pg` pool: the statements the
 * service sends, copied from `src/sql/SqlIdempotencyStore.ts`,
 * `src/orders/Inventory.ts`, `src/orders/OrderRepository.ts` and
 * `src/sql/SqlOutbox.ts` with their interpolations as `$n` parameters in the
 * same order. The reference implementation and the bare SQL baseline both
 * run them, so the two differ only by what stands in front of the database.
 */
import { createHash, randomUUID } from "node:crypto"
import type { Pool, PoolClient } from "pg"

export interface OrderLine {
  readonly productId: string
  readonly quantity: number
}

export interface ShippingAddress {
  readonly line1: string
  readonly line2?: string
  readonly city: string
  readonly postalCode: string
  readonly country: string
}

export interface NewOrder {
  readonly id: string
  readonly customerId: string
  readonly userId: string
  readonly items: ReadonlyArray<OrderLine>
  readonly shippingAddress: ShippingAddress
  readonly correlationId: string
}

/** What a key's record replays: the response first given. */
export interface StoredResponse {
  readonly status: number
  readonly body: unknown
}

export type Claim =
  | { readonly _tag: "Claimed"; readonly token: string }
  | { readonly _tag: "InFlight"; readonly fingerprint: string }
  | { readonly _tag: "Completed"; readonly fingerprint: string; readonly result: StoredResponse }

/** The key of an idempotent request: who sent it, the key, and what it asked. */
export interface IdempotencyRequest {
  readonly scope: string
  readonly key: string
  readonly fingerprint: string
  readonly commandType: string
}

/** Lease and retention, as the service's defaults. */
export const leaseSeconds = 60
export const retentionSeconds = 24 * 60 * 60

// -----------------------------------------------------------------------------
// statements
// -----------------------------------------------------------------------------

/** 1. Claim (autocommit). $1 scope, $2 key, $3 command type, $4 fingerprint, $5 token, $6 lease s, $7 retention s, $8 scope, $9 key. */
export const claimSql = `
            INSERT INTO idempotency_keys
              (scope, key, command_type, fingerprint, state, token, lease_expires_at, expires_at)
            VALUES ($1, $2, $3, $4,
              'in_flight', $5, now() + make_interval(secs => $6),
              now() + make_interval(secs => $7))
            ON CONFLICT (scope, key) DO UPDATE SET
              command_type = EXCLUDED.command_type, fingerprint = EXCLUDED.fingerprint,
              state = 'in_flight', token = EXCLUDED.token, result = NULL,
              lease_expires_at = EXCLUDED.lease_expires_at, expires_at = EXCLUDED.expires_at
            WHERE idempotency_keys.expires_at <= now()
               OR (idempotency_keys.state = 'in_flight' AND idempotency_keys.lease_expires_at <= now())
            RETURNING true AS claimed`

export const existingSql = `SELECT false AS claimed, fingerprint, state, result FROM idempotency_keys
                    WHERE scope = $1 AND key = $2`

/** 3. Reserve every line or report which were taken. $1 lines as jsonb. */
export const reserveSql = `
            WITH requested AS (
              SELECT product_id, quantity FROM unnest($1::text[], $2::integer[])
                AS r(product_id, quantity)
            ), locked AS (
              SELECT i.product_id FROM inventory AS i
              WHERE i.product_id = ANY($1::text[])
              ORDER BY i.product_id FOR UPDATE
            )
            UPDATE inventory AS i SET available = i.available - r.quantity, updated_at = now()
            FROM locked AS l JOIN requested AS r USING (product_id)
            WHERE i.product_id = l.product_id AND i.available >= r.quantity
            RETURNING i.product_id`

export const availableSql = `SELECT available FROM inventory WHERE product_id = $1`

/** 4. $1 id … $10 cancel_reason. */
export const insertOrderSql =
  `INSERT INTO orders (id, customer_id, user_id, status, version, items, shipping_address, created_at,
            updated_at, cancel_reason)
          VALUES ($1, $2, $3, $4, $5,
            $6::jsonb, $7::jsonb,
            $8, $9,
            $10)
          ON CONFLICT (id) DO NOTHING
          RETURNING 1 AS inserted`

/** 5. $1 the events as jsonb. */
export const appendOutboxSql =
  `INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
              correlation_id, causation_id, occurred_at)
            SELECT event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
              correlation_id, causation_id, occurred_at
            FROM jsonb_to_recordset($1::jsonb) AS x(event_id uuid, event_type text, aggregate_type text, aggregate_id text,
              aggregate_version integer, payload jsonb, correlation_id text, causation_id text,
              occurred_at timestamptz)`

/** 6. $1 result, $2 retention s, $3 scope, $4 key, $5 token. */
export const completeSql = `
            UPDATE idempotency_keys
            SET state = 'completed', result = $1::jsonb, lease_expires_at = NULL,
                expires_at = now() + make_interval(secs => $2)
            WHERE scope = $3 AND key = $4 AND token = $5
              AND state = 'in_flight'
            RETURNING true AS ok`

/** Drops a claim whose request failed for a reason worth retrying. */
export const releaseSql = `DELETE FROM idempotency_keys
              WHERE scope = $1 AND key = $2 AND token = $3
                AND state = 'in_flight'`

export const setAvailableSql = `INSERT INTO inventory (product_id, available) VALUES ($1, $2)
            ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, updated_at = now()`

// -----------------------------------------------------------------------------
// operations
// -----------------------------------------------------------------------------

interface ClaimRow {
  readonly claimed: boolean
  readonly fingerprint: string
  readonly state: "in_flight" | "completed"
  readonly result: StoredResponse | null
}

/** SHA-256 of JSON with sorted keys: equal payloads, equal fingerprints. */
export const fingerprint = (payload: unknown): string =>
  createHash("sha256").update(JSON.stringify(payload, (_key, value: unknown) => {
    if (value === null || typeof value !== "object" || Array.isArray(value)) return value
    const sorted: Record<string, unknown> = {}
    for (const key of Object.keys(value).sort()) sorted[key] = (value as Record<string, unknown>)[key]
    return sorted
  })).digest("hex")

export const claim = async (pool: Pool, request: IdempotencyRequest): Promise<Claim> => {
  const token = randomUUID()
  let { rows } = await pool.query<ClaimRow>(claimSql, [
    request.scope,
    request.key,
    request.commandType,
    request.fingerprint,
    token,
    leaseSeconds,
    retentionSeconds
  ])
  if (rows.length === 0) ({ rows } = await pool.query<ClaimRow>(existingSql, [request.scope, request.key]))
  const row = rows[0]
  if (row === undefined) throw new Error("idempotency claim found neither a claim nor a record")
  return row.claimed
    ? { _tag: "Claimed", token }
    : row.state === "completed"
    ? { _tag: "Completed", fingerprint: row.fingerprint, result: row.result! }
    : { _tag: "InFlight", fingerprint: row.fingerprint }
}

/** Records the response of the claim `token` holds; false when the claim was lost. */
export const complete = async (
  db: Pool | PoolClient,
  request: IdempotencyRequest,
  token: string,
  result: StoredResponse
): Promise<boolean> => {
  const { rows } = await db.query(completeSql, [
    JSON.stringify(result),
    retentionSeconds,
    request.scope,
    request.key,
    token
  ])
  return rows.length === 1
}

export const release = async (pool: Pool, request: IdempotencyRequest, token: string): Promise<void> => {
  await pool.query(releaseSql, [request.scope, request.key, token])
}

export const setAvailable = async (pool: Pool, productId: string, available: number): Promise<void> => {
  await pool.query(setAvailableSql, [productId, available])
}

// Sorted by product so concurrent reservations lock rows in one order.
const linesParam = (
  items: ReadonlyArray<OrderLine>
): { readonly productIds: Array<string>; readonly quantities: Array<number>; readonly size: number } => {
  const totals = new Map<string, number>()
  for (const line of items) totals.set(line.productId, (totals.get(line.productId) ?? 0) + line.quantity)
  const sorted = [...totals].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  return {
    productIds: sorted.map(([productId]) => productId),
    quantities: sorted.map(([, quantity]) => quantity),
    size: sorted.length
  }
}

export type PlaceOrderOutcome =
  | { readonly _tag: "Created" }
  | {
    readonly _tag: "InsufficientInventory"
    readonly productId: string
    readonly requested: number
    readonly available: number
  }
  | { readonly _tag: "AlreadyExists" }
  | { readonly _tag: "ClaimLost" }

/**
 * Statements 2 to 7: reserve, insert the order, append its `OrderCreated`,
 * record the response under the claim (when there is one), commit. Any
 * outcome but `Created` rolls back.
 */
export const placeOrder = async (
  pool: Pool,
  order: NewOrder,
  idempotency?: { readonly request: IdempotencyRequest; readonly token: string; readonly response: StoredResponse }
): Promise<PlaceOrderOutcome> => {
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    await client.query("BEGIN")
    try {
      const outcome = await placeIn(client, order, idempotency)
      await client.query(outcome._tag === "Created" ? "COMMIT" : "ROLLBACK")
      return outcome
    } catch (error) {
      await client.query("ROLLBACK").catch((rollbackError: Error) => {
        broken = rollbackError
      })
      throw error
    }
  } finally {
    client.release(broken)
  }
}

const placeIn = async (
  client: PoolClient,
  order: NewOrder,
  idempotency?: { readonly request: IdempotencyRequest; readonly token: string; readonly response: StoredResponse }
): Promise<PlaceOrderOutcome> => {
  const lines = linesParam(order.items)
  const taken = await client.query<{ readonly product_id: string }>(reserveSql, [lines.productIds, lines.quantities])
  if (taken.rows.length !== lines.size) {
    const takenIds = new Set(taken.rows.map((row) => row.product_id))
    const short = order.items.find((line) => !takenIds.has(line.productId))!
    const { rows } = await client.query<{ readonly available: number }>(availableSql, [short.productId])
    return {
      _tag: "InsufficientInventory",
      productId: short.productId,
      requested: short.quantity,
      available: rows[0]?.available ?? 0
    }
  }
  const now = new Date().toISOString()
  const inserted = await client.query(insertOrderSql, [
    order.id,
    order.customerId,
    order.userId,
    "created",
    1,
    JSON.stringify(order.items),
    JSON.stringify(order.shippingAddress),
    now,
    now,
    null
  ])
  if (inserted.rows.length !== 1) return { _tag: "AlreadyExists" }
  await client.query(appendOutboxSql, [JSON.stringify([{
    event_id: randomUUID(),
    event_type: "OrderCreated",
    aggregate_type: "Order",
    aggregate_id: order.id,
    aggregate_version: 1,
    payload: {
      _tag: "OrderCreated",
      orderId: order.id,
      customerId: order.customerId,
      userId: order.userId,
      items: order.items,
      shippingAddress: order.shippingAddress
    },
    correlation_id: order.correlationId,
    causation_id: order.id,
    occurred_at: now
  }])])
  if (idempotency !== undefined) {
    const held = await complete(client, idempotency.request, idempotency.token, idempotency.response)
    if (!held) return { _tag: "ClaimLost" }
  }
  return { _tag: "Created" }
}
