// The README's "On PostgreSQL" example, verbatim between the markers, run on
// the server in DATABASE_URL (a schema of its own); skipped without one.
import { describe, expect, it } from "@effect/vitest"
import * as Schedule from "effect/Schedule"
import { randomBytes } from "node:crypto"
import * as TestDatabase from "../support/Database.js"
// README:begin
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted, Schema } from "effect"
import { Command, CommandBus, DomainEvent, Handler } from "effect-command-bus"
import { PgPool, SqlMigrations, SqlStores } from "effect-command-bus/sql"

class Deposited extends DomainEvent.Class<Deposited>()("Deposited", { account: Schema.String, amount: Schema.Int }) {}

class Deposit extends Command.Class<Deposit>()("Deposit", {
  payload: { account: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ balance: Schema.Int }),
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Deposit], {
  Deposit: (command) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // Database errors are defects in a handler; the unit of work reports an outage as StoreUnavailable.
      const [account] = yield* sql<{ readonly balance: number; readonly version: number }>`
        INSERT INTO accounts VALUES (${command.account}, ${command.amount}, 1)
        ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance, version = accounts.version + 1
        RETURNING balance, version`.pipe(Effect.orDie)
      const deposited = new Deposited({ account: command.account, amount: command.amount })
      return Handler.result({ balance: account!.balance }, [
        DomainEvent.draft({
          aggregateType: "Account",
          aggregateId: command.account,
          aggregateVersion: account!.version
        }, deposited)
      ])
    })
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ timeout: "5 seconds" })))

// The library's tables, then the application's.
const migrations = Layer.effectDiscard(Effect.zipRight(
  SqlMigrations.run,
  SqlMigrations.runWith({
    table: "bank_migrations",
    sources: {
      "1_accounts": ["CREATE TABLE accounts (id text PRIMARY KEY, balance integer NOT NULL, version integer NOT NULL)"]
    }
  })
))

// The pool, the library's stores on it (outbox, idempotency, unit of work, relay), migrated.
const App = (database: PgPool.Options) =>
  SqlStores.layer().pipe(Layer.provideMerge(migrations), Layer.provideMerge(PgPool.layer(database)))

const deposit = bus.dispatch(new Deposit({ account: "alice", amount: 10, idempotencyKey: "deposit-1" }))
// Effect.runPromise(deposit.pipe(Effect.provide(App({ url: Redacted.make(process.env.DATABASE_URL!) }))))
// README:end

const url = process.env.DATABASE_URL

describe.skipIf(url === undefined)("README: on PostgreSQL", () => {
  it.scopedLive("the example deposits once, replays the key, and publishes the event", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema(`readme_${randomBytes(6).toString("hex")}`)
      const context = yield* Layer.build(App({ url: Redacted.make(url!), schema }))
      const run = <A, E>(effect: Effect.Effect<A, E, Layer.Layer.Success<ReturnType<typeof App>>>) =>
        Effect.provide(effect, context)

      expect(yield* run(deposit)).toEqual({ balance: 10 })
      // The same key again: its recorded outcome, nothing runs twice.
      expect(yield* run(deposit)).toEqual({ balance: 10 })
      const balances = yield* run(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT id, balance FROM accounts`))
      expect(balances).toEqual([{ id: "alice", balance: 10 }])
      const [published] = yield* run(Effect.flatMap(
        SqlClient.SqlClient,
        (sql) =>
          sql<{ readonly event_type: string; readonly position: string | null }>`
          SELECT event_type, position::text FROM outbox`.pipe(
            Effect.filterOrFail((rows) => rows.length === 1 && rows[0]!.position !== null),
            Effect.retry({ times: 150, schedule: Schedule.spaced("100 millis") })
          )
      ))
      expect(published).toEqual({ event_type: "Deposited", position: "1" })
    }), 60_000)
})
