/**
 * A database migrated by an earlier release, started with this one: it ends
 * with the schema a fresh database gets, and works. The earlier releases'
 * migrations are copied here as they shipped: migration 1 before its
 * notification named the schema (68c1321), and migration 4 before it had the
 * aggregate columns (97a33b6 to fda0b29); the last release before
 * scheduled commands had keys (c00f81e), with commands scheduled; and the
 * last before the events applied to a process had a table (53103a8), with a
 * process.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as PgMigrator from "@effect/sql-pg/PgMigrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import { DomainEvent } from "../../src/index.js"
import * as Migrations from "../../src/orders/Migrations.js"
import * as Database from "../../src/server/Database.js"
import {
  SqlMigrations,
  SqlOutbox,
  SqlProcesses,
  SqlReactionDeadLetters,
  SqlScheduledCommands
} from "../../src/sql/index.js"
import * as PgliteClient from "../../src/sql/PgliteClient.js"
import * as TestDatabase from "../support/Database.js"

const { outboxChannel, sources } = SqlMigrations

const firstOutbox = [
  ...sources["1_outbox"]!.slice(0, 3),
  `CREATE FUNCTION command_bus_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('${outboxChannel}', '');
        RETURN NULL;
      END
    $$`,
  sources["1_outbox"]![4]!
]

const firstDeadLetters = [
  `CREATE TABLE reaction_dead_letters (
      follower text NOT NULL,
      reaction text NOT NULL,
      event_id uuid NOT NULL,
      position bigint NOT NULL,
      event jsonb NOT NULL,
      reason text NOT NULL,
      attempts integer NOT NULL CHECK (attempts > 0),
      first_failed_at timestamptz NOT NULL,
      last_failed_at timestamptz NOT NULL,
      PRIMARY KEY (follower, reaction, event_id)
    )`,
  `CREATE INDEX reaction_dead_letters_position ON reaction_dead_letters (follower, position)`
]

const through = (last: number) =>
  Object.fromEntries(Object.entries(sources).filter(([id]) => Number(id.split("_")[0]) <= last))

const releases: Readonly<Record<string, Readonly<Record<string, ReadonlyArray<string>>>>> = {
  "53103a8 (migrations 1 to 16)": through(16),
  "c00f81e (migrations 1 to 11)": through(11),
  "365ab90 (migrations 1 to 6)": through(6),
  "68c1321 (migrations 1 and 2)": { "1_outbox": firstOutbox, "2_idempotency_keys": sources["2_idempotency_keys"]! },
  "97a33b6 (migrations 1 to 4)": {
    "1_outbox": sources["1_outbox"]!,
    "2_idempotency_keys": sources["2_idempotency_keys"]!,
    "3_reaction_checkpoints": sources["3_reaction_checkpoints"]!,
    "4_reaction_dead_letters": firstDeadLetters
  }
}

/** A database of its own, not migrated: a fresh schema on the server (dropped after), or a fresh embedded one. */
const unmigrated = Layer.unwrapScoped(Effect.gen(function*() {
  const url = TestDatabase.serverUrl
  if (url === undefined) {
    return PgliteClient.layer({ dataDir: yield* TestDatabase.tempDir("ecb-upgrade") })
  }
  const schema = TestDatabase.freshSchema()
  const pool = (inSchema: Option.Option<string>) =>
    Database.serverLayer({
      url: Redacted.make(url),
      schema: inSchema,
      poolSize: 2,
      connectTimeout: Duration.seconds(5),
      statementTimeout: Duration.seconds(30)
    })
  const admin = (statement: string) =>
    Effect.provide(Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement)), pool(Option.none()))
  yield* Effect.acquireRelease(
    admin(`CREATE SCHEMA "${schema}"`),
    () => Effect.ignore(admin(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`))
  )
  return pool(Option.some(schema))
}))

/** The schema, without its own name (each database here has its own). */
const schemaOf = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [{ name }] = yield* sql<{ readonly name: string }>`SELECT current_schema() AS name`.withoutTransform
  const described = yield* TestDatabase.schemaSnapshot("name")
  return JSON.parse(JSON.stringify(described).replaceAll(`${name}.`, "")) as unknown
})

const fresh = Effect.scoped(Effect.provide(Effect.zipRight(Migrations.run, schemaOf), unmigrated))

const deadLetter = (aggregateId: string) => ({
  follower: "payments",
  reaction: "pay",
  position: 1,
  reason: "boom",
  event: new DomainEvent.Envelope({
    eventId: randomUUID(),
    type: "OrderCreated",
    aggregateType: "Order",
    aggregateId,
    aggregateVersion: 1,
    payload: {},
    correlationId: randomUUID(),
    causationId: randomUUID(),
    occurredAt: DateTime.unsafeNow()
  })
})

for (const [release, migrations] of Object.entries(releases)) {
  it.scoped(
    `a database migrated by ${release} ends with a fresh one's schema, and works (${TestDatabase.kind})`,
    () =>
      Effect.gen(function*() {
        const expected = yield* fresh
        yield* Effect.gen(function*() {
          yield* PgMigrator.run({
            loader: PgMigrator.fromRecord(SqlMigrations.fromSources(migrations)),
            table: "command_bus_migrations"
          }).pipe(Effect.provide(NodeContext.layer))
          const sql = yield* SqlClient.SqlClient
          // A dead letter recorded by that release, when it had the table.
          const earlier = randomUUID()
          if (migrations["4_reaction_dead_letters"] === firstDeadLetters) {
            const { event, ...row } = deadLetter(earlier)
            const encoded = yield* Schema.encode(DomainEvent.Envelope)(event)
            yield* sql`
            INSERT INTO reaction_dead_letters
              (follower, reaction, event_id, position, event, reason, attempts, first_failed_at, last_failed_at)
            VALUES (${row.follower}, ${row.reaction}, ${event.eventId}, 1,
              ${JSON.stringify(encoded)}::jsonb,
              ${row.reason}, 1, now(), now())`
          }
          // Commands scheduled by that release, before keys: one due, one in an hour.
          const scheduled = [randomUUID(), randomUUID()].sort()
          if (migrations["5_scheduled_commands"] !== undefined) {
            for (
              const [id, due] of [[scheduled[0]!, sql`now()`], [scheduled[1]!, sql`now() + interval '1 hour'`]] as const
            ) {
              yield* sql`
              INSERT INTO scheduled_commands (id, command_type, command, due_at, state, attempts)
              VALUES (${id}, 'Remind', '{"_tag":"Remind"}'::jsonb, ${due}, 'pending', 0)`
            }
          }
          // Events still unpublished: one an hour old, one stamped by an application clock 5 minutes ahead.
          for (const occurred of [sql`now() - interval '1 hour'`, sql`now() + interval '5 minutes'`]) {
            yield* sql`
              INSERT INTO outbox (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload,
                correlation_id, causation_id, occurred_at)
              VALUES (${randomUUID()}, 'Order', ${randomUUID()}, 1, 'OrderCreated', '{}'::jsonb, ${randomUUID()},
                ${randomUUID()}, ${occurred})`
          }
          // A process of that release, its applied events a list in its row.
          const processEvents = [randomUUID(), randomUUID()]
          if (migrations["14_processes"] !== undefined) {
            yield* sql`
              INSERT INTO processes (manager, key, state, version, done, applied, deadlines, updated_at)
              VALUES ('checkout', 'o-1', '{"status":"paid"}'::json, 2, false, ${JSON.stringify(processEvents)}::jsonb,
                '[]'::jsonb, now())`
          }
          yield* Migrations.run
          expect(yield* schemaOf).toEqual(expected)
          if (migrations["14_processes"] !== undefined) {
            // Its events are still applied: a redelivery of either is skipped.
            const processes = yield* SqlProcesses.make
            const appliedOf = (eventId: string) =>
              Effect.map(processes.load("checkout", "o-1", eventId), (loaded) => Option.getOrThrow(loaded).applied)
            expect(yield* Effect.forEach([...processEvents, randomUUID()], appliedOf)).toEqual([true, true, false])
          }
          // Recorded before the database kept when it took an event (migration 7):
          if (migrations["7_outbox_recorded_at"] === undefined) {
            // The oldest one's age goes on: not counted again from the upgrade.
            expect((yield* SqlOutbox.lag).oldestAgeSeconds).toBeGreaterThan(3500)
            // The one from the future is no negative age.
            yield* sql`DELETE FROM outbox WHERE occurred_at < now() - interval '30 minutes'`
            const ahead = (yield* SqlOutbox.lag).oldestAgeSeconds
            expect(ahead).toBeGreaterThanOrEqual(0)
            expect(ahead).toBeLessThan(60)
          }

          if (migrations["5_scheduled_commands"] !== undefined) {
            // Listed, claimed and run as before, under no key; a key schedules beside them.
            const scheduler = yield* SqlScheduledCommands.make
            expect((yield* scheduler.list()).map((command) => [command.id, "key" in command])).toEqual([
              [scheduled[0], false],
              [scheduled[1], false]
            ])
            const keyed = yield* scheduler.addKeyed!({
              id: randomUUID(),
              key: "reminder",
              commandType: "Remind",
              command: { _tag: "Remind" },
              due: { after: Duration.hours(2) },
              onConflict: "keep"
            })
            const [due, ...notYet] = yield* scheduler.claim(10, Duration.minutes(1))
            expect([due?.id, notYet]).toEqual([scheduled[0], []])
            yield* scheduler.complete(due!)
            expect((yield* scheduler.list()).map((command) => [command.id, command.key])).toEqual([
              [scheduled[1], undefined],
              [keyed, "reminder"]
            ])
            expect(yield* scheduler.cancelKey!("reminder")).toBe(true)
          }

          const store = yield* SqlReactionDeadLetters.make
          yield* store.add({ ...deadLetter(randomUUID()), position: 2 })
          const sequences = yield* store.sequences("payments")
          expect(sequences.length).toBeGreaterThan(0)
          if (migrations["4_reaction_dead_letters"] === firstDeadLetters) {
            const [row] = yield* sql<{ readonly aggregate_id: string }>`
            SELECT aggregate_id FROM reaction_dead_letters WHERE position = 1`.withoutTransform
            expect(row?.aggregate_id).toBe(earlier)
          }
        }).pipe(Effect.provide(unmigrated))
      }),
    { timeout: 120_000 }
  )
}
