/**
 * An embedded PostgreSQL `SqlClient` for `@effect/sql` 0.52 backed by PGlite
 * (PostgreSQL compiled to WASM, running in-process on a local data directory).
 *
 * The client implements the full `PgClient` interface of `@effect/sql-pg`, so
 * code that depends on the `PgClient.PgClient` / `SqlClient.SqlClient` tags runs
 * unchanged on a real server (`PgClient.layer`) or on PGlite (`layer` below).
 *
 * PGlite is a single PostgreSQL session. Every statement is therefore funnelled
 * through one FIFO lock:
 *
 * - a statement outside a transaction holds the lock for just that statement;
 * - `withTransaction` / `reserve` hold it from `BEGIN` until `COMMIT`/`ROLLBACK`,
 *   so statements of other fibers wait instead of leaking into the open
 *   transaction; nested transactions reuse the held session via savepoints.
 *
 * PGlite cannot cancel a statement mid-flight: interrupting a fiber waits for
 * its running statement to finish, then the transaction is rolled back and the
 * lock released. Waiting in the queue is interruptible exactly when the caller
 * is (a timed-out request leaves the queue; finalizers still get their turn).
 *
 * Parameters travel as `pg` sends them to a server: as text with no declared
 * types (the server infers them), arrays as array literals, other objects as
 * JSON. So a statement means the same on both, including `pg`'s pitfall: a
 * top-level array given to `sql.json` is sent as an array literal, not JSON.
 * A statement with parameters is a named prepared statement of the session,
 * parsed and planned once (the `preparedStatements` most recently used texts,
 * 256 by default); `unprepared` statements and those without parameters are
 * parsed each time.
 *
 * Differences from a real server that callers must know:
 *
 * - Holding the session blocks everyone: inside `reserve` use only the reserved
 *   connection; a plain statement there (or from another runtime inside a
 *   transaction) waits for the lock its own fiber holds, i.e. deadlocks.
 * - PGlite runs on the JS thread: a slow statement blocks the whole event loop,
 *   and `statement_timeout` has no effect.
 * - `notify` inside `withTransaction` joins the transaction (delivered on
 *   commit); sql-pg would send it at once on another pool connection.
 * - `listen` started inside `withTransaction` sends its `LISTEN` in that
 *   transaction: a rollback undoes it and the stream hears nothing (sql-pg
 *   listens on a connection of its own). Start listeners outside transactions.
 * - The session time zone is UTC.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Client from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import { parse as PgParse, PGlite, protocol } from "@electric-sql/pglite"
import type { ParserOptions, QueryOptions, Results } from "@electric-sql/pglite"
import * as Chunk from "effect/Chunk"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { identity } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import * as Path from "node:path"
import Pg from "pg"
import { notPrivate } from "../internal/ownership.js"
import { isStale, mayBeOutdatedTypes, prepareValue } from "../internal/preparedStatement.js"
import * as SqlFailure from "./SqlFailure.js"

/**
 * @category models
 * @since 0.1.0
 */
export interface PgliteClientConfig {
  /**
   * Directory holding the PostgreSQL cluster. Created (with `initdb`) on first
   * start and reopened on later starts. `"memory://"` gives a throw-away
   * in-memory database (tests).
   *
   * Never open the same directory from two clients at once: PGlite itself does
   * not lock it. This module refuses a second open in the same process and
   * keeps a pid lock file (`.pglite-client.lock`) against other processes.
   */
  readonly dataDir: string
  /**
   * Maximum number of statements / transactions waiting for the session. When
   * the queue is full, new work fails fast with a `SqlError` instead of
   * queueing (load shedding). Defaults to unbounded.
   */
  readonly maxQueued?: number | undefined
  /**
   * How many statement texts stay prepared (named, parsed and planned once)
   * in the session; the least recently used beyond it are closed. Default
   * 256; 0 sends every statement unnamed, parsed each time.
   */
  readonly preparedStatements?: number | undefined
  readonly transformResultNames?: ((str: string) => string) | undefined
  readonly transformQueryNames?: ((str: string) => string) | undefined
  /** Apply the name transforms inside json values too (default `true`, as in sql-pg). */
  readonly transformJson?: boolean | undefined
  readonly spanAttributes?: Record<string, unknown> | undefined
}

// ---------------------------------------------------------------------------
// Session lock
// ---------------------------------------------------------------------------

const WAITING = 0
const GRANTED = 1
const CANCELLED = 2
const DONE = 3

/**
 * A FIFO queue entry. Waiters form an intrusive singly linked list so enqueue,
 * hand-off and cancellation are O(1) and allocate nothing beyond the entry.
 */
abstract class Waiter {
  next: Waiter | undefined = undefined
  state = WAITING
  abstract grant(): void
  abstract reject(error: SqlError): void
}

