/**
 * An application built only from the package's public entries
 * (`effect-command-bus`, `effect-command-bus/sql`): `PgPool.layer`,
 * `SqlStores.layer` and `SqlMigrations.run` on the PostgreSQL server in
 * `DATABASE_URL` (each test in a schema of its own), with a command of its
 * own. And what `PgPool`'s options promise: the schema as `search_path`,
 * `statementTimeout` cutting a statement, the pool's usage. Skipped without
 * a server, but for the options refused before any connection.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { EventPublisher, Idempotency, Outbox } from "effect-command-bus"
import { PgPool, SqlMigrations, SqlStores, SqlUnitOfWork } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { randomBytes, randomUUID } from "node:crypto"
import * as CounterApp from "../support/CounterApp.js"
import * as TestDatabase from "../support/Database.js"

const url = process.env.DATABASE_URL

// -----------------------------------------------------------------------------
// the application: a counter of its own
// -----------------------------------------------------------------------------

const bus = CounterApp.bus("1 second")
const { HandlerSleep, Increment, migrations } = CounterApp

const App = (options: PgPool.Options) =>
  SqlStores.layer({ relay: { pollInterval: "100 millis" } }).pipe(
    Layer.provideMerge(Layer.effectDiscard(migrations)),
    Layer.provideMerge(PgPool.layer(options))
  )

// -----------------------------------------------------------------------------
// helpers
// -----------------------------------------------------------------------------

const quiet = Logger.minimumLogLevel(LogLevel.Warning)

/** Waits (bounded) until `self` succeeds with a value `ok` accepts. */
const eventually = <A, E, R>(self: Effect.Effect<A, E, R>, ok: (value: A) => boolean) =>
  self.pipe(
    Effect.filterOrFail(ok, (value) => new Error(`not yet: ${JSON.stringify(value)}`)),
    Effect.retry({ times: 100, schedule: Schedule.spaced("50 millis") })
  )

const failureOf = <A, E>(exit: Exit.Exit<A, E>) => Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : undefined

// -----------------------------------------------------------------------------
// refused before any connection: on every run
// -----------------------------------------------------------------------------

