/**
 * A `pg` client class that sends statements as named prepared statements.
 *
 * `pg` (and `@effect/sql-pg` over it) sends every statement unnamed, so the
 * server parses and plans it each time. With this class as a pool's `Client`
 * (`new Pg.Pool({ Client: PgPreparedClient.make() })`, then
 * `PgClient.layerFromPool`), a statement with parameters gets one name per
 * text: each connection parses and plans it once and binds it afterwards.
 * On this project's create-order transaction that took about a quarter off
 * PostgreSQL's CPU per order.
 *
 * - Only the first `capacity` texts (default 256) are named, so a connection
 *   never holds more; statements beyond them, and those without parameters,
 *   go unnamed as before.
 * - A statement dropped behind the client's back (`DEALLOCATE ALL`,
 *   `DISCARD ALL`), or whose plan no longer fits a changed table ("cached
 *   plan must not change result type"), gets a new name on that connection;
 *   when the connection was idle with nothing queued, it runs again under it
 *   at once; otherwise (in a transaction the failure has aborted) it fails
 *   once. A statement keeps the parameter types of its first Parse: after a
 *   column changes type, a value that fits only the new one fails once (a
 *   data exception), and the next use parses it again under a new name.
 *   Statements left behind by a rename are deallocated when the connection
 *   is next idle, one per statement sent on an idle connection.
 * - A value `pg` cannot serialize fails before any name is involved; an
 *   error without a SQLSTATE (a read timeout, a row no type parser takes)
 *   leaves the statement as it is.
 * - `pg`'s pipeline mode, config objects that are class instances or carry
 *   a callback of their own, and submittables (cursors) go unnamed.
 * - `deferBegin()` opens a transaction with the connection's next statement:
 *   `BEGIN` goes out in the same write as that statement, one round trip
 *   less per transaction (see `deferBegin`).
 * - `deferUntilCommit()` holds back a write whose answer nobody reads, and
 *   `commitDeferred()` sends the held writes and `COMMIT` in one exchange:
 *   a round trip less per held write (see `deferUntilCommit`).
 * - Not for a pooler in transaction mode (PgBouncer before 1.21, or without
 *   `max_prepared_statements`), where the next statement may reach another
 *   server connection.
 *
 * @since 0.1.0
 */
import Pg from "pg"
import { maxTimerMillis } from "../internal/limit.js"
import { isStale, mayBeOutdatedTypes, prepareValue, sqlState } from "../internal/preparedStatement.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** How many statement texts get a name (default 256; 0 names none). */
  readonly capacity?: number | undefined
  /**
   * How long, in milliseconds, a statement may wait for the server's answer
   * before its connection is closed (default: as long as it takes).
   * PostgreSQL's `statement_timeout` ends a statement the server runs; it
   * cannot end one whose answer never comes back (a network partition, a
   * frozen server, a failover that drops packets), which waits until the
   * kernel gives up on the socket, many minutes later. Past this delay the
   * connection is closed: its statements fail with `ETIMEDOUT`, as on a
   * dead socket, and a pool replaces it. Set it above `statement_timeout`,
   * which ends a slow statement with a clearer error. Cursors (submittables)
   * are not bounded.
   */
  readonly answerTimeout?: number | undefined
}

type Callback = (error: Error | null, result?: unknown) => void

interface QueryConfig {
  readonly text: string
  readonly values?: ReadonlyArray<unknown>
  readonly name?: string
  readonly submit?: unknown
  readonly callback?: unknown
}

// Given a config object, `pg` copies it property by property
// (`Object.getOwnPropertyDescriptors`), a few microseconds per statement;
// given a text, it only wraps it. So a statement of a name, a text and
// values goes as `pg`'s own `Query` made from its text, named after.
const isBare = (config: QueryConfig): boolean => {
  for (const key in config) if (key !== "name" && key !== "text" && key !== "values") return false
  return true
}

type NamedQuery = Pg.Query & { name?: string | undefined }

