import { CommandValidationError, Forbidden, InvalidCommand, UnknownCommand } from "../CommandError.js"
import { IdempotencyKeyMismatch } from "../Idempotency.js"

/**
 * A refusal of a dispatch that running it again cannot change, whatever the
 * command declares: a command the bus does not know or cannot decode, one
 * its business rules refuse, one its user may not run (the principal a
 * runner dispatches as does not change between attempts), or a key reused
 * with another payload. The
 * scheduler fails such a command for good, and a reaction makes it a dead
 * letter, at once rather than after their retries.
 */
export const isRefusal = (error: unknown): boolean =>
  error instanceof UnknownCommand || error instanceof InvalidCommand ||
  error instanceof CommandValidationError || error instanceof Forbidden || error instanceof IdempotencyKeyMismatch
