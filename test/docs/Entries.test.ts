/**
 * The package's entries, imported by name as a user would, hold what the
 * README's module table says they hold.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Library from "effect-command-bus"
import * as Pglite from "effect-command-bus/pglite"
import * as Sql from "effect-command-bus/sql"
import * as Testing from "effect-command-bus/testing"

describe("package entries", () => {
  it("export the modules the README names", () => {
    expect(Object.keys(Library)).toEqual(expect.arrayContaining([
      "Command",
      "CommandBus",
      "Handler",
      "Middleware",
      "DomainEvent",
      "Idempotency",
      "Reaction",
      "CommandScheduler",
      "CurrentUser",
      "CommandError",
      "Tracing"
    ]))
    expect(Object.keys(Sql).sort()).toEqual([
      "OutboxRelay",
      "PgPreparedClient",
      "SqlFailure",
      "SqlIdempotencyStore",
      "SqlMigrations",
      "SqlOutbox",
      "SqlReactionCheckpoints",
      "SqlReactionDeadLetters",
      "SqlScheduledCommands",
      "SqlStatement",
      "SqlUnitOfWork"
    ])
    expect(typeof Pglite.PgliteClient.layer).toBe("function")
    expect(Object.keys(Testing)).toEqual(expect.arrayContaining(["InMemory", "Specification"]))
  })
})
