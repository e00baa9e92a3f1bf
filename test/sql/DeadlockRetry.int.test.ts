/**
 * A deadlock's loser (40P01) or a serialization failure (40001) whose
 * transaction was the dispatch's own rolled back whole: the retry middleware
 * runs it again for a command that marks `ConcurrencyConflict` retryable, as
 * it does an optimistic-concurrency conflict. Not for one that does not, and
 * not alone inside another's transaction (a savepoint of it). On the pool's
 * connections and on `sql.withTransaction`. Server only: the embedded
 * database runs one transaction at a time.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import {
  Command,
  CommandBus,
  CommandError,
  EventPublisher,
  Handler,
  Middleware,
  Outbox,
  UnitOfWork
} from "../../src/index.js"
import { SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"

class Cross extends Command.Class<Cross>()("Cross", {
  payload: { mine: Schema.Int, theirs: Schema.Int, run: Schema.String },
  success: Schema.Void,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

class CrossOnce extends Command.Class<CrossOnce>()("CrossOnce", {
  payload: { mine: Schema.Int, theirs: Schema.Int, run: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class ReadThenWrite extends Command.Class<ReadThenWrite>()("ReadThenWrite", {
  payload: { run: Schema.String },
  success: Schema.Void,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

// What each test's handlers wait on, and how often each ran, by run.
const gates = new Map<string, {
  readonly locked: Map<number, Deferred.Deferred<void>>
  readonly runs: Map<string, number>
}>()

const gateOf = (run: string) => gates.get(run)!

const counted = (run: string, name: string) => {
  const runs = gateOf(run).runs
  runs.set(name, (runs.get(name) ?? 0) + 1)
}

// Locks its row, waits until the other holds the other row, then asks for it.
const crossing = (command: { readonly mine: number; readonly theirs: number; readonly run: string }, name: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    counted(command.run, `${name}:${command.mine}`)
    const { locked } = gateOf(command.run)
    yield* sql`UPDATE deadlock_retry SET v = v + 1 WHERE id = ${command.mine}`
    yield* Deferred.succeed(locked.get(command.mine)!, undefined)
    yield* Deferred.await(locked.get(command.theirs)!)
    yield* sql`UPDATE deadlock_retry SET v = v + 1 WHERE id = ${command.theirs}`
    return Handler.result(undefined)
  }).pipe(Effect.orDie)

const bus = CommandBus.make([Cross, CrossOnce, ReadThenWrite], {
  Cross: (command) => crossing(command, "Cross"),
  CrossOnce: (command) => crossing(command, "CrossOnce"),
  // Under REPEATABLE READ: reads row 1, lets the other write it and commit,
  // then writes it from its older snapshot (40001), once.
  ReadThenWrite: (command) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      counted(command.run, "ReadThenWrite")
      const { locked } = gateOf(command.run)
      yield* sql`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`
      yield* sql`SELECT v FROM deadlock_retry WHERE id = 1`
      yield* Deferred.succeed(locked.get(1)!, undefined)
      yield* Deferred.await(locked.get(2)!)
      yield* sql`UPDATE deadlock_retry SET v = v + 1 WHERE id = 1`
      return Handler.result(undefined)
    }).pipe(Effect.orDie)
}).pipe(CommandBus.withMiddleware(Middleware.retry(), Middleware.transaction))

const fresh = (run: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    gates.set(run, {
      locked: new Map([[1, yield* Deferred.make<void>()], [2, yield* Deferred.make<void>()]]),
      runs: new Map()
    })
    yield* sql`CREATE TABLE IF NOT EXISTS deadlock_retry (id integer PRIMARY KEY, v integer NOT NULL)`
    yield* sql`TRUNCATE deadlock_retry`
    yield* sql`INSERT INTO deadlock_retry VALUES (1, 0), (2, 0)`
  })

const values = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    Effect.map(
      sql<{ readonly v: number }>`SELECT v FROM deadlock_retry ORDER BY id`,
      (rows) => rows.map((row) => row.v)
    )
)

const failedWithStoreUnavailable = (exit: Exit.Exit<unknown, unknown>) => {
  expect(Exit.isFailure(exit)).toBe(true)
  const cause = (exit as Exit.Failure<unknown, unknown>).cause
  expect(Cause.isDie(cause)).toBe(false)
  const error = Cause.failureOption(cause)
  expect(error._tag === "Some" && error.value instanceof CommandError.StoreUnavailable).toBe(true)
}

const cases = (
  name: string,
  world: Layer.Layer<SqlClient.SqlClient | UnitOfWork.UnitOfWork | Outbox.Outbox, unknown>
) =>
  layer(world, { excludeTestServices: true })(name, (it) => {
    it.effect("the loser of a deadlock is run again and commits; both commands' work is kept", () =>
      Effect.gen(function*() {
        yield* fresh("retried")
        const exits = yield* Effect.all([
          Effect.exit(bus.dispatch(new Cross({ mine: 1, theirs: 2, run: "retried" }))),
          Effect.exit(bus.dispatch(new Cross({ mine: 2, theirs: 1, run: "retried" })))
        ], { concurrency: "unbounded" })
        expect(exits.every(Exit.isSuccess)).toBe(true)
        expect(yield* values).toEqual([2, 2])
        // One of the two ran twice: it lost the deadlock, and its first run left nothing.
        expect([...gateOf("retried").runs.values()].sort()).toEqual([1, 2])
      }))

    it.effect("a command that does not mark ConcurrencyConflict retryable fails with StoreUnavailable", () =>
      Effect.gen(function*() {
        yield* fresh("once")
        const exits = yield* Effect.all([
          Effect.exit(bus.dispatch(new CrossOnce({ mine: 1, theirs: 2, run: "once" }))),
          Effect.exit(bus.dispatch(new CrossOnce({ mine: 2, theirs: 1, run: "once" })))
        ], { concurrency: "unbounded" })
        expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
        failedWithStoreUnavailable(exits.find(Exit.isFailure)!)
        expect(yield* values).toEqual([1, 1])
        expect([...gateOf("once").runs.values()]).toEqual([1, 1])
      }))

    it.effect("inside another's transaction (a savepoint) the loser is not run again alone", () =>
      Effect.gen(function*() {
        yield* fresh("nested")
        const unitOfWork = yield* UnitOfWork.UnitOfWork
        const exits = yield* Effect.all([
          Effect.exit(unitOfWork.transactional(bus.dispatch(new Cross({ mine: 1, theirs: 2, run: "nested" })))),
          Effect.exit(unitOfWork.transactional(bus.dispatch(new Cross({ mine: 2, theirs: 1, run: "nested" }))))
        ], { concurrency: "unbounded" })
        expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
        failedWithStoreUnavailable(exits.find(Exit.isFailure)!)
        expect(yield* values).toEqual([1, 1])
        expect([...gateOf("nested").runs.values()]).toEqual([1, 1])
      }))

    it.effect("a serialization failure (REPEATABLE READ) is run again on a fresh snapshot", () =>
      Effect.gen(function*() {
        yield* fresh("serial")
        const sql = yield* SqlClient.SqlClient
        const { locked } = gateOf("serial")
        // The other writer: waits until the command has its snapshot, then updates row 1 and commits.
        const writer = Effect.gen(function*() {
          yield* Deferred.await(locked.get(1)!)
          yield* sql`UPDATE deadlock_retry SET v = v + 10 WHERE id = 1`
        })
        const exits = yield* Effect.all([
          Effect.exit(bus.dispatch(new ReadThenWrite({ run: "serial" }))),
          Effect.exit(Effect.zipRight(Effect.orDie(writer), Deferred.succeed(locked.get(2)!, undefined)))
        ], { concurrency: "unbounded" })
        expect(exits.map((exit) => exit._tag)).toEqual(["Success", "Success"])
        expect(yield* values).toEqual([11, 0])
        expect(gateOf("serial").runs.get("ReadThenWrite")).toBe(2)
      }))
  })

if (TestDatabase.serverUrl === undefined) {
  it.skip("deadlock retries (needs DATABASE_URL: the embedded database runs one transaction at a time)", () => {})
} else {
  // The handlers append no events: the outbox is the in-memory one.
  const outbox = Outbox.layerMemory.pipe(Layer.provide(EventPublisher.layerMemory))
  cases(
    "on the pool's connections",
    Layer.mergeAll(SqlUnitOfWork.layer, outbox).pipe(Layer.provideMerge(TestDatabase.layer()))
  )
  // A client of its own, on the database's own schema: the table is dropped at the end.
  const client = Layer.scopedDiscard(
    Effect.flatMap(
      SqlClient.SqlClient,
      (sql) => Effect.addFinalizer(() => Effect.ignore(sql`DROP TABLE IF EXISTS deadlock_retry`))
    )
  ).pipe(Layer.provideMerge(PgClient.layer({ url: Redacted.make(TestDatabase.serverUrl) })))
  cases("on sql.withTransaction", Layer.mergeAll(SqlUnitOfWork.layer, outbox).pipe(Layer.provideMerge(client)))
}
