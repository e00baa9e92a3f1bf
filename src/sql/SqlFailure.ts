/**
 * Telling a database outage from a bug. An outage (connection refused or
 * lost, a TLS connection that cannot be set up, server shutting down, too
 * many connections, a statement or lock timeout) is transient: the dispatch
 * fails with the typed `StoreUnavailable`. So is a
 * transaction the database ended so that others could go on (a deadlock's
 * loser, a serialization failure): its work was rolled back, and a retry may
 * pass. Anything else is a defect: a bug to fix, not a condition to retry.
 *
 * @since 0.1.0
 */
import { SqlError } from "@effect/sql/SqlError"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import { StoreUnavailable } from "../CommandError.js"
import { markConflict } from "../internal/conflict.js"

// SQLSTATE classes and codes that mean "the database is not there right now".
// 55P03 (lock_not_available): a statement waited past `lock_timeout` (set in
// the URL's options, or by the role or the database) for a lock another
// transaction holds, as one past `statement_timeout` (57014) ran out of time.
const unavailableCodes = new Set(["53300", "57P01", "57P02", "57P03", "57014", "55P03", "53000", "53100", "53200"])
const unavailableErrnos = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH"])
// A TLS connection that could not be set up: the server's certificate did
// not verify (an unknown CA, expired, another host's: a server whose
// certificate was rotated to a CA the client does not know yet), or the
// handshake failed, or the server takes no TLS. The database cannot be
// reached, as with a connection refused: every command failed with a defect
// (500) while the readiness check said 503. Node's codes: OpenSSL's X.509
// verification results, and ERR_SSL_* / ERR_TLS_* of the handshake.
const tlsErrnos = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "HOSTNAME_MISMATCH"
])
const isTlsErrno = (code: string) => tlsErrnos.has(code) || /^ERR_(SSL|TLS)_/.test(code)
const unavailableMessage =
  /The server does not support SSL connections|There was an error establishing an SSL connection|connection terminated|connection timeout|timeout exceeded when trying to connect|not queryable|Connection ended|terminating connection|the database system is (starting up|shutting down)|Client was closed|Cannot use a pool after calling end|the database is closed|session queue is full/i

/**
 * Whether a database error means the database is unreachable or overloaded.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isUnavailable = (error: unknown): boolean =>
  causeChain(error).some((link) => {
    // Already classified, by a store a handler called and then died on.
    if (link instanceof StoreUnavailable) return true
    const code = Predicate.hasProperty(link, "code") ? link.code : undefined
    if (
      typeof code === "string" &&
      (code.startsWith("08") || unavailableCodes.has(code) || unavailableErrnos.has(code) || isTlsErrno(code))
    ) {
      return true
    }
    const message = Predicate.hasProperty(link, "message") ? link.message : undefined
    return typeof message === "string" && unavailableMessage.test(message)
  })

// SQLSTATEs of a transaction PostgreSQL ended to let others go on: the loser
// of a deadlock, and a serialization failure (REPEATABLE READ, SERIALIZABLE).
const conflictCodes = new Set(["40P01", "40001"])

/**
 * Whether a database error ended its transaction to break a deadlock or a
 * serialization conflict with another: nothing of it was kept, and running
 * it again may pass.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isTransientConflict = (error: unknown): boolean => {
  const code = sqlState(error)
  return code !== undefined && conflictCodes.has(code)
}

const isTransient = (error: unknown): boolean => isUnavailable(error) || isTransientConflict(error)

/**
 * An error and the errors under it: its `cause`, that one's `cause`, and so
 * on, each once (a cycle ends the chain). Drivers wrap their errors: the
 * `SqlError` of `@effect/sql` holds the driver's, which may hold a socket's.
 *
 * @since 0.1.0
 * @category utils
 */
export const causeChain = (error: unknown): ReadonlyArray<object> => {
  const chain: Array<object> = []
  let current: unknown = error
  while (Predicate.isObject(current) && !chain.includes(current)) {
    chain.push(current)
    current = Predicate.hasProperty(current, "cause") ? current.cause : undefined
  }
  return chain
}

