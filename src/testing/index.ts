/**
 * The test kit: in-memory stores and given/when/then specifications, for
 * handlers and for reactions.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as InMemory from "./InMemory.js"

/** @since 0.1.0 */
export * as Specification from "./Specification.js"

/** @since 0.1.0 */
export * as ReactionSpecification from "./ReactionSpecification.js"
