/**
 * The embedded PostgreSQL (PGlite, on disk or in memory) as an `@effect/sql`
 * client: an entry of its own, so that the SQL stores do not load PGlite.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as PgliteClient from "../sql/PgliteClient.js"
