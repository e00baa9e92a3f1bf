/**
 * The test kit: in-memory stores and given/when/then specifications, for
 * handlers, for reactions and for process managers.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as InMemory from "./InMemory.js"

/** @since 0.1.0 */
export * as Specification from "./Specification.js"

/** @since 0.1.0 */
export * as ReactionSpecification from "./ReactionSpecification.js"

/** @since 0.1.0 */
export * as ProcessManagerSpecification from "./ProcessManagerSpecification.js"
