/**
 * effect-command-bus: the write side of CQRS, the Effect way.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as Command from "./Command.js"

/** @since 0.1.0 */
export * as CommandBus from "./CommandBus.js"

/** @since 0.1.0 */
export * as CommandError from "./CommandError.js"

/** @since 0.1.0 */
export * as CommandScheduler from "./CommandScheduler.js"

/** @since 0.1.0 */
export * as CurrentUser from "./CurrentUser.js"

/** @since 0.1.0 */
export * as DomainEvent from "./DomainEvent.js"

/** @since 0.1.0 */
export * as EventSourced from "./EventSourced.js"

/** @since 0.1.0 */
export * as EventStore from "./EventStore.js"

/** @since 0.1.0 */
export * as EventPublisher from "./EventPublisher.js"

/** @since 0.1.0 */
export * as Handler from "./Handler.js"

/** @since 0.1.0 */
export * as Idempotency from "./Idempotency.js"

/** @since 0.1.0 */
export * as Middleware from "./Middleware.js"

/** @since 0.1.0 */
export * as Outbox from "./Outbox.js"

/** @since 0.1.0 */
export * as ProcessManager from "./ProcessManager.js"

/** @since 0.1.0 */
export * as Reaction from "./Reaction.js"

/** @since 0.1.0 */
export * as Tracing from "./Tracing.js"

/** @since 0.1.0 */
export * as UnitOfWork from "./UnitOfWork.js"
