/**
 * What the two prepared-statement caches (`PgliteClient`'s and
 * `PgPreparedClient`'s) share: how `pg` sends a parameter, and which errors
 * say that a named statement must be parsed again.
 *
 * @internal
 */
import Pg from "pg"

/**
 * A parameter as `pg` sends it (its own `prepareValue`: text, bytes for
 * binary data, or null), so nothing can drift from the driver used against
 * a server. `pg.utils` is public in `pg` but not in `@types/pg`.
 */
export const prepareValue = (Pg as unknown as {
  readonly utils: { readonly prepareValue: (value: unknown) => string | Uint8Array | null }
}).utils.prepareValue

/** An error's SQLSTATE; undefined for one raised in this process. */
export const sqlState = (error: unknown): unknown => (error as { readonly code?: unknown } | null)?.code

/**
 * 26000: no prepared statement of that name (`DEALLOCATE ALL`); 0A000 with
 * this text: the tables changed under a cached plan in a way that changes
 * its result.
 */
export const isStale = (error: unknown): boolean => {
  const code = sqlState(error)
  return code === "26000" ||
    (code === "0A000" && String((error as { readonly message?: unknown }).message).includes("cached plan"))
}

/**
 * A statement keeps the parameter types its Parse inferred, even after a
 * table's column changes type; a value that no longer fits them fails with a
 * data exception (class 22) or a type mismatch, and a fresh Parse infers
 * them again.
 */
export const mayBeOutdatedTypes = (error: unknown): boolean => {
  const code = sqlState(error)
  return typeof code === "string" && (code.startsWith("22") || code === "42804" || code === "42883")
}