const namedQuery = (config: QueryConfig, callback: Callback): NamedQuery => {
  // `pg`'s declarations type neither a `Query`'s name nor this constructor's callback.
  const query = new Pg.Query(config.text, config.values as Array<unknown>, callback as any) as NamedQuery
  query.name = config.name
  return query
}

/** What of `pg`'s `Query` a statement sent after `BEGIN` overrides. */
interface QueryInternals {
  prepare(connection: unknown): void
  handleCommandComplete(message: unknown, connection: unknown): void
}

interface WireConnection {
  parse(message: { readonly text: string }): void
  bind(message: object): void
  execute(message: object): void
}

/**
 * `query` with `BEGIN` before it in the same extended-protocol exchange:
 * `BEGIN` is parsed, bound and executed unnamed, then the statement (already
 * parsed on the connection, so no second ParseComplete reaches `pg`) is bound
 * and executed, and one Sync ends both. PostgreSQL runs them in order; an
 * error in the statement leaves the transaction open and aborted, as when
 * the two go one after the other. `BEGIN`'s CommandComplete is not the
 * statement's result: `begun` is told of it instead.
 */
const afterBegin = (query: NamedQuery, begun: () => void): NamedQuery => {
  const own = query as unknown as QueryInternals
  const prepare = own.prepare
  const handleCommandComplete = own.handleCommandComplete
  let begunYet = false
  own.prepare = function(this: QueryInternals, connection: unknown) {
    const wire = connection as WireConnection
    wire.parse({ text: "BEGIN" })
    wire.bind({})
    wire.execute({})
    prepare.call(this, connection)
  }
  own.handleCommandComplete = function(this: QueryInternals, message: unknown, connection: unknown) {
    if (begunYet) return handleCommandComplete.call(this, message, connection)
    begunYet = true
    begun()
  }
  return query
}

/**
 * How a `commitDeferred` ended, when PostgreSQL answered it: `Committed`,
 * `RolledBack` (the transaction was aborted before, by a statement whose
 * error its caller went past: PostgreSQL answers `COMMIT` with `ROLLBACK`),
 * or `Failed`: the held write `index` (in the order they were held) failed
 * with `error`, and the transaction is still open, aborted, for the caller
 * to roll back. An error of `COMMIT` itself, or of the connection, is the
 * callback's error instead.
 *
 * @since 0.1.0
 * @category models
 */
export type CommitOutcome =
  | { readonly _tag: "Committed" }
  | { readonly _tag: "RolledBack" }
  | { readonly _tag: "Failed"; readonly index: number; readonly error: Error }

type CommitCallback = (error: Error | null, outcome?: CommitOutcome) => void

interface ExchangeConnection extends WireConnection {
  parse(message: { readonly text: string; readonly name?: string | undefined }): void
  sync(): void
  on(event: "parseComplete", listener: () => void): void
  off(event: "parseComplete", listener: () => void): void
  readonly parsedStatements: Record<string, string>
  readonly stream: { cork?: () => void; uncork?: () => void }
}

/**
 * Held writes and `COMMIT` as one extended-protocol exchange, for `pg` to
 * submit like a cursor: each write (a named statement) parsed when the
 * connection has not parsed it yet, bound and executed, then `COMMIT`
 * parsed, bound and executed, and one Sync. PostgreSQL runs them in order
 * and skips the rest after an error, `COMMIT` included, so a write that
 * fails leaves the transaction open and aborted: nothing of it commits. Rows
 * a write returns are not read.
 */
class CommitExchange {
  /** Set by `pg` when it bounds the exchange with a read timeout; answered once. */
  callback: CommitCallback | undefined
  private completed = 0
  private command: string | undefined
  private connection: ExchangeConnection | undefined
  /** The writes this exchange parses, in order, and how many of their Parses succeeded. */
  private readonly parses: Array<QueryConfig> = []
  private parseCompletes = 0
  private readonly onParseComplete = () => {
    this.parseCompletes++
  }

  constructor(private readonly writes: ReadonlyArray<QueryConfig>, callback: CommitCallback) {
    this.callback = callback
  }

