/**
 * Cancels for a `pg` pool: the statement of an interrupted fiber is
 * cancelled with PostgreSQL's CancelRequest, and only while that fiber's
 * statement still runs.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as Net from "node:net"
import * as Tls from "node:tls"
import type Pg from "pg"

// `@effect/sql-pg` cancels the statement of an interrupted fiber (a command
// past its timeout) with `SELECT pg_cancel_backend(pid)` on the pool the
// statement runs on. With every connection of that pool busy, the cancelled
// statements' own among them, the cancel waited for one: a command's timeout
// stretched to its statement's end, or the statement timeout, and the service
// stalled meanwhile. Here that query is sent as PostgreSQL's own
// CancelRequest instead, as libpq's PQcancel does: a connection of its own
// that names the backend and its secret key and closes. It needs no free
// connection of the pool, no login, and no connection slot of the server, so
// it gets through a full pool and a server at max_connections alike. Over
// TLS when its connection is.
const cancelStatement = /^SELECT pg_cancel_backend\((\d+)\)$/

/** What a `pg` client of the pool knows of its backend and how it connected. */
interface Backend {
  readonly processID?: number
  readonly secretKey?: number
  readonly host?: string
  readonly port?: number
  /** `pg`'s TLS settings of the connection: none (false), its defaults (true), or options for `tls.connect`. */
  readonly ssl?: boolean | Tls.ConnectionOptions
  /** `postgres` (an SSLRequest first) or `direct` (TLS at once). */
  readonly sslNegotiation?: string
}

type Callback = (error: Error | null, result?: unknown) => void

/** A `pg` client's statement on the wire, and those queued behind it (internals of `pg` 8). */
interface Statements {
  readonly _activeQuery?: unknown
  readonly _queryQueue?: ReadonlyArray<unknown>
}

// A cancel names a backend, not a statement, and PostgreSQL ends whatever
// that backend runs when the request arrives. `@effect/sql-pg` cancels when
// the fiber is interrupted while it waits for the statement's answer, and
// outside a transaction it hands the connection back to the pool as soon as
// the answer comes, cancel or not. Two races ended another fiber's statement
// with 57014 ("canceling statement due to user request"):
//
// - The interruption lands between the answer and the fiber's resumption (a
//   scope closing at that moment): the statement is over, and the cancel
//   finds the connection idle, or running the statement of whoever took it
//   next. So a cancel goes out only while the connection runs a statement,
//   and not when that statement is the only one and the fiber that sent it
//   is not being interrupted, or sent it where it cannot be interrupted (a
//   finalizer of an interrupted fiber: its statement waits uninterruptibly,
//   so no cancel is ever its own). A statement sent where the pool hands a
//   connection out (as `@effect/sql-pg` sends one outside a transaction) is
//   the fiber's that asked for the connection; one sent on a connection held
//   for a transaction, the fiber's that sent it. Where that is not known,
//   the cancel goes out, as before.
// - The answer comes while the cancel is on its way: the connection went
//   back to the pool, the next statement started on it, and the cancel
//   arrived then. So a connection goes back to the pool only once its cancel
//   has arrived: PostgreSQL closes the cancel's connection after it has
//   signalled the backend, and a backend that takes the signal while it
//   reads the next statement drops it (a cancel with nothing to cancel).
type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

/** The fiber that sent a statement, and whether it could be interrupted while it waited for the answer. */
interface Sender {
  readonly fiber: AnyFiber
  readonly interruptible: boolean
}

/**
 * The current fiber as a sender: an `Effect.async` registers with the flags
 * it waits with (`FiberRuntime`'s `currentRuntimeFlags`, not on the
 * `RuntimeFiber` interface; without it, taken for interruptible, as before).
 */
const currentSender = (): Sender | undefined => {
  const fiber = Option.getOrUndefined(Fiber.getCurrentFiber())
  if (fiber === undefined) return undefined
  const flags = (fiber as unknown as { readonly currentRuntimeFlags?: unknown }).currentRuntimeFlags
  return {
    fiber,
    interruptible: typeof flags !== "number" || RuntimeFlags.interruptible(flags as RuntimeFlags.RuntimeFlags)
  }
}

