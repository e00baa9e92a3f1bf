/**
 * An application of its own built only from the package's public entries:
 * a counter in a table its own migrations make, one command that raises one
 * event. For the tests of `PgPool` and `SqlStores` on a server, plain or TLS.
 */
import { SqlClient } from "@effect/sql"
import { Command, CommandBus, DomainEvent, Handler } from "effect-command-bus"
import { SqlMigrations } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

export class Incremented
  extends DomainEvent.Class<Incremented>()("Incremented", { counter: Schema.String, by: Schema.Int })
{}

export class Increment extends Command.Class<Increment>()("Increment", {
  payload: { counter: Schema.String, by: Schema.Int },
  success: Schema.Struct({ value: Schema.Int }),
  failure: Schema.Never
}) {}

/** How long the handler sleeps in the database after its write: none unless a test says. */
export class HandlerSleep extends Context.Reference<HandlerSleep>()("test/HandlerSleep", { defaultValue: () => 0 }) {}

/** The counter's bus, under the default middleware with `timeout`. */
export const bus = (timeout: Duration.DurationInput) =>
  CommandBus.make([Increment], {
    Increment: (command) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ readonly value: number; readonly version: number }>`
          INSERT INTO counters VALUES (${command.counter}, ${command.by}, 1)
          ON CONFLICT (id) DO UPDATE SET value = counters.value + excluded.value, version = counters.version + 1
          RETURNING value, version`.pipe(Effect.orDie)
        const sleep = yield* HandlerSleep
        if (sleep > 0) yield* sql`SELECT pg_sleep(${sleep})`.pipe(Effect.orDie)
        return Handler.result({ value: row!.value }, [
          DomainEvent.draft(
            { aggregateType: "Counter", aggregateId: command.counter, aggregateVersion: row!.version },
            new Incremented({ counter: command.counter, by: command.by })
          )
        ])
      })
  }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ timeout })))

/** The library's tables, then the counter's. */
export const migrations = Effect.zipRight(
  SqlMigrations.run,
  SqlMigrations.runWith({
    table: "counter_migrations",
    sources: {
      "1_counters": ["CREATE TABLE counters (id text PRIMARY KEY, value integer NOT NULL, version integer NOT NULL)"]
    }
  })
)