  submit(connection: ExchangeConnection): null {
    this.connection = connection
    // `pg` keeps a connection's parsed statements from the ParseComplete of
    // a query with a name, which this exchange is not: counted here instead.
    connection.on("parseComplete", this.onParseComplete)
    connection.stream.cork?.()
    try {
      for (const write of this.writes) {
        const name = write.name!
        if (!(name in connection.parsedStatements) && !this.parses.some((parsed) => parsed.name === name)) {
          connection.parse({ text: write.text, name })
          this.parses.push(write)
        }
        connection.bind({ statement: name, values: write.values, valueMapper: prepareValue })
        connection.execute({})
      }
      connection.parse({ text: "COMMIT" })
      connection.bind({})
      connection.execute({})
      connection.sync()
    } finally {
      connection.stream.uncork?.()
    }
    return null
  }

  handleCommandComplete(message: { readonly text?: string; readonly command?: string }): void {
    if (this.completed < this.writes.length) this.completed++
    // The tag: `text` from `pg`'s JavaScript parser, `command` from its native one.
    else this.command = message.text ?? message.command
  }

  // The writes' rows (no Describe was sent, so no RowDescription comes).
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handlePortalSuspended(): void {}
  handleEmptyQuery(): void {}
  handleCopyData(): void {}
  handleCopyInResponse(connection: { sendCopyFail(message: string): void }): void {
    connection.sendCopyFail("No source stream defined")
  }

  handleError(error: Error): void {
    // The writes before the failed one completed: its index is their count.
    // Past them all, it is COMMIT's error. An error that is not the server's
    // answer (a socket reset, a closed connection, each with a `code` of its
    // own) says nothing of how far the server got: it may have committed,
    // so it is never taken for a write's failure.
    const failedWrite = this.completed < this.writes.length && error instanceof Pg.DatabaseError
    this.answer(failedWrite ? null : error, failedWrite ? { _tag: "Failed", index: this.completed, error } : undefined)
  }

  handleReadyForQuery(): void {
    this.answer(null, this.command === "COMMIT" ? { _tag: "Committed" } : { _tag: "RolledBack" })
  }

  private answer(error: Error | null, outcome?: CommitOutcome): void {
    const connection = this.connection
    if (connection !== undefined) {
      this.connection = undefined
      connection.off("parseComplete", this.onParseComplete)
      // The Parses answered are the first ones sent (PostgreSQL skips the
      // rest after an error): those statements exist on the connection now.
      for (const parsed of this.parses.slice(0, this.parseCompletes)) {
        connection.parsedStatements[parsed.name!] = parsed.text
      }
    }
    const callback = this.callback
    this.callback = undefined
    callback?.(error, outcome)
  }
}

/**
 * A connection's socket as `pg` holds it: a `net.Socket`, or over TLS a
 * `tls.TLSSocket` whose `_parent` is the `net.Socket` it runs on.
 */
interface Stream {
  destroy(error?: Error): void
  resetAndClosing?: boolean
  readonly _handle?: { readonly reset?: unknown } | null
  readonly _parent?: Stream | null
}

// Node resets a socket on destroy when `resetAndClosing` is set, through its
// handle's `reset`, which only a TCP handle has (not a TLS or a pipe one).
const isResettable = (stream: Stream | null | undefined): boolean => typeof stream?._handle?.reset === "function"

/** What `pg.Client` keeps to itself and this class reads. */
interface ClientState {
  readonly _txStatus?: unknown
  readonly _activeQuery?: unknown
  readonly _queryQueue?: ReadonlyArray<unknown>
  readonly readyForQuery?: unknown
  readonly pipeline?: unknown
  readonly connection: {
    readonly parsedStatements: Record<string, string>
    readonly submittedNamedStatements: Record<string, string>
  }
}