describe("PgPool options refused", () => {
  const refusal = (options: PgPool.Options) =>
    Effect.flip(Effect.scoped(Layer.build(PgPool.layer(options)))).pipe(Effect.map((error) => error.message))

  it.effect("refuses options out of range with a SqlError naming the option, connecting nowhere", () =>
    Effect.gen(function*() {
      const nowhere = "postgres://postgres@127.0.0.1:1/none"
      expect(yield* refusal({ url: nowhere, poolSize: 0 })).toBe(
        "Invalid database configuration: poolSize must be a positive integer, got 0"
      )
      expect(yield* refusal({ url: nowhere, preparedStatements: -1 })).toBe(
        "Invalid database configuration: preparedStatements must be a non-negative integer, got -1"
      )
      expect(yield* refusal({ url: nowhere, statementTimeout: 0 })).toBe(
        "Invalid database configuration: statementTimeout must be 1 ms to 2147483647 ms, or Duration.infinity for none"
      )
      expect(yield* refusal({ url: nowhere, statementTimeout: "30 days" })).toContain("statementTimeout must be")
      expect(yield* refusal({ url: nowhere, answerMargin: Duration.infinity })).toContain("answerMargin must be")
      expect(yield* refusal({ url: nowhere, schema: "" })).toContain("schema must be a name")
      expect(yield* refusal({ url: "" })).toContain("url must be")
    }))

  it.effect("refuses a URL of another database's scheme, which pg would try on PostgreSQL, without quoting it", () =>
    Effect.gen(function*() {
      for (const url of ["mysql://user:s3cret@127.0.0.1:1/db", "HTTPS://127.0.0.1:1/db", " redis://127.0.0.1:1"]) {
        const message = yield* refusal({ url: Redacted.make(url) })
        expect(message).toBe("Invalid database configuration: url must be a postgres:// connection string")
      }
      // PostgreSQL's own forms pass the check (and fail later, connecting nowhere, if at all).
      for (const url of ["postgresql://127.0.0.1:1/db", "POSTGRES://127.0.0.1:1/db", "socket:/tmp/none?db=x"]) {
        const built = yield* Effect.exit(Effect.scoped(Layer.build(PgPool.layer({ url }))))
        expect(built._tag, url).toBe("Success")
      }
    }))

  it.effect("refuses a URL pg cannot read without quoting it, password and all", () =>
    Effect.gen(function*() {
      const message = yield* refusal({ url: Redacted.make("postgres://user:s3cret@127.0.0.1:99999/db") })
      expect(message).toMatch(/^Invalid database configuration: /)
      expect(message).not.toContain("s3cret")
    }))

  it.effect("layerConfig reads its options from Config, and fails with the ConfigError of a missing one", () =>
    Effect.gen(function*() {
      const layer = PgPool.layerConfig({
        url: Config.redacted("DATABASE_URL"),
        poolSize: Config.integer("POOL_SIZE")
      })
      const provided = (env: Record<string, string>) =>
        Effect.scoped(Layer.build(layer)).pipe(
          Effect.flatMap((context) => Effect.provide(PgPool.usage, context)),
          Effect.withConfigProvider(ConfigProvider.fromJson(env))
        )
      // Built (no connection is made until a statement), with the size read.
      expect(yield* provided({ DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", POOL_SIZE: "3" })).toEqual({
        max: 3,
        open: 0,
        idle: 0,
        waiting: 0
      })
      const missing = yield* Effect.flip(provided({ POOL_SIZE: "3" }))
      expect(String(missing)).toContain("DATABASE_URL")
    }))
})

// -----------------------------------------------------------------------------
// on the server
// -----------------------------------------------------------------------------

describe.skipIf(url === undefined)("PgPool and SqlStores on PostgreSQL", () => {
  it.scopedLive(
    "an app of the public entries: dispatches, appends, publishes, replays and rolls back",
    () =>
      Effect.gen(function*() {
        const schema = yield* TestDatabase.scopedSchema()
        const context = yield* Layer.build(App({ url: Redacted.make(url!), schema }).pipe(Layer.provide(quiet)))
        const run = <A, E, R extends Layer.Layer.Success<ReturnType<typeof App>> | Scope.Scope>(
          effect: Effect.Effect<A, E, R>
        ) => Effect.provide(effect, context)

        // Every store of the bus is the SQL one, on the pool's connections.
        expect(Context.getOption(context, SqlUnitOfWork.PgPool)._tag).toBe("Some")
        const sql = Context.get(context, SqlClient.SqlClient)
        expect(Context.unsafeGet(context, SqlUnitOfWork.PgPool).client).toBe(sql)

        const published = yield* run(Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe))
        const command = new Increment({ counter: "c1", by: 2, idempotencyKey: `k-${randomUUID()}` })

        // The command commits its write and its event; the relay publishes it.
        const first = yield* run(Idempotency.observeReplay(bus.dispatch(command), command))
        expect(first).toEqual({ exit: Exit.succeed({ value: 2 }), replayed: false })
        const [event] = yield* Queue.take(published).pipe(Effect.timeout("15 seconds"), Effect.map((e) => [e]))
        expect(event).toMatchObject({
          type: "Incremented",
          aggregateType: "Counter",
          aggregateId: "c1",
          aggregateVersion: 1,
          correlationId: command.correlationId,
          causationId: command.commandId,
          payload: { _tag: "Incremented", counter: "c1", by: 2 }
        })
        const stored = yield* run(eventually(
          Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 10 })),
          (events) => events.length === 1
        ))
        expect(stored.map((entry) => [entry.position, entry.event.eventId])).toEqual([[1, event!.eventId]])

        // The same key: the recorded outcome, no second write, no second event.
        const second = yield* run(Idempotency.observeReplay(bus.dispatch(command), command))
        expect(second).toEqual({ exit: Exit.succeed({ value: 2 }), replayed: true })
        expect(yield* sql`SELECT id, value FROM counters`).toEqual([{ id: "c1", value: 2 }])

        // Past its deadline: the handler's write rolls back (its pg_sleep is
        // cancelled), no event is appended, and its key is free again.
        const slow = new Increment({ counter: "c1", by: 5, idempotencyKey: `k-${randomUUID()}` })
        const timedOut = yield* run(Effect.exit(bus.dispatch(slow).pipe(Effect.provideService(HandlerSleep, 30))))
        expect(failureOf(timedOut)).toMatchObject({ _tag: "Some", value: { _tag: "CommandTimeout" } })
        expect(yield* sql`SELECT id, value FROM counters`).toEqual([{ id: "c1", value: 2 }])
        expect(yield* sql`SELECT count(*)::int AS events FROM outbox`).toEqual([{ events: 1 }])
        expect(yield* run(bus.dispatch(slow))).toEqual({ value: 7 })
        expect(yield* sql`SELECT count(*)::int AS events FROM outbox`).toEqual([{ events: 2 }])
      }),
    60_000
  )

  it.scopedLive("a command's deadline cuts its wait for a connection of a full pool", () =>
    Effect.gen(function*() {
      const schema = yield* TestDatabase.scopedSchema()
      const context = yield* Layer.build(
        // A connect timeout far past the test's bound: only the deadline can end the wait.
        App({ url: Redacted.make(url!), schema, poolSize: 1, connectTimeout: "10 minutes" }).pipe(Layer.provide(quiet))
      )
      const sql = Context.get(context, SqlClient.SqlClient)
      // The relay's drain may hold the one connection for a moment: wait for it to idle.
      yield* eventually(Effect.provide(PgPool.usage, context), (usage) => usage.open === 1 && usage.idle === 1)
      const release = yield* Deferred.make<void>()
      const holding = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(
        Effect.zipRight(sql`SELECT 1`, Effect.zipRight(Deferred.succeed(holding, undefined), Deferred.await(release)))
      ).pipe(Effect.fork)
      yield* Deferred.await(holding)
      // `sql.withTransaction` could not be interrupted in this wait; the
      // unit of work on the pool's connections can.
      const exit = yield* Effect.exit(
        Effect.provide(bus.dispatch(new Increment({ counter: "c2", by: 1 })), context).pipe(
          // Disconnected: a wait that cannot be interrupted fails the test here rather than hang it.
          Effect.disconnect,
          Effect.timeoutFail({ duration: "15 seconds", onTimeout: () => new Error("the dispatch waited on") })
        )
      )
      expect(failureOf(exit)).toMatchObject({ _tag: "Some", value: { _tag: "CommandTimeout" } })
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      expect(yield* Effect.provide(bus.dispatch(new Increment({ counter: "c2", by: 1 })), context)).toEqual({
        value: 1
      })
    }), 60_000)

  it.scopedLive(
    "schema: the tables go in it, quoted (capitals, a space, a quote), and public without one",
    () =>
      Effect.gen(function*() {
        const schema = yield* TestDatabase.scopedSchema(`Pg Pool "${randomBytes(3).toString("hex")}"`)
        const inSchema = yield* Layer.build(PgPool.layer({ url: url!, schema, poolSize: 1 }))
        const sql = Context.get(inSchema, SqlClient.SqlClient)
        expect(yield* sql`SELECT current_schema() AS schema`).toEqual([{ schema }])
        yield* Effect.provide(SqlMigrations.run, inSchema)
        const tables = yield* sql<{ readonly table_name: string }>`
        SELECT table_name FROM information_schema.tables WHERE table_schema = ${schema} ORDER BY table_name`
        expect(tables.map((row) => row.table_name)).toContain("outbox")

        // Without a schema, public: not PostgreSQL's "$user" first, which
        // would be a schema named after the login role when there is one.
        const role = yield* sql<{ readonly role: string }>`SELECT current_user AS role`
        yield* TestDatabase.scopedSchema(role[0]!.role)
        const plain = yield* Layer.build(PgPool.layer({ url: url!, poolSize: 1 }))
        expect(
          yield* Effect.provide(SqlClient.SqlClient, plain).pipe(
            Effect.flatMap((plainSql) => plainSql`SELECT current_schema() AS schema`)
          )
        ).toEqual([{ schema: "public" }])
      }),
    60_000
  )

  it.scopedLive(
    "statementTimeout cuts a statement on the server; Duration.infinity sets none",
    () =>
      Effect.gen(function*() {
        const bounded = yield* Layer.build(PgPool.layer({ url: url!, poolSize: 1, statementTimeout: "300 millis" }))
        const sql = Context.get(bounded, SqlClient.SqlClient)
        expect(yield* sql`SHOW statement_timeout`).toEqual([{ statement_timeout: "300ms" }])
        const cut = yield* Effect.flip(sql`SELECT pg_sleep(30)`.pipe(Effect.timeout("15 seconds")))
        // 57014: query_canceled, here by the statement timeout.
        expect((cut as { readonly cause?: { readonly code?: string } }).cause?.code).toBe("57014")
        expect(String((cut as { readonly cause?: unknown }).cause)).toContain("statement timeout")

        const unbounded = yield* Layer.build(
          PgPool.layer({ url: url!, poolSize: 1, statementTimeout: Duration.infinity })
        )
        expect(
          yield* Effect.provide(SqlClient.SqlClient, unbounded).pipe(
            Effect.flatMap((sql) => sql`SHOW statement_timeout`)
          )
        ).toEqual([{ statement_timeout: "0" }])
      }),
    60_000
  )

  it.scopedLive(
    "usage: the pool's size, its open, idle and lent connections, and who waits",
    () =>
      Effect.gen(function*() {
        const context = yield* Layer.build(
          PgPool.layer({ url: url!, poolSize: 2, applicationName: "pgpool-usage-test" })
        )
        const sql = Context.get(context, SqlClient.SqlClient)
        const usage = Effect.provide(PgPool.usage, context)
        expect(yield* usage).toEqual({ max: 2, open: 0, idle: 0, waiting: 0 })
        expect(yield* sql`SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()`).toEqual([
          { application_name: "pgpool-usage-test" }
        ])
        expect(yield* usage).toEqual({ max: 2, open: 1, idle: 1, waiting: 0 })

        const release = yield* Deferred.make<void>()
        const hold = sql.withTransaction(Effect.zipRight(sql`SELECT 1`, Deferred.await(release)))
        const holders = yield* Effect.fork(Effect.all([hold, hold, hold], { concurrency: "unbounded" }))
        expect(yield* eventually(usage, (now) => now.waiting === 1)).toEqual({ max: 2, open: 2, idle: 0, waiting: 1 })
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
        expect(yield* eventually(usage, (now) => now.idle === 2)).toEqual({ max: 2, open: 2, idle: 2, waiting: 0 })
      }),
    60_000
  )
})