/**
 * Mutex over the single PGlite session.
 *
 * `Effect.Semaphore` is not used on purpose: on release it wakes every waiter
 * and lets them race for the permit, which is O(n) wake-ups per release (O(n²)
 * for a queue of n) and not FIFO. Here `release` hands the lock directly to the
 * oldest live waiter (no barging), so each release wakes exactly one waiter.
 */
class SessionLock {
  private held = false
  private head: Waiter | undefined = undefined
  private tail: Waiter | undefined = undefined
  private queued = 0
  closedWith: SqlError | undefined = undefined

  constructor(private readonly maxQueued: number) {}

  /** Takes the lock if it is free. Invariant: free lock => no live waiters. */
  tryAcquire(): boolean {
    if (this.held) return false
    this.held = true
    return true
  }

  /** Queues `waiter`, or returns the reason it cannot wait. */
  enqueue(waiter: Waiter): SqlError | undefined {
    if (this.closedWith !== undefined) return this.closedWith
    if (this.queued >= this.maxQueued) {
      return new SqlError({
        message: `PgliteClient: session queue is full (maxQueued = ${this.maxQueued})`
      })
    }
    this.queued++
    if (this.tail === undefined) this.head = waiter
    else this.tail.next = waiter
    this.tail = waiter
    return undefined
  }

  /** Cancelled entries stay linked and are skipped by `release` (lazy O(1) removal). */
  cancel(waiter: Waiter): void {
    if (waiter.state === WAITING) {
      waiter.state = CANCELLED
      this.queued--
    }
  }

  release(): void {
    let waiter = this.head
    while (waiter !== undefined) {
      this.head = waiter.next
      waiter.next = undefined
      if (waiter.state === WAITING) {
        if (this.head === undefined) this.tail = undefined
        waiter.state = GRANTED
        this.queued--
        waiter.grant()
        return
      }
      waiter = this.head
    }
    this.tail = undefined
    this.held = false
  }

  /** Fails every current and future waiter (the database is going away). */
  close(error: SqlError): void {
    this.closedWith = error
    let waiter = this.head
    this.head = this.tail = undefined
    while (waiter !== undefined) {
      const next = waiter.next
      waiter.next = undefined
      if (waiter.state === WAITING) {
        waiter.state = CANCELLED
        this.queued--
        waiter.reject(error)
      }
      waiter = next
    }
  }
}

/** A fiber waiting to hold the session across several statements (transactions, `reserve`, LISTEN). */
class LockRequest extends Waiter {
  constructor(readonly resume: (_: Effect.Effect<void, SqlError>) => void) {
    super()
  }
  grant() {
    this.resume(Effect.void)
  }
  reject(error: SqlError) {
    this.resume(Effect.fail(error))
  }
}

// ---------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------

const CONN_SESSION = 0
const CONN_HELD = 1
const CONN_RELEASED = 2
type ConnState = typeof CONN_SESSION | typeof CONN_HELD | typeof CONN_RELEASED

const MODE_ROWS = 0
const MODE_VALUES = 1
const MODE_RAW = 2
type Mode = typeof MODE_ROWS | typeof MODE_VALUES | typeof MODE_RAW

const ARRAY_ROWS: QueryOptions = { rowMode: "array" }

const invoke = (
  pg: PGlite,
  statements: PreparedStatements | undefined,
  sql: string,
  params: ReadonlyArray<unknown>,
  mode: Mode
): Promise<unknown> => {
  const options = mode === MODE_VALUES ? ARRAY_ROWS : undefined
  if (params.length === 0) {
    // Like `pg` (which uses the simple protocol when there are no parameters):
    // allows multi-statement scripts (migrations) and saves PGlite's
    // parse/describe/bind round trips for BEGIN/COMMIT/SAVEPOINT.
    return pg.exec(sql, options).then(mode === MODE_RAW ? rawResults : rowsOfResults)
  }
  const query = statements === undefined
    ? extendedQuery(pg, sql, params, options)
    : statements.query(pg, sql, params, options)
  return mode === MODE_RAW ? query : query.then(rowsOfResult)
}

const bindAndExecute = (values: Array<string | Uint8Array | null>, statement?: string): Array<Uint8Array> => [
  protocol.serialize.bind(statement === undefined ? { values } : { statement, values }),
  protocol.serialize.describe({ type: "P" }),
  protocol.serialize.execute({}),
  protocol.serialize.sync()
]

/**
 * One statement with parameters, sent as `pg` sends it: Parse (no parameter
 * types, so the server infers them), Bind (text values), Describe, Execute
 * and Sync, in one message to the backend. `PGlite.query` instead describes
 * the statement first to serialize each parameter by its type, and calls
 * into the WebAssembly backend once per protocol message; this halves the
 * cost of a short statement. Values are serialized as `pg` does, so a
 * statement means the same on PGlite and on a server.
 */
