import { originalError } from "effect/Cause"
import { globalValue } from "effect/GlobalValue"

// Errors made from a transaction PostgreSQL ended to break a deadlock or a
// serialization conflict with another (`SqlFailure`), and those of them whose
// whole transaction is known to have rolled back: the outermost transaction
// of a unit of work failed with them. Kept beside the errors rather than in
// them, so that `StoreUnavailable`'s schema, and what a client sees of it,
// stay the same. Global: the library's source and its build may both be
// loaded, as they are in this repository's tests. Kept and read by the
// error itself, not the proxy that carries its span: `Effect.fail` and
// `Effect.die` under a span hand on such a proxy (`Cause.originalError`
// unwraps it), a new object at each place the error is failed again.
const conflicts = globalValue(Symbol.for("effect-command-bus/internal/conflict/made"), () => new WeakSet<object>())
const rolledBack = globalValue(
  Symbol.for("effect-command-bus/internal/conflict/rolledBack"),
  () => new WeakSet<object>()
)

/** Notes that `error` stands for a transaction the database ended to let another go on. */
export const markConflict = <E extends object>(error: E): E => {
  conflicts.add(originalError(error))
  return error
}

/**
 * Notes, for a conflict, that the outermost transaction failed with it, so
 * nothing of the work it ended was kept: running the work again is safe. A
 * savepoint's rollback does not count (its transaction goes on, and its
 * owner decides).
 */
export const markRolledBack = (error: unknown): void => {
  const original = originalError(error)
  if (typeof original === "object" && original !== null && conflicts.has(original)) rolledBack.add(original)
}

/** Whether `error` is a conflict whose whole transaction rolled back. */
export const isRolledBackConflict = (error: unknown): boolean => {
  const original = originalError(error)
  return typeof original === "object" && original !== null && rolledBack.has(original)
}
