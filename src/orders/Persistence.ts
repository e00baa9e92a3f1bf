/**
 * Every store the order service needs, in memory or on PostgreSQL. The two
 * layers provide the same service tags; handlers and the bus do not change.
 *
 * @since 0.1.0
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Layer from "effect/Layer"
import type { EventPublisher, Idempotency, Outbox, UnitOfWork } from "../index.js"
import type { OutboxRelay } from "../sql/index.js"
import { SqlStores } from "../sql/index.js"
import { InMemory } from "../testing/index.js"
import * as Inventory from "./Inventory.js"
import * as OrderRepository from "./OrderRepository.js"

/**
 * @since 0.1.0
 * @category models
 */
export type Stores =
  | OrderRepository.OrderRepository
  | Inventory.Inventory
  | Outbox.Outbox
  | Idempotency.IdempotencyStore
  | UnitOfWork.UnitOfWork
  | EventPublisher.EventPublisher

/**
 * In memory: for unit tests and examples.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (stock?: Iterable<readonly [string, number]>): Layer.Layer<Stores> =>
  Layer.mergeAll(InMemory.layer, OrderRepository.layerMemory, Inventory.layerMemory(stock))

/**
 * On PostgreSQL (a server or PGlite): the order's repositories beside the
 * library's stores (`SqlStores.layer`), with the outbox relay publishing to
 * an in-memory `EventPublisher` while the layer lives. The idempotency
 * store is the SQL one unless another is given.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerSql = <E = never, R = never>(
  relay: OutboxRelay.Options | false = {},
  idempotency?: Layer.Layer<Idempotency.IdempotencyStore, E, R>
): Layer.Layer<Stores, E, SqlClient.SqlClient | PgClient.PgClient | R> =>
  Layer.mergeAll(OrderRepository.layerSql, Inventory.layerSql, SqlStores.layer({ relay, idempotency }))