/**
 * A client of the class `make` returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface PreparedClient extends Pg.Client {
  /**
   * Opens a transaction with this connection's next statement instead of
   * now: `BEGIN` goes out in the same write and the same extended-protocol
   * exchange as that statement when it is a named statement the connection
   * has parsed already (what a warm pool's transactions send), and just
   * before it otherwise. A transaction that sends no statement sends no
   * `BEGIN` (see `cancelDeferredBegin`). Should `BEGIN` itself fail, the
   * connection is closed: nothing sent after it may run outside the
   * transaction it was meant to open. In `pg`'s pipeline mode, which sends a
   * statement before `BEGIN`'s answer is in, it defers nothing and answers
   * `false`: send `BEGIN` and wait for it there.
   */
  deferBegin(): boolean
  /**
   * Whether a `deferBegin` is still waiting for its statement (none was
   * sent, so the server knows of no transaction); either way none is
   * waiting after this call.
   */
  cancelDeferredBegin(): boolean
  /**
   * Holds back `text` with `values`, a write of the open transaction whose
   * answer nobody reads, to go out with its `COMMIT` (`commitDeferred`): one
   * round trip less. It answers `false`, and holds nothing, unless the
   * connection is in a transaction whose `BEGIN` went out (none deferred),
   * with nothing running or queued, and the statement gets a name (it has
   * parameters, and the names are not all taken); then run the statement as
   * usual. A statement sent before the commit sends the held writes first,
   * in order, so none runs out of its place.
   *
   * A held write that fails fails the commit: `commitDeferred` answers
   * `Failed` with its index. So a write whose outcome must decide the commit
   * (a row count to check) has to raise an error in SQL instead.
   */
  deferUntilCommit(text: string, values: ReadonlyArray<unknown>): boolean
  /**
   * Sends the held writes and `COMMIT` in one exchange (see `CommitOutcome`).
   * Answers `false`, and sends nothing, when no write is held and none failed
   * since the transaction began: then send `COMMIT` as usual.
   */
  commitDeferred(callback: (error: Error | null, outcome?: CommitOutcome) => void): boolean
  /** Drops the held writes (the transaction rolls back instead). */
  dropDeferred(): void
  /**
   * The first held write that failed when a later statement sent it ahead
   * (its index, in the order they were held), and forgets it: the root of the
   * transaction's failure, whatever the statements after it failed with.
   */
  takeDeferredFailure(): { readonly index: number; readonly error: Error } | undefined
}