const extendedQuery = (
  pg: PGlite,
  sql: string,
  params: ReadonlyArray<unknown>,
  options: QueryOptions | undefined
): Promise<Results<unknown>> => {
  const message = concatBytes([protocol.serialize.parse({ text: sql }), ...bindAndExecute(params.map(prepareValue))])
  return pg.runExclusive(async () => {
    const messages = await pg.execProtocolStream(message, { syncToFs: false })
    return resultOf(pg, messages, options)
  })
}

// The answer to one statement's message: written to disk first when it
// committed on its own (outside a transaction), then read.
const resultOf = async (
  pg: PGlite,
  messages: Awaited<ReturnType<PGlite["execProtocolStream"]>>,
  options: QueryOptions | undefined
): Promise<Results<unknown>> => {
  if (!pg.isInTransaction()) await pg.syncToFs()
  return PgParse.parseResults(messages, pg.parsers, options)[0] as Results<unknown>
}

const STATEMENT_NEW = 0
const STATEMENT_PREPARED = 1
const STATEMENT_UNKNOWN = 2

interface PreparedStatement {
  readonly name: string
  state: typeof STATEMENT_NEW | typeof STATEMENT_PREPARED | typeof STATEMENT_UNKNOWN
}

/**
 * The session's named prepared statements, one per statement text, the
 * least recently used closed beyond `capacity`. PostgreSQL parses and plans
 * a named statement once and only binds it afterwards: in PGlite, where
 * parsing runs in WebAssembly on the caller's thread, that takes about a
 * third off a short statement.
 *
 * Prepared statements outlive transactions, rolled back or not. A statement
 * whose first message failed is in an unknown state (the Parse may or may not
 * have run), so the next use closes the name first (closing a name that does
 * not exist is no error) and parses it again. A statement dropped behind the
 * client's back (`DEALLOCATE ALL`, `DISCARD ALL`), or whose plan no longer
 * fits a changed table, is prepared again at once outside a transaction;
 * inside one, where the failure has aborted the transaction, it fails once.
 * A statement keeps the parameter types of its first Parse: after a column
 * changes type, a value that fits only the new one fails once (a data
 * exception), and the statement is parsed again on its next use.
 */
class PreparedStatements {
  private readonly bySql = new Map<string, PreparedStatement>()
  private readonly closing: Array<string> = []
  private count = 0

  constructor(readonly capacity: number) {}

  query(
    pg: PGlite,
    sql: string,
    params: ReadonlyArray<unknown>,
    options: QueryOptions | undefined
  ): Promise<Results<unknown>> {
    let values: Array<string | Uint8Array | null>
    try {
      values = params.map(prepareValue)
    } catch (cause) {
      return Promise.reject(cause)
    }
    // Looked up, sent and settled in one exclusive section: statements of a
    // held session (a transaction's, which may run concurrently) cannot push
    // out one in flight.
    return pg.runExclusive(async () => {
      const statement = this.lookup(sql)
      const message = (closing: ReadonlyArray<string>) => {
        const parts: Array<Uint8Array> = []
        for (const name of closing) parts.push(protocol.serialize.close({ type: "S", name }))
        if (statement.state === STATEMENT_UNKNOWN) {
          parts.push(protocol.serialize.close({ type: "S", name: statement.name }))
        }
        if (statement.state !== STATEMENT_PREPARED) {
          parts.push(protocol.serialize.parse({ name: statement.name, text: sql }))
        }
        for (const part of bindAndExecute(values, statement.name)) parts.push(part)
        return concatBytes(parts)
      }
      const send = (bytes: Uint8Array) => {
        const parsing = statement.state !== STATEMENT_PREPARED
        return pg.execProtocolStream(bytes, { syncToFs: false }).then(
          (messages) => {
            statement.state = STATEMENT_PREPARED
            return messages
          },
          (cause) => {
            // A failed Bind or Execute leaves a prepared statement prepared;
            // after a failed message with a Parse in it, nobody knows; and
            // one whose parameter types may be out of date is parsed again.
            statement.state = parsing || isStale(cause) || mayBeOutdatedTypes(cause)
              ? STATEMENT_UNKNOWN
              : STATEMENT_PREPARED
            return Promise.reject(cause)
          }
        )
      }
      const wasPrepared = statement.state === STATEMENT_PREPARED
      const messages = await send(message(this.closing.splice(0))).catch((cause) =>
        // Outside a transaction nothing was done: a statement that was
        // dropped, or whose plan no longer fits its tables, is prepared again.
        wasPrepared && isStale(cause) && !pg.isInTransaction() ? send(message([])) : Promise.reject(cause)
      )
      return resultOf(pg, messages, options)
    })
  }

