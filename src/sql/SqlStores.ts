/**
 * What the bus needs, on PostgreSQL, in one layer: the services
 * `InMemory.layer` of the test kit provides in memory, so an application
 * swaps one for the other and nothing else changes.
 *
 * - `Outbox`: `SqlOutbox`, in the dispatch's transaction;
 * - `IdempotencyStore`: `SqlIdempotencyStore` (its records in the
 *   dispatch's transaction, pruned every minute), unless another layer is
 *   given (`RedisIdempotencyStore.layer`, say);
 * - `UnitOfWork`: `SqlUnitOfWork`, on the pool's own connections when a
 *   `SqlUnitOfWork.PgPool` of the client is in context (`PgPool.layer`
 *   provides one), on `sql.withTransaction` otherwise (PGlite,
 *   `PgClient.layer`);
 * - `EventStore`: `SqlEventStore`, the streams of event-sourced aggregates
 *   (`EventSourced`), in the dispatch's transaction;
 * - `EventPublisher`: in memory, fed by `OutboxRelay` with the committed
 *   events for as long as the layer lives, unless `relay: false` (another
 *   process relays, or the application drains with `OutboxRelay.drain`).
 *
 * Reactions' checkpoints and dead letters and the scheduler's store are
 * not in it, as they are not in `InMemory.layer`: they serve
 * `Reaction.follow`, `Reaction.redrive` and `CommandScheduler`, which an
 * application starts, with options of its own, only when it uses them.
 * Their layers (`SqlReactionCheckpoints.layer`, `SqlReactionDeadLetters.layer`,
 * `SqlScheduledCommands.layer`) need nothing but the `SqlClient`, and
 * leaving them out keeps a missing one a compile error that names it beside
 * the code that needs it, rather than a service every bus carries.
 *
 * The tables come from `SqlMigrations.run`, which this layer does not run.
 *
 * @since 0.1.0
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Layer from "effect/Layer"
import * as EventPublisher from "../EventPublisher.js"
import type * as EventStore from "../EventStore.js"
import type * as Idempotency from "../Idempotency.js"
import type * as Outbox from "../Outbox.js"
import type * as UnitOfWork from "../UnitOfWork.js"
import * as OutboxRelay from "./OutboxRelay.js"
import * as SqlEventStore from "./SqlEventStore.js"
import * as SqlIdempotencyStore from "./SqlIdempotencyStore.js"
import * as SqlOutbox from "./SqlOutbox.js"
import * as SqlUnitOfWork from "./SqlUnitOfWork.js"

/**
 * @since 0.1.0
 * @category models
 */
export type Stores =
  | Outbox.Outbox
  | Idempotency.IdempotencyStore
  | UnitOfWork.UnitOfWork
  | EventPublisher.EventPublisher
  | EventStore.EventStore

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<E = never, R = never> {
  /** The relay's options, or `false` for no relay. Default: a relay with `OutboxRelay`'s defaults. */
  readonly relay?: OutboxRelay.Options | false | undefined
  /** The idempotency store. Default `SqlIdempotencyStore.layer`. */
  readonly idempotency?: Layer.Layer<Idempotency.IdempotencyStore, E, R> | undefined
}

/**
 * The stores on the `SqlClient` in context (a server or PGlite). The
 * `PgClient` is the relay's, which listens for the outbox's notifications.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <E = never, R = never>(
  options: Options<E, R> = {}
): Layer.Layer<Stores, E, SqlClient.SqlClient | PgClient.PgClient | R> =>
  Layer.mergeAll(
    SqlOutbox.layer,
    options.idempotency ?? SqlIdempotencyStore.layer,
    SqlUnitOfWork.layer,
    SqlEventStore.layer,
    options.relay === false ? Layer.empty : OutboxRelay.layer(options.relay ?? {})
  ).pipe(Layer.provideMerge(EventPublisher.layerMemory))