/**
 * A `pg.Client` subclass whose statements with parameters are named, one
 * name per text, shared by every client of the class (so by a pool's
 * connections).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): (new(config?: string | Pg.ClientConfig) => PreparedClient) & typeof Pg.Client => {
  const capacity = options.capacity ?? 256
  // Node fires a timer of more than 2^31 - 1 ms at once: a longer delay is no bound.
  const answerTimeout = options.answerTimeout !== undefined && options.answerTimeout <= maxTimerMillis
    ? options.answerTimeout
    : undefined
  const names = new Map<string, string>()
  const nameOf = (text: string): string | undefined => {
    let name = names.get(text)
    if (name === undefined && names.size < capacity) {
      name = `ecb_${names.size}`
      names.set(text, name)
    }
    return name
  }

  return class Prepared extends Pg.Client implements PreparedClient {
    /** This connection's name for a text whose statement it had to prepare again. */
    private renamed: Map<string, string> | undefined
    private renames = 0
    /** Statements left on the server by a rename, deallocated when the connection is next idle. */
    private abandoned: Array<string> = []
    /** Set by `deferBegin`: the next statement opens the transaction. */
    private beginPending = false
    /** Writes held for the commit (`deferUntilCommit`). */
    private deferred: Array<QueryConfig> = []
    /** How many writes were held in this transaction, sent ahead or not. */
    private deferredCount = 0
    /** The first held write that failed when another statement sent it ahead. */
    private deferredFailure: { readonly index: number; readonly error: Error } | undefined

    deferBegin(): boolean {
      if (this.state().pipeline) return false
      // A new transaction: nothing is held for it yet.
      this.dropDeferred()
      this.beginPending = true
      return true
    }

    cancelDeferredBegin(): boolean {
      const pending = this.beginPending
      this.beginPending = false
      return pending
    }

    deferUntilCommit(text: string, values: ReadonlyArray<unknown>): boolean {
      const state = this.state()
      // In a transaction that began ("T": not idle, not aborted), with
      // nothing in flight that the write would have to wait for. The status
      // is the last ReadyForQuery's: `pg` reports an error before the one
      // that follows it, so until then a status of "T" may be stale.
      if (
        this.beginPending || state.pipeline || state.readyForQuery !== true || state._txStatus !== "T" ||
        (state._activeQuery ?? null) !== null || (state._queryQueue?.length ?? 0) > 0
      ) return false
      const named = this.named(text, values)
      if (named === undefined || !isBare(named)) return false
      this.deferred.push(named)
      this.deferredCount++
      return true
    }

    commitDeferred(callback: (error: Error | null, outcome?: CommitOutcome) => void): boolean {
      if (this.deferred.length === 0 && this.deferredFailure === undefined) {
        this.deferredCount = 0
        return false
      }
      const writes = this.deferred
      const failedAhead = this.deferredFailure
      const offset = this.deferredCount - writes.length
      this.deferred = []
      this.deferredFailure = undefined
      this.deferredCount = 0
      // `answerTimeout` bounds each statement: the exchange holds the writes and COMMIT.
      const bound = answerTimeout === undefined
        ? undefined
        : Math.min(answerTimeout * (writes.length + 1), maxTimerMillis)
      const timer = bound === undefined ? undefined : setTimeout(() => this.close(bound), bound)
      super.query(
        new CommitExchange(writes, (error, outcome) => {
          clearTimeout(timer)
          if (outcome?._tag === "Failed") this.renameIfStale(writes[outcome.index]!, outcome.error)
          // A write sent ahead failed first: it aborted the transaction, and
          // what came after it failed or rolled back for that reason.
          if (error === null && failedAhead !== undefined) return callback(null, { _tag: "Failed", ...failedAhead })
          if (outcome?._tag === "Failed") return callback(null, { ...outcome, index: offset + outcome.index })
          callback(error, outcome)
        }) as unknown as Pg.QueryConfig
      )
      return true
    }

    dropDeferred(): void {
      this.deferred = []
      this.deferredFailure = undefined
      this.deferredCount = 0
    }

    takeDeferredFailure(): { readonly index: number; readonly error: Error } | undefined {
      const failure = this.deferredFailure
      this.deferredFailure = undefined
      return failure
    }

    /**
     * Sends the held writes ahead of another statement, in order, each on
     * its own; the first that fails is kept for the commit to report.
     */
    private sendDeferredAhead() {
      const writes = this.deferred
      const offset = this.deferredCount - writes.length
      this.deferred = []
      writes.forEach((write, i) =>
        super.query(namedQuery(write, (error) => {
          if (error === null || this.deferredFailure !== undefined) return
          this.renameIfStale(write, error)
          this.deferredFailure = { index: offset + i, error }
        }))
      )
    }

    override query(config: any, values?: any, callback?: any): any {
      if (answerTimeout === undefined || typeof config?.submit === "function") {
        return this.queryNow(config, values, callback)
      }
      const positional: Callback | undefined = typeof values === "function" ? values : callback
      const params = typeof values === "function" ? undefined : values
      // A config with a callback of its own is answered there, as by `pg`.
      if (positional === undefined && typeof config?.callback === "function") {
        // Without the callback, and, for a class instance, with its getters
        // (`text`, `values`), which a spread would leave behind.
        const prototype = Object.getPrototypeOf(config)
        const plain = prototype === Object.prototype || prototype === null
        const { callback: own, ...spread } = config
        const rest = plain
          ? spread
          : Object.create(config, { callback: { value: undefined, writable: true, enumerable: true } })
        this.query(rest, params, own)
        return undefined
      }
      const done = positional
      if (done === undefined) {
        return new Promise((resolve, reject) =>
          this.query(
            config,
            params,
            (error: Error | null, result: unknown) => error === null ? resolve(result) : reject(error)
          )
        )
      }
      // Counted from the call: a statement queued behind one whose answer
      // never comes (a ROLLBACK after an interrupted statement) is bounded too.
      // The held writes it sends ahead each have a statement's time, as they
      // do when they go with COMMIT.
      const bound = Math.min(answerTimeout * (this.deferred.length + 1), maxTimerMillis)
      const timer = setTimeout(() => this.close(bound), bound)
      return this.queryNow(config, params, (error: Error | null, result: unknown) => {
        clearTimeout(timer)
        done(error, result)
      })
    }

    /**
     * Closes the connection whose answer did not come: `pg` fails its
     * statements with this error, and a pool drops it when it comes back.
     */
    private close(after: number) {
      const stream = this.stream()
      if (stream === undefined) return
      const error = Object.assign(
        new Error(`PostgreSQL did not answer within ${after} ms; the connection was closed`),
        { code: "ETIMEDOUT" }
      )
      // Closed with a reset, as `resetAndDestroy()` does (the flag it sets;
      // that method takes no error): the kernel drops what was written and
      // not yet delivered. A graceful close would deliver it when the
      // network heals, and a claim or a COMMIT the caller was told failed
      // would land then. Only a TCP socket can be reset: over TLS the
      // stream is a TLS socket and the TCP socket it runs on is reset (the
      // flag on the TLS socket threw "this._handle.reset is not a
      // function", left the connection open, and its next bytes crashed the
      // process); a Unix socket, which no partition holds bytes for, is
      // closed as it is.
      if (isResettable(stream)) {
        stream.resetAndClosing = true
      } else if (stream._parent != null && isResettable(stream._parent)) {
        stream._parent.resetAndClosing = true
        stream._parent.destroy()
      }
      stream.destroy(error)
    }

    private queryNow(config: any, values?: any, callback?: any): any {
      // Any statement on an idle connection (a BEGIN too: in a transaction
      // nothing is ever idle) first deallocates one left behind.
      if (this.abandoned.length > 0 && this.idle() && this.state().readyForQuery === true) this.deallocateOne()
      if (this.deferred.length > 0) this.sendDeferredAhead()
      const begins = this.cancelDeferredBegin()
      const named = this.named(config, values)
      const withBegin = begins && named !== undefined && isBare(named) &&
        named.name! in this.state().connection.parsedStatements
      if (begins && !withBegin) this.beginNow()
      if (named === undefined) return super.query(config, values, callback)
      const done: Callback | undefined = typeof values === "function" ? values : callback
      if (done === undefined) {
        return new Promise((resolve, reject) =>
          this.send(named, (error, result) => error === null ? resolve(result) : reject(error), withBegin)
        )
      }
      this.send(named, done, withBegin)
      return undefined
    }

    /** `BEGIN` on its own, queued before what follows; failed, it closes the connection. */
    private beginNow() {
      super.query("BEGIN", (error: Error | null) => {
        if (error !== null) this.closeAfterFailedBegin(error)
      })
    }

    private closeAfterFailedBegin(error: Error) {
      this.stream()?.destroy(error)
    }

    private stream() {
      return (this as unknown as { readonly connection?: { readonly stream?: Stream } }).connection?.stream
    }

    /**
     * The query named, when it has parameters and a name to get: a text, or
     * a plain config object (a class instance may keep its text in a getter
     * a copy would lose; one with a callback of its own is left to `pg`).
     * Values given beside a config win, as in `pg`.
     */
    private named(config: unknown, values: unknown): QueryConfig | undefined {
      // Pipeline mode sends statements ahead of the answers this class's
      // retries and deallocations wait for: left to `pg`, unnamed.
      if (this.state().pipeline) return undefined
      let text: string
      let params: unknown
      let rest: QueryConfig | undefined
      if (typeof config === "string") {
        text = config
        params = values
      } else {
        if (typeof config !== "object" || config === null) return undefined
        const prototype = Object.getPrototypeOf(config)
        if (prototype !== Object.prototype && prototype !== null) return undefined
        rest = config as QueryConfig
        if (
          typeof rest.text !== "string" || rest.name !== undefined || rest.submit !== undefined ||
          rest.callback !== undefined
        ) return undefined
        text = rest.text
        params = Array.isArray(values) ? values : rest.values
      }
      if (!Array.isArray(params) || params.length === 0) return undefined
      const name = this.renamed?.get(text) ?? nameOf(text)
      if (name === undefined) return undefined
      // Prepared here first, so that a value `pg` cannot serialize fails
      // before a name is involved (`pg` would close the named statement on
      // the server and still list it as parsed).
      let prepared: Array<unknown>
      try {
        prepared = params.map((value) => prepareValue(value))
      } catch {
        return undefined
      }
      return rest === undefined ? { name, text, values: prepared } : { ...rest, name, text, values: prepared }
    }

    private state(): ClientState {
      return this as unknown as ClientState
    }

    /**
     * Outside a transaction, with nothing running or queued: the transaction
     * status is the last statement's, and no statement sent now can land in a
     * transaction opened before it (`pg`'s pipeline mode never counts).
     */
    private idle(): boolean {
      const state = this.state()
      return state._txStatus === "I" && (state._activeQuery ?? null) === null &&
        (state._queryQueue?.length ?? 0) === 0 && !state.pipeline
    }

    /**
     * Deallocates one statement a rename left on the server; the caller made
     * sure the connection is idle. One at a time, so that it runs at once and
     * the caller's statement is the only one queued behind it.
     */
    private deallocateOne() {
      const name = this.abandoned.shift()!
      this.forget(name)
      super.query(`DEALLOCATE ${Pg.escapeIdentifier(name)}`, () => {})
    }

    /** Drops `name` from `pg`'s own list of the connection's statements. */
    private forget(name: string) {
      const { parsedStatements, submittedNamedStatements } = this.state().connection
      delete parsedStatements[name]
      delete submittedNamedStatements[name]
    }

    private send(config: QueryConfig, done: Callback, withBegin = false) {
      let begun = !withBegin
      const callback = (error: Error | null, result: unknown) => {
        if (error !== null && !begun) this.closeAfterFailedBegin(error)
        // Without a SQLSTATE (a read timeout, a row no type parser takes)
        // the statement itself is fine.
        if (error === null || sqlState(error) === undefined) return done(error, result)
        const renamed = this.renameIfStale(config, error)
        // A stale statement: `pg` reports an error as it arrives, before the
        // server says what state it left, so the status is still the one
        // this statement started in. Idle, with nothing queued behind it,
        // means it ran on its own and its failure changed nothing: it runs
        // again, first. After a BEGIN of its own, it failed in a transaction
        // (which the status, still the one before BEGIN, does not tell).
        if (renamed !== undefined && isStale(error) && !withBegin && this.idle()) {
          super.query({ ...config, name: renamed } as Pg.QueryConfig, done as any)
          return
        }
        done(error, result)
      }
      if (withBegin) super.query(afterBegin(namedQuery(config, callback), () => begun = true))
      else if (isBare(config)) super.query(namedQuery(config, callback))
      else super.query(config as Pg.QueryConfig, callback)
    }

    /**
     * After `error` of `config`, a fresh name (which a fresh Parse gets),
     * when the old one cannot serve: the statement went stale, or its
     * parameter types may be outdated. Undefined otherwise.
     */
    private renameIfStale(config: QueryConfig, error: Error): string | undefined {
      if (isStale(error)) return this.rename(config, sqlState(error) !== "26000")
      if (mayBeOutdatedTypes(error)) return this.rename(config, true)
      return undefined
    }

    /**
     * A fresh name for `config`'s text on this connection. The old one is
     * deallocated later if the server still has it: `exists` (not gone, as
     * after 26000) and its Parse completed (one that failed at Parse never
     * existed).
     */
    private rename(config: QueryConfig, exists: boolean): string {
      const old = config.name
      const current = this.renamed?.get(config.text)
      // Renamed already, by another statement of this text that failed.
      if (old !== undefined && current !== undefined && current !== old) return current
      if (old !== undefined) {
        if (exists && old in this.state().connection.parsedStatements) this.abandoned.push(old)
        else this.forget(old)
      }
      const name = `${nameOf(config.text) ?? "ecb"}_r${++this.renames}`
      ;(this.renamed ??= new Map()).set(config.text, name)
      return name
    }
  }
}