  /** The statement for `sql`, made the most recently used; a new one may push out the least recently used. */
  private lookup(sql: string): PreparedStatement {
    const found = this.bySql.get(sql)
    if (found !== undefined) {
      this.bySql.delete(sql)
      this.bySql.set(sql, found)
      return found
    }
    if (this.bySql.size >= this.capacity) {
      const [oldestSql, oldest] = this.bySql.entries().next().value!
      this.bySql.delete(oldestSql)
      if (oldest.state !== STATEMENT_NEW) this.closing.push(oldest.name)
    }
    const statement: PreparedStatement = { name: `ecb_${this.count++}`, state: STATEMENT_NEW }
    this.bySql.set(sql, statement)
    return statement
  }
}

const concatBytes = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  let length = 0
  for (const part of parts) length += part.byteLength
  const bytes = new Uint8Array(length)
  let offset = 0
  for (const part of parts) {
    bytes.set(part, offset)
    offset += part.byteLength
  }
  return bytes
}

const rowsOfResult = (result: Results<unknown>): ReadonlyArray<unknown> => result.rows
// Multi-statement scripts return one rows array per statement, as sql-pg does.
const rowsOfResults = (results: Array<Results>): ReadonlyArray<unknown> =>
  results.length === 1 ? results[0]!.rows : results.map(rowsOfResult)
const rawResults = (results: Array<Results>): unknown => results.length === 1 ? results[0] : results

const toSqlError = (cause: unknown) => new SqlError({ cause, message: "Failed to execute statement" })

/**
 * One statement on its way to PGlite. When `locked`, it waits in the session
 * queue and, once granted, starts straight from `release` (no fiber hop
 * between consecutive statements) and releases the lock when PGlite settles.
 */
class StatementTask extends Waiter {
  private onDone: ((_: Effect.Effect<void>) => void) | undefined = undefined

  constructor(
    readonly pg: PGlite,
    readonly statements: PreparedStatements | undefined,
    readonly lock: SessionLock,
    readonly locked: boolean,
    readonly sql: string,
    readonly params: ReadonlyArray<unknown>,
    readonly mode: Mode,
    readonly resume: (_: Effect.Effect<any, SqlError>) => void
  ) {
    super()
  }

  grant() {
    let promise: Promise<unknown>
    try {
      promise = invoke(this.pg, this.statements, this.sql, this.params, this.mode)
    } catch (cause) {
      promise = Promise.reject(cause)
    }
    promise.then(
      (result) => this.settle(Effect.succeed(result)),
      (cause) => this.settle(Effect.fail(toSqlError(cause)))
    )
  }

  reject(error: SqlError) {
    this.state = DONE
    this.resume(Effect.fail(error))
  }

  private settle(exit: Effect.Effect<unknown, SqlError>) {
    this.state = DONE
    if (this.locked) this.lock.release()
    this.resume(exit)
    if (this.onDone !== undefined) this.onDone(Effect.void)
  }

  /**
   * Interruption: a queued statement is dropped; a running one cannot be
   * cancelled in PGlite, so the interrupted fiber waits for it to complete
   * (its transaction is rolled back afterwards, never concurrently).
   */
  interrupt(wake: (_: Effect.Effect<void>) => void) {
    if (this.state === WAITING) {
      this.lock.cancel(this)
      wake(Effect.void)
    } else if (this.state === GRANTED) {
      this.onDone = wake
    } else {
      wake(Effect.void)
    }
  }
}

// ---------------------------------------------------------------------------
// Type parsers: `pg`'s own, so rows look the same on PGlite and on a real
// server. PGlite's differ for some types: int8 as a number (a bigint above
// 2^53), a date as UTC midnight, years below 100 as 19xx, BC dates as
// invalid, interval and point as text.
// ---------------------------------------------------------------------------

// Every type `pg` parses (its built-in ones, and any an application
// registered with `Pg.types.setTypeParser` before the client was made).
// PGlite parses an array itself, with its element type's parser: numeric[]
// stays text, where pg's own array parser reads floats.
const pgParsers = (): ParserOptions => {
  const parserOf = Pg.types.getTypeParser as (oid: number, format: "text") => (value: string) => unknown
  const unparsed = parserOf(0, "text")
  const parsers: Record<number, (value: string) => unknown> = {}
  for (let oid = 1; oid < 10_000; oid++) {
    const parse = parserOf(oid, "text")
    if (parse !== unparsed) parsers[oid] = (value: string) => parse(value)
  }
  return parsers
}

// ---------------------------------------------------------------------------
// Data directory guard
// ---------------------------------------------------------------------------

const LOCK_FILE = ".pglite-client.lock"
const openDirs = new Set<string>()

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const dirError = (dir: string, message: string, cause?: unknown) =>
  new SqlError({ cause, message: `PgliteClient: data directory ${dir} ${message}` })

