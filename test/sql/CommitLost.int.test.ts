/**
 * A connection lost during COMMIT, on a server (PGlite has no connection to
 * lose): the dispatch fails with `StoreUnavailable`, nothing commits, and the
 * idempotency claim is released, so a retry with the same key runs again.
 * The pool must not get the dead connection back as a live one: the claim's
 * release, the next statement on the pool, ran on it and failed.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Command, CommandBus, Handler } from "../../src/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Write extends Command.Class<Write>()("Write", {
  payload: { note: Schema.String },
  success: Schema.Struct({ ok: Schema.Boolean }),
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Write], {
  Write: (command) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) => sql`INSERT INTO notes (note) VALUES (${command.note})`).pipe(
      Effect.orDie,
      Effect.as(Handler.result({ ok: true }))
    )
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))

const Services = Layer.mergeAll(
  SqlOutbox.layer,
  SqlUnitOfWork.layer,
  SqlIdempotencyStore.layer
).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

describe.skipIf(TestDatabase.serverUrl === undefined)(
  "a connection lost during COMMIT (postgres)",
  () =>
    layer(Services, { excludeTestServices: true, timeout: "60 seconds" })((it) => {
      it.effect("fails the dispatch as unavailable, commits nothing, and releases the key for a retry", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          // A deferred constraint trigger runs inside COMMIT; this one ends its
          // own backend there when asked to.
          yield* sql.unsafe(`
        CREATE TABLE notes (note text NOT NULL);
        CREATE FUNCTION notes_die() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN IF NEW.note = 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER notes_die AFTER INSERT ON notes
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION notes_die();`)
          const lost = yield* Effect.exit(bus.dispatch(new Write({ note: "die", userId: "u", idempotencyKey: "k-1" })))
          expect(Exit.isFailure(lost) && Option.getOrUndefined(Cause.failureOption(lost.cause))).toMatchObject({
            _tag: "StoreUnavailable"
          })
          expect(yield* sql`SELECT note FROM notes`).toEqual([])
          expect(yield* sql`SELECT state FROM idempotency_keys WHERE key = 'k-1'`).toEqual([])
          // The retry, once the server no longer ends the connection, runs and commits.
          yield* sql.unsafe("DROP TRIGGER notes_die ON notes")
          expect(yield* bus.dispatch(new Write({ note: "die", userId: "u", idempotencyKey: "k-1" }))).toEqual({
            ok: true
          })
          expect(yield* sql`SELECT note FROM notes`).toEqual([{ note: "die" }])
        }).pipe(Effect.orDie))
    })
)
