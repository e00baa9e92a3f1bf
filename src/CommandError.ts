/**
 * The typed errors the bus and its middleware add to a command's own
 * failures. Each carries its HTTP status beside its definition, so an HTTP
 * edge maps it once, here.
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as Schema from "effect/Schema"
import { ValidationIssue } from "./Command.js"

/**
 * Input that names no command this bus handles.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnknownCommand extends Schema.TaggedError<UnknownCommand>()(
  "UnknownCommand",
  { commandType: Schema.String },
  HttpApiSchema.annotations({ status: 400, title: "Unknown command" })
) {
  override get message() {
    return `No handler is registered for command type ${JSON.stringify(this.commandType)}`
  }
}

/**
 * Untyped input that does not decode with its command's schema.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidCommand extends Schema.TaggedError<InvalidCommand>()(
  "InvalidCommand",
  { commandType: Schema.String, issues: Schema.Array(ValidationIssue) },
  HttpApiSchema.annotations({ status: 400, title: "Invalid command" })
) {
  override get message() {
    return this.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`).join("; ")
  }
}

/**
 * A command that breaks one or more business rules declared with it.
 *
 * @since 0.1.0
 * @category errors
 */
export class CommandValidationError extends Schema.TaggedError<CommandValidationError>()(
  "CommandValidationError",
  { commandType: Schema.String, issues: Schema.NonEmptyArray(ValidationIssue) },
  HttpApiSchema.annotations({ status: 400, title: "Command validation failed" })
) {
  override get message() {
    return this.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`).join("; ")
  }
}

/**
 * A command whose handler ran past its deadline; it was interrupted and
 * nothing it did was committed or published.
 *
 * @since 0.1.0
 * @category errors
 */
export class CommandTimeout extends Schema.TaggedError<CommandTimeout>()(
  "CommandTimeout",
  { commandType: Schema.String, timeoutMillis: Schema.Number },
  HttpApiSchema.annotations({ status: 503, title: "Command timed out" })
) {
  override get message() {
    return `${this.commandType} did not complete within ${this.timeoutMillis} ms`
  }
}

/**
 * The current user may not run this command.
 *
 * @since 0.1.0
 * @category errors
 */
export class Forbidden extends Schema.TaggedError<Forbidden>()(
  "Forbidden",
  { reason: Schema.String },
  HttpApiSchema.annotations({ status: 403, title: "Forbidden" })
) {
  override get message() {
    return this.reason
  }
}

/**
 * An aggregate was saved from a stale version: someone else saved it first.
 * Transient: retrying the command on fresh state usually succeeds.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConcurrencyConflict extends Schema.TaggedError<ConcurrencyConflict>()(
  "ConcurrencyConflict",
  { aggregateType: Schema.String, aggregateId: Schema.String, expectedVersion: Schema.Number },
  HttpApiSchema.annotations({ status: 409, title: "Concurrency conflict" })
) {
  override get message() {
    return `${this.aggregateType} ${this.aggregateId} was changed concurrently (expected version ${this.expectedVersion})`
  }
}

/**
 * A store the dispatch depends on (database, idempotency store) is
 * unreachable or too slow. Transient: the command did not run, or ran and
 * was rolled back; a retry may succeed.
 *
 * @since 0.1.0
 * @category errors
 */
export class StoreUnavailable extends Schema.TaggedError<StoreUnavailable>()(
  "StoreUnavailable",
  { store: Schema.String, reason: Schema.String },
  HttpApiSchema.annotations({ status: 503, title: "Service unavailable" })
) {
  override get message() {
    return `${this.store} is unavailable: ${this.reason}`
  }
}
