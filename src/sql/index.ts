/**
 * The library's PostgreSQL-backed stores, over `@effect/sql`.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as OutboxRelay from "./OutboxRelay.js"

/** @since 0.1.0 */
export * as PgPool from "./PgPool.js"

/** @since 0.1.0 */
export * as PgPreparedClient from "./PgPreparedClient.js"

/** @since 0.1.0 */
export * as SqlEventStore from "./SqlEventStore.js"

/** @since 0.1.0 */
export * as SqlFailure from "./SqlFailure.js"

/** @since 0.1.0 */
export * as SqlIdempotencyStore from "./SqlIdempotencyStore.js"

/** @since 0.1.0 */
export * as SqlMigrations from "./SqlMigrations.js"

/** @since 0.1.0 */
export * as SqlOutbox from "./SqlOutbox.js"

/** @since 0.1.0 */
export * as SqlProcesses from "./SqlProcesses.js"

/** @since 0.1.0 */
export * as SqlReactionCheckpoints from "./SqlReactionCheckpoints.js"

/** @since 0.1.0 */
export * as SqlReactionDeadLetters from "./SqlReactionDeadLetters.js"

/** @since 0.1.0 */
export * as SqlScheduledCommands from "./SqlScheduledCommands.js"

/** @since 0.1.0 */
export * as SqlStatement from "./SqlStatement.js"

/** @since 0.1.0 */
export * as SqlStores from "./SqlStores.js"

/** @since 0.1.0 */
export * as SqlUnitOfWork from "./SqlUnitOfWork.js"