const readOwner = (lockPath: string): number | undefined => {
  try {
    const pid = Number(Fs.readFileSync(lockPath, "utf8").trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/**
 * Takes over a lock file whose owner is gone (a crash; or a pid reused by
 * this process, as a container's pid 1 is), unless the owner still runs.
 * The stale file is moved aside (one process can move it), checked to be
 * the one found stale (else put back), removed, and the lock created anew
 * with an exclusive create: of processes taking over at once, however they
 * are scheduled, one gets the lock and the others find it taken.
 */
const takeOverLockFile = (dir: string, lockPath: string): Effect.Effect<void, SqlError> =>
  Effect.suspend(() => {
    const owner = readOwner(lockPath)
    const inUse = (pid: number | undefined) =>
      Effect.fail(dirError(dir, `is in use by process ${pid ?? "(unknown)"} (${lockPath})`))
    if (owner !== undefined && owner !== process.pid && isAlive(owner)) return inUse(owner)
    const aside = `${lockPath}.stale-${process.pid}-${Math.random().toString(36).slice(2)}`
    try {
      Fs.renameSync(lockPath, aside)
    } catch {
      // Moved by another process taking over: whoever creates the lock has it.
      return createLock(dir, lockPath, () => inUse(readOwner(lockPath)))
    }
    if (readOwner(aside) !== owner) {
      // A lock written since it was read stale: give it back.
      try {
        Fs.linkSync(aside, lockPath)
      } catch {
        // another took its place meanwhile
      }
      Fs.rmSync(aside, { force: true })
      return inUse(readOwner(lockPath))
    }
    Fs.rmSync(aside, { force: true })
    return createLock(dir, lockPath, () => inUse(readOwner(lockPath)))
  })

// Creates the lock file with this process's pid, exclusively; `taken` when it exists.
const createLock = (
  dir: string,
  lockPath: string,
  taken: () => Effect.Effect<void, SqlError>
): Effect.Effect<void, SqlError> =>
  Effect.try({
    try: () => Fs.writeFileSync(lockPath, String(process.pid), { flag: "wx" }),
    catch: (cause) => cause as NodeJS.ErrnoException
  }).pipe(
    Effect.catchAll((cause) =>
      cause.code === "EEXIST" ? taken() : Effect.fail(dirError(dir, "could not be locked", cause))
    )
  )

/**
 * Creates `dir` if needed (PGlite's NodeFS only creates the last path segment)
 * and claims it for this process, since PGlite happily opens a directory that
 * another instance is using. Claims are by the directory's real path, so a
 * symbolic link to an open directory is refused too. Returns that path (PGlite
 * cannot open a link) and the release function, which removes the lock file
 * only while it is this process's.
 *
 * The directory is its owner's alone, as PostgreSQL requires of its data
 * directory: PGlite writes its files readable and writable by anyone (0666,
 * whatever the umask), rows included. New directories are created 0700; one
 * that other users can reach is made 0700, with a warning; one that belongs
 * to another user is refused.
 */
const claimDataDir = (
  path: string
): Effect.Effect<{ readonly dir: string; readonly release: () => void }, SqlError> =>
  Effect.try({
    try: () => {
      Fs.mkdirSync(path, { recursive: true, mode: 0o700 })
      return Fs.realpathSync(path)
    },
    catch: (cause) => dirError(path, "could not be created", cause)
  }).pipe(
    Effect.tap(keepPrivate),
    Effect.flatMap((dir) => {
      if (openDirs.has(dir)) return Effect.fail(dirError(dir, "is already open in this process"))
      openDirs.add(dir)
      const lockPath = Path.join(dir, LOCK_FILE)
      const release = () => {
        openDirs.delete(dir)
        if (readOwner(lockPath) !== process.pid) return
        try {
          Fs.unlinkSync(lockPath)
        } catch {
          // already gone
        }
      }
      return createLock(dir, lockPath, () => takeOverLockFile(dir, lockPath)).pipe(
        Effect.as({ dir, release }),
        Effect.tapError(() => Effect.sync(() => openDirs.delete(dir)))
      )
    })
  )

// The data directory for its owner alone; see `claimDataDir`.
const keepPrivate = (dir: string): Effect.Effect<void, SqlError> =>
  Effect.suspend(() => {
    let stat: Fs.Stats
    try {
      stat = Fs.statSync(dir)
    } catch (cause) {
      return Effect.fail(dirError(dir, "cannot be read", cause))
    }
    const refused = notPrivate(stat)
    if (refused === undefined) return Effect.void
    if (refused._tag === "AnotherUser") {
      return Effect.fail(
        dirError(dir, `belongs to another user (uid ${refused.uid}), not this process's (uid ${process.getuid?.()})`)
      )
    }
    try {
      Fs.chmodSync(dir, 0o700)
    } catch (cause) {
      return Effect.fail(dirError(dir, "can be reached by other users and cannot be made private", cause))
    }
    return Effect.logWarning("pglite.data-dir-restricted").pipe(
      Effect.annotateLogs({
        dataDir: dir,
        mode: refused.mode,
        now: "700",
        reason: "the database's files are readable by anyone: only its owner may reach the directory"
      })
    )
  })

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

const escapeIdentifier = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

const PgJson = Statement.custom<PgClient.PgCustom>("PgJson")

/**
 * Opens (or creates) the database and returns a client implementing the full
 * `PgClient` interface. The database is closed, and flushed to disk, when the
 * scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (
  config: PgliteClientConfig
): Effect.Effect<PgClient.PgClient, SqlError, Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const compiler = PgClient.makeCompiler(config.transformQueryNames, config.transformJson)
    const transformRows = config.transformResultNames
      ? Statement.defaultTransforms(config.transformResultNames, config.transformJson).array
      : undefined

    const onDisk = !config.dataDir.includes("://")
    const dataDir = onDisk ? Path.resolve(config.dataDir) : config.dataDir
    const lock = new SessionLock(config.maxQueued ?? Number.POSITIVE_INFINITY)

    // Takes the session lock; called where interruption is masked, with
    // `restore` making only the wait interruptible (`identity` for callers
    // that are not). A free lock is taken with no interruptible step after
    // it, and a wait that ends any way but success (interrupted while queued,
    // or after the grant but before the caller holds it) gives the lock back
    // or leaves the queue: either way, no lock without an owner.
    const acquireLockWith = (
      restore: (wait: Effect.Effect<void, SqlError>) => Effect.Effect<void, SqlError>
    ): Effect.Effect<void, SqlError> =>
      Effect.suspend(() => {
        if (lock.closedWith !== undefined) return Effect.fail(lock.closedWith)
        if (lock.tryAcquire()) return Effect.void
        let request: LockRequest | undefined
        return Effect.onExit(
          restore(Effect.async<void, SqlError>((resume) => {
            const queued = new LockRequest(resume)
            const error = lock.enqueue(queued)
            if (error !== undefined) return resume(Effect.fail(error))
            request = queued
          })),
          (exit) =>
            Effect.sync(() => {
              if (Exit.isSuccess(exit) || request === undefined) return
              if (request.state === GRANTED) lock.release()
              else lock.cancel(request)
            })
        )
      })

    // Single listener for all channels; `listen` streams subscribe here.
    const channels = new Map<string, Set<(payload: string) => void>>()
    const onNotification = (channel: string, payload: string) => {
      const subscribers = channels.get(channel)
      // Empty payloads are dropped, as sql-pg does.
      if (subscribers === undefined || !payload) return
      for (const subscriber of subscribers) subscriber(payload)
    }

    const pg = yield* Effect.acquireRelease(
      Effect.gen(function*() {
        const claimed = onDisk ? yield* claimDataDir(dataDir) : undefined
        const releaseDir = claimed?.release
        const pg = yield* Effect.tryPromise({
          try: () => PGlite.create(claimed?.dir ?? dataDir, { parsers: pgParsers() }),
          catch: (cause) => new SqlError({ cause, message: `PgliteClient: failed to open ${dataDir}` })
        }).pipe(Effect.tapError(() => Effect.sync(() => releaseDir?.())))
        return { pg, releaseDir }
      }),
      ({ pg, releaseDir }) =>
        Effect.gen(function*() {
          // Let the running transaction (if any) finish, bounded, so close does
          // not tear the session down under it; then fail all other waiters.
          yield* Effect.ignore(Effect.timeoutOption(acquireLockWith(Effect.interruptible), "5 seconds"))
          lock.close(new SqlError({ message: "PgliteClient: the database is closed" }))
          yield* Effect.tryPromise(() => pg.close()).pipe(Effect.ignoreLogged)
          releaseDir?.()
        })
    ).pipe(Effect.map(({ pg }) => pg))
    pg.onNotification(onNotification)
    const capacity = config.preparedStatements ?? 256
    const statements = capacity > 0 ? new PreparedStatements(capacity) : undefined

    const released = new SqlError({
      message: "PgliteClient: connection used after its transaction or reservation ended"
    })

    const run = (
      conn: PgliteConnection,
      sql: string,
      params: ReadonlyArray<unknown>,
      mode: Mode,
      prepare = true
    ): Effect.Effect<any, SqlError> =>
      Effect.async<any, SqlError>((resume) => {
        const state = conn.state
        if (state === CONN_RELEASED) {
          // e.g. a fiber forked inside a transaction that outlived it: running
          // now would interleave with whoever holds the session.
          resume(Effect.fail(released))
          return
        }
        const locked = state === CONN_SESSION
        const task = new StatementTask(pg, prepare ? statements : undefined, lock, locked, sql, params, mode, resume)
        if (!locked || (lock.closedWith === undefined && lock.tryAcquire())) {
          task.state = GRANTED
          task.grant()
        } else {
          const error = lock.enqueue(task)
          if (error !== undefined) {
            task.state = DONE
            resume(Effect.fail(error))
            return
          }
        }
        return Effect.async<void>((wake) => task.interrupt(wake))
      })

    class PgliteConnection implements Connection {
      constructor(public state: ConnState) {}

      execute(
        sql: string,
        params: ReadonlyArray<unknown>,
        transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
      ): Effect.Effect<ReadonlyArray<any>, SqlError> {
        const rows = run(this, sql, params, MODE_ROWS)
        return transformRows ? Effect.map(rows, transformRows) : rows
      }
      executeRaw(sql: string, params: ReadonlyArray<unknown>): Effect.Effect<unknown, SqlError> {
        return run(this, sql, params, MODE_RAW)
      }
      executeValues(
        sql: string,
        params: ReadonlyArray<unknown>
      ): Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError> {
        return run(this, sql, params, MODE_VALUES)
      }
      executeUnprepared(
        sql: string,
        params: ReadonlyArray<unknown>,
        transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
      ): Effect.Effect<ReadonlyArray<any>, SqlError> {
        const rows = run(this, sql, params, MODE_ROWS, false)
        return transformRows ? Effect.map(rows, transformRows) : rows
      }
      executeStream(
        sql: string,
        params: ReadonlyArray<unknown>,
        transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
      ): Stream.Stream<any, SqlError> {
        // PGlite has no cursors: the result is materialised, then streamed. The
        // session is held only while the query runs, not while it is consumed.
        return Stream.flatMap(
          Stream.fromEffect(this.execute(sql, params, transformRows)),
          (rows) => Stream.fromChunk(Chunk.unsafeFromArray(rows))
        )
      }
    }

    /** Statements on it take the session lock one at a time. */
    const sessionConnection = new PgliteConnection(CONN_SESSION)
    /** A connection for one holder of the session (transaction, `reserve`, LISTEN), dead once released. */
    const holdSession = (scope: Scope.Scope) =>
      Effect.suspend(() => {
        const conn = new PgliteConnection(CONN_HELD)
        return Effect.as(
          Scope.addFinalizer(
            scope,
            Effect.sync(() => {
              conn.state = CONN_RELEASED
              lock.release()
            })
          ),
          conn
        )
      })

    // Waiting for the session is interruptible exactly when the caller is: a
    // timed-out request leaves the queue at once, while cleanup code (a
    // finalizer, an uninterruptible region) still gets its turn.

    /** Holds the session until the scope closes (`reserve`). */
    const reserve: Effect.Effect<Connection, SqlError, Scope.Scope> = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(acquireLockWith(restore), Effect.flatMap(Effect.scope, holdSession))
    )

    /** Runs `f` with exclusive use of the session: the current transaction's, or a freshly locked one. */
    const withSession = <A>(f: (conn: Connection) => Effect.Effect<A, SqlError>): Effect.Effect<A, SqlError> =>
      Effect.flatMap(
        Effect.serviceOption(Client.TransactionConnection),
        (tx) =>
          tx._tag === "Some"
            ? f(tx.value[0])
            : Effect.uninterruptibleMask((restore) =>
              Effect.zipRight(
                acquireLockWith(restore),
                Effect.flatMap(Scope.make(), (scope) =>
                  Effect.flatMap(
                    holdSession(scope),
                    (conn) => Effect.onExit(restore(f(conn)), (exit) => Scope.close(scope, exit))
                  ))
              )
            )
      )

    const spanAttributes: ReadonlyArray<readonly [string, unknown]> = [
      ...(config.spanAttributes ? Object.entries(config.spanAttributes) : []),
      ["db.system.name", "postgresql"],
      ["db.namespace", "postgres"]
    ]

    // `makeWithTransaction` acquires inside `uninterruptibleMask`, which hides
    // the caller's interruptibility; so build one variant per mode and pick it
    // before entering the mask.
    const makeWithTransaction = (acquire: Effect.Effect<void, SqlError>) =>
      Client.makeWithTransaction({
        transactionTag: Client.TransactionConnection,
        spanAttributes,
        acquireConnection: Effect.zipRight(
          acquire,
          Effect.flatMap(
            Scope.make(),
            (scope) =>
              Effect.map(holdSession(scope), (conn): readonly [Scope.CloseableScope, Connection] => [scope, conn])
          )
        ),
        begin: (conn) => conn.executeUnprepared("BEGIN", [], undefined),
        savepoint: (conn, id) => conn.executeUnprepared(`SAVEPOINT effect_sql_${id}`, [], undefined),
        // COMMIT of a transaction a failed statement aborted rolls back without
        // an error (and PGlite does not hand over the command tag that says
        // so): a statement first tells, then COMMIT ends it either way.
        commit: (conn) =>
          Effect.flatMap(
            Effect.either(SqlFailure.failIfAborted(conn.executeUnprepared("SELECT 1", [], undefined))),
            (checked) => Effect.zipRight(conn.executeUnprepared("COMMIT", [], undefined), checked)
          ),
        rollback: (conn) => conn.executeUnprepared("ROLLBACK", [], undefined),
        rollbackSavepoint: (conn, id) => conn.executeUnprepared(`ROLLBACK TO SAVEPOINT effect_sql_${id}`, [], undefined)
      })
    const withTransactionInterruptible = makeWithTransaction(acquireLockWith(Effect.interruptible))
    const withTransactionUninterruptible = makeWithTransaction(acquireLockWith(identity))
    const withTransaction = <R, E, A>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
      Effect.checkInterruptible((interruptible) =>
        interruptible ? withTransactionInterruptible(self) : withTransactionUninterruptible(self)
      )

    const client = yield* Client.make({
      acquirer: Effect.succeed(sessionConnection),
      transactionAcquirer: reserve,
      compiler,
      spanAttributes,
      transformRows
    })

    const pgConfig: PgClient.PgClientConfig = {
      database: "postgres",
      username: "postgres",
      applicationName: "pglite",
      spanAttributes: config.spanAttributes,
      transformResultNames: config.transformResultNames,
      transformQueryNames: config.transformQueryNames,
      transformJson: config.transformJson
    }

    const listen = (channel: string): Stream.Stream<string, SqlError> =>
      Stream.asyncPush<string, SqlError>((emit) => {
        const subscriber = (payload: string) => {
          emit.single(payload)
        }
        const unsubscribe = (conn: Connection) =>
          Effect.suspend(() => {
            const subscribers = channels.get(channel)
            if (subscribers === undefined || !subscribers.delete(subscriber) || subscribers.size > 0) {
              return Effect.void
            }
            channels.delete(channel)
            return conn.executeUnprepared(`UNLISTEN ${escapeIdentifier(channel)}`, [], undefined)
          })
        // Decide LISTEN/UNLISTEN while holding the session so the statements
        // run in the same order as the subscription changes.
        return Effect.acquireRelease(
          withSession((conn) =>
            Effect.suspend(() => {
              let subscribers = channels.get(channel)
              if (subscribers === undefined) {
                subscribers = new Set()
                channels.set(channel, subscribers)
              }
              subscribers.add(subscriber)
              if (subscribers.size > 1) return Effect.void
              return conn.executeUnprepared(`LISTEN ${escapeIdentifier(channel)}`, [], undefined).pipe(
                Effect.tapError(() => unsubscribe(conn).pipe(Effect.ignore)),
                Effect.asVoid
              )
            })
          ),
          // Failures here only mean the database is already closed.
          () => withSession(unsubscribe).pipe(Effect.ignore)
        )
      })

    // `NOTIFY ch, $1` is not valid SQL (NOTIFY takes no parameters); use the
    // function form. Inside `withTransaction` it joins the transaction (on
    // sql-pg it would go out on another pool connection immediately).
    const notify = (channel: string, payload: string): Effect.Effect<void, SqlError> =>
      Effect.flatMap(
        Effect.serviceOption(Client.TransactionConnection),
        (tx) =>
          Effect.asVoid(
            (tx._tag === "Some" ? tx.value[0] : sessionConnection).execute(
              "SELECT pg_notify($1, $2)",
              [channel, payload],
              undefined
            )
          )
      )

    const pgClient: PgClient.PgClient = Object.assign(client, {
      [PgClient.TypeId]: PgClient.TypeId,
      [SqlFailure.checksAbortedCommit]: true,
      withTransaction,
      reserve,
      config: pgConfig,
      json: (_: unknown) => PgJson(_, undefined, undefined),
      listen,
      notify
    })
    return pgClient
  })

/**
 * Provides both `PgClient.PgClient` and `SqlClient.SqlClient`.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer = (
  config: PgliteClientConfig
): Layer.Layer<PgClient.PgClient | Client.SqlClient, SqlError> =>
  Layer.scopedContext(
    Effect.map(make(config), (client) =>
      Context.make(PgClient.PgClient, client).pipe(
        Context.add(Client.SqlClient, client)
      ))
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * @category layers
 * @since 0.1.0
 */
export const layerConfig = (
  config: Config.Config.Wrap<PgliteClientConfig>
): Layer.Layer<PgClient.PgClient | Client.SqlClient, ConfigError.ConfigError | SqlError> =>
  Layer.scopedContext(
    Config.unwrap(config).pipe(
      Effect.flatMap(make),
      Effect.map((client) =>
        Context.make(PgClient.PgClient, client).pipe(
          Context.add(Client.SqlClient, client)
        )
      )
    )
  ).pipe(Layer.provide(Reactivity.layer))