const senders = new WeakMap<object, Sender>()
let lendingTo: Sender | undefined

/** Connections with cancels on their way, how many, and what waits for them to arrive. */
const cancelling = new WeakMap<object, { count: number; readonly waiting: Array<() => void> }>()

// A cancel given up (no answer within its 5 seconds) or failed may still
// have gone out, and arrive later: its connection cannot serve another
// statement safely, so it is dropped when it is released.
const unsure = new WeakSet<object>()
const unsureCancel = () => new Error("a cancel request of this connection may still arrive: dropped")

type Release = (error?: Error | boolean) => void

const afterCancel = (client: Pg.PoolClient, release: Release): Release => {
  let called = false
  // One whose cancel may still arrive goes back with an error, which drops it.
  const released = (error?: Error | boolean) => release(error || (unsure.has(client) ? unsureCancel() : error))
  return (error) => {
    // A second release is `pg-pool`'s to refuse, to its caller.
    if (called) return release(error)
    const cancels = cancelling.get(client)
    if (cancels === undefined) return released(error)
    called = true
    // Neither lent nor idle meanwhile, the connection has no one listening
    // for its errors (one unheard crashes the process): its error is kept,
    // and given with its release, which then drops it.
    let failed: Error | undefined
    const onError = (cause: Error) => {
      failed ??= cause
    }
    client.on("error", onError)
    cancels.waiting.push(() => {
      client.off("error", onError)
      released(failed ?? error)
    })
  }
}

const track = (pool: Pg.Pool) => {
  pool.on("connect", (client) => {
    const query = client.query.bind(client) as (...args: Array<unknown>) => unknown
    client.query = ((...args: Array<unknown>) => {
      const sender = lendingTo ?? currentSender()
      if (sender === undefined) senders.delete(client)
      else senders.set(client, sender)
      return query(...args)
    }) as typeof client.query
  })
  const connect = pool.connect.bind(pool) as (callback?: unknown) => Promise<Pg.PoolClient> | undefined
  pool.connect = ((callback?: (error: Error | undefined, client?: Pg.PoolClient, release?: Release) => void) => {
    if (typeof callback !== "function") {
      return connect()!.then((client) => {
        client.release = afterCancel(client, client.release)
        return client
      })
    }
    const fiber = currentSender()
    return connect((error: Error | undefined, client?: Pg.PoolClient, release?: Release) => {
      if (client === undefined || release === undefined) return callback(error, client, release)
      const held = afterCancel(client, release)
      client.release = held
      const outer = lendingTo
      lendingTo = fiber
      try {
        callback(error, client, held)
      } finally {
        lendingTo = outer
      }
    })
  }) as typeof pool.connect
}

/** Whether a cancel of `backend`'s statement can only end a statement no interrupted fiber is waiting for. */
const onlyOthers = (backend: Backend & Statements) => {
  const queue = backend._queryQueue
  if (!Array.isArray(queue) || backend._activeQuery === undefined) return false
  if (backend._activeQuery === null) return queue.length === 0
  const sender = queue.length === 0 ? senders.get(backend) : undefined
  return sender !== undefined &&
    (!sender.interruptible || Cause.isEmpty(sender.fiber.getFiberRef(FiberRef.interruptedCause)))
}