/**
 * The PostgreSQL SQLSTATE of a database error, if it has one.
 *
 * @since 0.1.0
 * @category utils
 */
export const sqlState = (error: unknown): string | undefined => {
  for (const link of causeChain(error).slice(0, 5)) {
    if (Predicate.hasProperty(link, "code") && typeof link.code === "string" && /^[0-9A-Z]{5}$/.test(link.code)) {
      return link.code
    }
  }
  return undefined
}

const firstLine = (error: unknown): string | undefined =>
  Predicate.hasProperty(error, "message") && typeof error.message === "string"
    ? error.message.split("\n")[0]!
    : undefined

const toUnavailable = (error: unknown) => {
  if (error instanceof StoreUnavailable) return error
  // A conflict is told by the driver's message ("deadlock detected"), which
  // the SqlError around it ("Failed to execute statement") does not repeat.
  const conflict = isTransientConflict(error)
    ? causeChain(error).find((link) => Predicate.hasProperty(link, "code") && conflictCodes.has(String(link.code)))
    : undefined
  const unavailable = new StoreUnavailable({
    store: "database",
    reason: firstLine(conflict ?? error) ?? "unreachable"
  })
  return conflict === undefined ? unavailable : markConflict(unavailable)
}

/**
 * Turns database outages and transient conflicts (`isTransientConflict`) into
 * `StoreUnavailable`, whether they arrive as a `SqlError` failure or as a
 * defect (repositories die on `SqlError`, since a handler's error channel
 * holds only its domain errors). Other database errors become defects.
 *
 * @since 0.1.0
 * @category combinators
 */
export const classify = <A, E, R>(
  self: Effect.Effect<A, E | SqlError, R>
): Effect.Effect<A, Exclude<E, SqlError> | StoreUnavailable, R> =>
  self.pipe(
    Effect.catchIf(
      (error): error is SqlError => error instanceof SqlError,
      (error) => isTransient(error) ? Effect.fail(toUnavailable(error)) : Effect.die(error)
    ),
    Effect.catchAllCause((cause) => {
      const defect = Cause.dieOption(cause)
      if (Option.isSome(defect) && isTransient(defect.value) && !Cause.isInterrupted(cause)) {
        return Effect.fail(toUnavailable(defect.value))
      }
      return Effect.failCause(cause)
    })
  ) as any

/**
 * The failure of a COMMIT that rolled back: a statement of the transaction
 * failed and the code that ran it went on.
 *
 * @since 0.1.0
 * @category errors
 */
export const abortedCommit = (): SqlError =>
  new SqlError({
    cause: new Error("COMMIT rolled back"),
    message: "The transaction rolled back at COMMIT: one of its statements failed, and the handler went on past " +
      "its error (a failed statement aborts the whole transaction; catch it inside a nested transaction, which " +
      "becomes a savepoint, to go on)"
  })

/**
 * Set on a client whose own `withTransaction` fails a COMMIT that rolled
 * back (`PgliteClient`'s), so a unit of work need not check again.
 *
 * @since 0.1.0
 * @category symbols
 */
export const checksAbortedCommit: unique symbol = Symbol.for("effect-command-bus/sql/checksAbortedCommit")

/**
 * Fails with `abortedCommit` when the transaction `probe` runs in has been
 * aborted by a failed statement: the probe is one statement in it (`SELECT
 * 1`), which PostgreSQL refuses then (25P02). For a transaction whose
 * COMMIT's answer cannot be read.
 *
 * @since 0.1.0
 * @category utils
 */
export const failIfAborted = (probe: Effect.Effect<unknown, SqlError>): Effect.Effect<void, SqlError> =>
  Effect.catchAll(
    Effect.asVoid(probe),
    (error) => Effect.fail(sqlState(error) === "25P02" ? abortedCommit() : error)
  )