/** @internal */
export const routeCancels = (pool: Pg.Pool) => {
  track(pool)
  const query = pool.query.bind(pool) as (...args: Array<unknown>) => unknown
  pool.query = ((...args: Array<unknown>) => {
    const match = typeof args[0] === "string" ? cancelStatement.exec(args[0]) : null
    const done = args.find((arg) => typeof arg === "function") as Callback | undefined
    if (match === null || done === undefined) return query(...args)
    // `pg-pool` keeps its clients here; a version that does not is asked the query.
    const clients = (pool as unknown as { readonly _clients?: ReadonlyArray<Backend & Statements> })._clients ?? []
    const backend = clients.find((client) => client.processID === Number(match[1]))
    if (backend === undefined) return query(...args)
    if (onlyOthers(backend)) {
      done(null, { rows: [] })
      return undefined
    }
    const { host, port, processID, secretKey, ssl = false, sslNegotiation = "postgres" } = backend
    if (processID === undefined || secretKey === undefined || host === undefined || port === undefined) {
      return query(...args)
    }
    const cancels = cancelling.get(backend) ?? { count: 0, waiting: [] }
    cancels.count++
    cancelling.set(backend, cancels)
    sendCancelRequest({ host, port, processID, secretKey, ssl, sslNegotiation }, (error, result) => {
      if (error !== null) unsure.add(backend)
      if (--cancels.count === 0) {
        cancelling.delete(backend)
        for (const release of cancels.waiting.splice(0)) release()
      }
      done(error, result)
    })
    return undefined
  }) as typeof pool.query
}

const cancelRequestCode = 80877102
const sslRequestCode = 80877103

// The cancel request goes the way its connection went: over TLS when the
// connection is (as libpq 17's PQcancelCreate does), with the same settings,
// so the backend's secret key does not cross the network in the clear (it
// lets whoever reads it cancel that backend's statements), and a server or a
// proxy that takes TLS only gets it. Over a Unix socket, never: PostgreSQL
// has no TLS there, and `pg` connects without.
const sendCancelRequest = (backend: Required<Backend>, done: Callback) => {
  const local = backend.host.startsWith("/")
  const raw = local ? Net.connect(`${backend.host}/.s.PGSQL.${backend.port}`) : Net.connect(backend.port, backend.host)
  const message = Buffer.alloc(16)
  message.writeInt32BE(16, 0)
  message.writeInt32BE(cancelRequestCode, 4)
  message.writeInt32BE(backend.processID, 8)
  message.writeInt32BE(backend.secretKey, 12)
  let secure: Tls.TLSSocket | undefined
  let sent = false
  let finished = false
  const finish = (error: Error | null) => {
    if (finished) return
    finished = true
    secure?.destroy()
    raw.destroy()
    done(error, { rows: [] })
  }
  raw.setTimeout(5_000, () => finish(new Error("PostgreSQL did not take the cancel request in time")))
  raw.once("error", finish)
  // The server closes the connection once it has the request.
  raw.once(
    "close",
    () => finish(sent ? null : new Error("PostgreSQL closed the connection before it had the cancel request"))
  )
  if (local || backend.ssl === false) {
    raw.once("connect", () => {
      sent = true
      raw.end(message)
    })
    return
  }
  const ssl = backend.ssl
  const startTls = () => {
    const options: Tls.ConnectionOptions = {
      socket: raw,
      // As `pg` does: the identity is checked against the host; SNI only for a name, not an address.
      host: backend.host,
      ...(ssl === true ? {} : ssl),
      // `pg` makes the private key non-enumerable: a spread does not copy it.
      ...(ssl !== true && "key" in ssl ? { key: ssl.key } : {}),
      ...(Net.isIP(backend.host) === 0 ? { servername: backend.host } : {}),
      ...(backend.sslNegotiation === "direct" ? { ALPNProtocols: ["postgresql"] } : {})
    }
    secure = Tls.connect(options)
    secure.once("error", finish)
    secure.once("secureConnect", () => {
      sent = true
      secure!.end(message)
    })
  }
  if (backend.sslNegotiation === "direct") {
    raw.once("connect", startTls)
    return
  }
  const request = Buffer.alloc(8)
  request.writeInt32BE(8, 0)
  request.writeInt32BE(sslRequestCode, 4)
  raw.once("connect", () => raw.write(request))
  raw.once("data", (reply) => {
    // "S": go on in TLS. Anything else ("N": no TLS here) and the connection
    // it cancels could not have been made either: not sent in the clear.
    if (reply.length === 1 && reply[0] === 0x53) startTls()
    else finish(new Error("PostgreSQL did not take TLS for the cancel request"))
  })
}
