/**
 * The runnable service: configuration, database, bus, API and HTTP server
 * as one layer, with graceful shutdown.
 *
 * @since 0.1.0
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerError from "@effect/platform/HttpServerError"
import { SqlError } from "@effect/sql/SqlError"
import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schema from "effect/Schema"
import { createServer, type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http"
import type { Socket } from "node:net"
import type { Duplex } from "node:stream"
import * as OrderBus from "../orders/OrderBus.js"
import * as Persistence from "../orders/Persistence.js"
import * as SqlFailure from "../sql/SqlFailure.js"
import * as Auth from "./Auth.js"
import * as Config from "./Config.js"
import * as Database from "./Database.js"
import * as Docs from "./Docs.js"
import * as Http from "./Http.js"
import { MalformedRequest, MethodNotAllowed, ServiceUnavailable } from "./HttpErrors.js"
import * as IdempotencyStoreLayer from "./IdempotencyStoreLayer.js"
import * as Metrics from "./Metrics.js"
import * as Observability from "./Observability.js"
import * as Problem from "./Problem.js"

/**
 * The bus with the full middleware stack, its timeout and idempotency
 * retention from configuration.
 *
 * @since 0.1.0
 * @category layers
 */
export const BusLive = Layer.effect(
  Http.Bus,
  Effect.map(Config.server, (config) =>
    OrderBus.make({
      timeout: config.commandTimeout,
      idempotency: { retention: config.idempotencyTtl, lease: config.idempotencyLease }
    }))
)

// Runs first on every request, before the platform's handler reads it.
const dropInvalidTraceparent = (request: IncomingMessage): void => Observability.dropInvalidTraceparent(request.headers)

// `@effect/platform-node` writes a response with `end(body, callback)` and
// waits for the callback, uninterruptibly. Node calls it on 'finish' only,
// which a response whose connection closed first never emits: each client
// that hung up before its answer was out left a fiber, its request and its
// response in memory for good. Here the callback is also called on 'close'.
const settleEndOnClose = (_request: IncomingMessage, response: ServerResponse): void => {
  const end = response.end
  response.end = function(this: ServerResponse, ...args: Array<unknown>) {
    const callback = args[args.length - 1]
    if (typeof callback === "function") {
      let settled = false
      const settle = () => {
        if (settled) return
        settled = true
        callback()
      }
      args[args.length - 1] = settle
      if (this.destroyed) process.nextTick(settle)
      else this.once("close", settle)
    }
    return (end as (...args: Array<unknown>) => ServerResponse).apply(this, args)
  } as ServerResponse["end"]
}

/**
 * A request answered before the application (by Node's parser, or while
 * the service starts or stops), for its log line and its count.
 *
 * @since 0.1.0
 * @category models
 */
export interface Answered {
  /** `UNKNOWN` for what Node's parser refused. */
  readonly method: string
  readonly path: string | undefined
  readonly status: number
  readonly correlationId: string
}

/**
 * Reports an answer given outside the application as the edge reports one:
 * the `http.request` log line and `http_server_requests_total`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const reportAnswered = Effect.map(Effect.runtime<never>(), (runtime) => {
  const log = Runtime.runFork(runtime)
  return ({ correlationId, method, path, status }: Answered): void => {
    Metrics.recordRequest(method, Observability.unmatchedRoute, status, 0)
    log(
      Effect.logInfo("http.request").pipe(
        Effect.annotateLogs({ method, path: path?.split("?")[0] ?? "", status, durationMs: 0, correlationId })
      )
    )
  }
})

const ignoreAnswered = (_: Answered): void => {}

/**
 * A Node HTTP server that, on shutdown, stops accepting at once, lets
 * in-flight requests finish, and closes connections still open after the
 * shutdown timeout.
 *
 * @since 0.1.0
 * @category layers
 */
export const HttpServerLive = Layer.unwrapEffect(
  Effect.map(Effect.zip(Config.server, reportAnswered), ([config, report]) => {
    // Timeouts are checked this often: Node's default, 30 s, let a request
    // run up to 30 s past REQUEST_TIMEOUT.
    // A request without `Host` is the edge's to refuse, as a problem: Node's
    // own answer is a bare 400 that nothing logs or counts.
    const server = createServer({ connectionsCheckingInterval: 1_000, requireHostHeader: false })
    server.prependListener("request", dropInvalidTraceparent)
    server.prependListener("request", settleEndOnClose)
    answerWhileNotServing(server, report)
    answerClientErrors(server, report)
    // `Expect: 100-continue` is answered by the edge when it reads the body,
    // so that a body it refuses unread (413 over BODY_LIMIT, 415) is not sent.
    server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => {
      server.emit("request", request, response)
    })
    ignoreUpgrades(server)
    // Keep-alive connections must not outlive a load balancer's idle timeout.
    server.keepAliveTimeout = 65_000
    // A request (headers and body) that takes longer gets 408. Its headers
    // get as long at most: a longer headers timeout stands in for the
    // request's (Node checks the longer), as 66 s did for 30 s here.
    server.requestTimeout = Duration.toMillis(config.requestTimeout)
    server.headersTimeout = Math.min(Duration.toMillis(config.requestTimeout), 20_000)
    // Counted by the edge (Http.maxHeaders), which refuses too many with 431:
    // Node drops the lines past its count and serves the rest.
    server.maxHeadersCount = 0
    // Node's `closeIdleConnections` leaves a connection that has sent no
    // request yet (a pool's or a browser's preconnect): kept here to close.
    const sockets = new Set<Socket>()
    server.on("connection", (socket: Socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
    })
    return Layer.merge(
      Layer.scoped(
        HttpServer.HttpServer,
        Effect.tap(
          NodeHttpServer.make(() => server, { port: config.port, host: config.host }),
          // Runs before the server's own close, which waits for every
          // connection to end, and after the service drained its requests
          // (up to SHUTDOWN_TIMEOUT): idle connections and those that never
          // sent a request go now, any still busy after a short grace.
          () =>
            Effect.addFinalizer(() =>
              Effect.sync(() => {
                setTimeout(() => server.closeAllConnections(), Duration.toMillis(shutdownGrace)).unref()
                server.closeIdleConnections()
                // After the sockets have been read again: a request already
                // on its way is read and answered (503 `stopping`), not reset.
                setTimeout(() => {
                  for (const socket of sockets) if (socket.bytesRead === 0) socket.destroy()
                }, 100)
              })
            )
        )
      ),
      NodeHttpServer.layerContext
    )
  })
)

/**
 * Keeps the server without an `upgrade` listener, the one the platform adds
 * for WebSockets (no route here upgrades). With it, Node hands every request
 * that carries `Connection: Upgrade` (curl --http2 sends `Upgrade: h2c` on
 * plain HTTP) to that listener with its body unread, past the `request`
 * hooks: a POST arrived empty (400), and B3 headers parented its span.
 * Without one, Node serves such a request as any other.
 *
 * @since 0.1.0
 * @category constructors
 */
export const ignoreUpgrades = (server: Server): void => {
  server.on("newListener", (event: string | symbol, listener: (...args: Array<any>) => void) => {
    // Added after this call returns: removed once it has been.
    if (event === "upgrade") queueMicrotask(() => server.off("upgrade", listener))
  })
}

// Node's own answers to what its parser refuses, kept: the status (400
// otherwise), the connection closed after it. Not Node's 413 for chunk
// extensions over its limit: that is a malformed request, not a body over
// BODY_LIMIT (whose 413 says the limit).
const clientErrorStatus: Readonly<Record<string, number>> = {
  HPE_HEADER_OVERFLOW: 431,
  ERR_HTTP_REQUEST_TIMEOUT: 408
}

/**
 * Answers what Node's HTTP parser refuses (a broken request line, a bad
 * `Content-Length`, headers over the limit) with a problem, as every other
 * error is, rather than Node's empty response.
 *
 * @since 0.1.0
 * @category constructors
 */
export const answerClientErrors = (server: Server, report: (answered: Answered) => void = ignoreAnswered): void => {
  const encode = Schema.encodeSync(Problem.schema(MalformedRequest))
  const encodeNotAllowed = Schema.encodeSync(Problem.schema(MethodNotAllowed))
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => {
    // A connection reset, or one already answered: nothing to write to.
    if (error.code === "ECONNRESET" || !socket.writable) {
      socket.destroy()
      return
    }
    // The parser reports its error again on every chunk that follows: the
    // first report is answered, once. Node's request timeout reported
    // meanwhile is of the refused bytes, whose message never completes, not
    // of the answers before the refusal: those run on (bounded by their
    // commands' deadlines and shutdown), and the refusal follows them.
    if (refusing.has(socket)) return
    refusing.add(socket)
    const reason = error.code ?? "HPE_UNKNOWN"
    const status = clientErrorStatus[reason] ?? 400
    // Whose bytes were refused: the request the parser is reading, when its
    // head has arrived and its body has not (cut off, too slow, a broken
    // chunk); the answer carries its id, and the edge logs and counts it with
    // this status rather than its own (client gone, 499). Otherwise they are
    // a request of their own, with no head yet.
    const parsing = (socket as { parser?: { incoming?: IncomingMessage | null } | null }).parser?.incoming
    const owner = parsing !== undefined && parsing !== null && !parsing.complete ? parsing : undefined
    const edge = owner === undefined ? undefined : Http.edgeStateOf(owner)
    const correlationId = edge?.correlationId ?? correlationIdOf(undefined)
    const answer = rawProblem(status, { ...encode(new MalformedRequest({ reason })), status }, correlationId)
    // Answers go out in the order of their requests (RFC 9112, 9.3.2): the
    // refusal waits for the answers of the requests before it, pipelined on
    // the same connection, which run on, rather than take the place of the
    // first one (whose client would read its order refused while it commits).
    const answerInTurn = (): void => {
      const pending = (socket as { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined
      if (pending !== undefined && pending.req !== owner) {
        // After Node's own `finish` listener, which hands the socket to the
        // next answer in line. One closed unfinished has lost its socket.
        pending.once("finish", answerInTurn)
        return
      }
      // An answer the owner already began cannot be followed by another; a
      // socket closed after the answers before (`Connection: close`) takes none.
      if (pending?.headersSent === true || !socket.writable) {
        socket.destroy()
        return
      }
      socket.end(answer)
      if (edge !== undefined) edge.answered = status
      else report({ method: "UNKNOWN", path: undefined, status, correlationId })
    }
    answerInTurn()
  })
  // An `Expect` other than `100-continue`: Node's own answer is a bare 417.
  server.on("checkExpectation", (request: IncomingMessage, response: ServerResponse) => {
    const status = 417
    const document = { ...encode(new MalformedRequest({ reason: "UNSUPPORTED_EXPECTATION" })), status }
    const body = JSON.stringify(document)
    const correlationId = correlationIdOf(request)
    response.writeHead(status, {
      "content-type": Problem.contentType,
      "content-length": Buffer.byteLength(body),
      "x-correlation-id": correlationId,
      connection: "close"
    })
    response.end(body)
    report({ method: request.method ?? "UNKNOWN", path: request.url, status, correlationId })
  })
  // CONNECT (a proxy's tunnel) is no method of this API; Node would close
  // the connection unanswered.
  server.on("connect", (request: IncomingMessage, socket: Duplex) => {
    const document = encodeNotAllowed(
      new MethodNotAllowed({ method: "CONNECT", path: request.url ?? "", allowed: [] })
    )
    const correlationId = correlationIdOf(request)
    socket.end(rawProblem(405, document, correlationId, { allow: "" }))
    report({ method: "CONNECT", path: request.url, status: 405, correlationId })
  })
}

const correlationIdOf = (request: IncomingMessage | undefined): string => {
  const header = request?.headers["x-correlation-id"]
  return Http.correlationIdOf(typeof header === "string" ? header : undefined)
}

// Sockets whose parser refused bytes, answered once (in their turn).
const refusing = new WeakSet<Duplex>()

// A whole problem response, written to a socket the server has not parsed a
// request on (or will not answer through a response), then closed.
const rawProblem = (
  status: number,
  document: unknown,
  correlationId: string,
  headers: Readonly<Record<string, string>> = {}
): string => {
  const body = JSON.stringify(document)
  const extra = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join("")
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: ${Problem.contentType}\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nx-correlation-id: ${correlationId}\r\n${extra}` +
    `connection: close\r\n\r\n${body}`
}

/**
 * Answers the requests that reach `server` while no application is attached
 * to it: the server listens before the API is built (the database opened and
 * migrated, the bus made), and the API detaches before the server closes.
 * Node leaves a request nobody listens for unanswered, so a client (or a
 * load balancer's probe) would wait on it for good. Here it gets 503
 * `ServiceUnavailable` with `Retry-After` and `Connection: close`, except
 * `GET /health/live`, which is 200 while the process runs. The fallback
 * steps aside when the application attaches its request listener (Node
 * announces it before adding it) and comes back when it detaches.
 *
 * @since 0.1.0
 * @category constructors
 */
export const answerWhileNotServing = (
  server: Server,
  report: (answered: Answered) => void = ignoreAnswered
): void => {
  const encode = Schema.encodeSync(Problem.schema(ServiceUnavailable))
  let phase: ServiceUnavailable["phase"] = "starting"
  const fallback = (request: IncomingMessage, response: ServerResponse) => {
    // The body is not read: the connection closes after this response.
    request.resume()
    const correlationId = correlationIdOf(request)
    response.setHeader("x-correlation-id", correlationId)
    const answered = (status: number) =>
      report({ method: request.method ?? "UNKNOWN", path: request.url, status, correlationId })
    if (request.method === "GET" && request.url?.split("?")[0] === "/health/live") {
      response.writeHead(200, { "content-type": "application/json", connection: "close" })
      response.end(JSON.stringify({ status: "ok" }))
      answered(200)
      return
    }
    const body = JSON.stringify(encode(new ServiceUnavailable({ phase })))
    response.writeHead(503, {
      "content-type": Problem.contentType,
      "content-length": Buffer.byteLength(body),
      "retry-after": "1",
      connection: "close"
    })
    response.end(body)
    answered(503)
  }
  // Once the service stops serving, the answers still to come say
  // `Connection: close` and end their connections. Said `keep-alive`, a
  // client (a load balancer above all) sent its next request on the
  // connection, which shutdown then closed unanswered: a reset, for a request
  // that never ran. One whose head is out already keeps what it said; the
  // shutdown deadline closes its connection.
  const answering = new Set<ServerResponse>()
  const track = (_request: IncomingMessage, response: ServerResponse) => {
    if (phase === "stopping") {
      response.shouldKeepAlive = false
      return
    }
    answering.add(response)
    response.once("close", () => answering.delete(response))
  }
  // The application's listener, not this fallback or what runs before every request.
  const isApplication = (listener: unknown) =>
    listener !== fallback && listener !== track && listener !== dropInvalidTraceparent &&
    listener !== settleEndOnClose
  server.on("newListener", (event, listener) => {
    if (event === "request" && isApplication(listener)) server.off("request", fallback)
  })
  server.on("removeListener", (event, listener) => {
    if (
      event === "request" && isApplication(listener) && server.listeners("request").filter(isApplication).length === 0
    ) {
      phase = "stopping"
      for (const response of answering) if (!response.headersSent) response.shouldKeepAlive = false
      answering.clear()
      server.on("request", fallback)
    }
  })
  server.prependListener("request", track)
  server.on("request", fallback)
}

/**
 * How long requests still running at the shutdown timeout get, once
 * interrupted, to roll back and release their idempotency keys.
 *
 * @since 0.1.0
 * @category constants
 */
export const shutdownGrace: Duration.Duration = Duration.seconds(5)

/**
 * The whole service, with tracing as `tracing` sets it up (by default from
 * configuration: OTLP when an endpoint is set, else off). Tracing is built
 * first, so every fiber the service starts (requests, the outbox relay)
 * runs with it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: { readonly tracing?: Layer.Layer<never, unknown> } = {}) =>
  Layer.unwrapEffect(
    Effect.map(Config.server, (config) => {
      const routes = Observability.makeRouteTable([
        ...Http.apiRoutes,
        { method: "GET", path: "/openapi.json" },
        { method: "GET", path: "/docs" }
      ])
      // Released after the API detaches (new requests get 503) and before
      // the stores and the database close: requests in flight finish, up to
      // the shutdown timeout, with their database still there.
      const inFlight = Http.makeInFlight()
      const drain = Layer.scopedDiscard(
        Effect.addFinalizer(() => inFlight.drain(config.shutdownTimeout, shutdownGrace))
      )
      return HttpApiBuilder.serve().pipe(
        Layer.provide(drain),
        HttpServer.withLogAddress,
        // Every parameter Node lets through (its request line and headers are
        // at most 16 KB) reaches its schema, which answers a long one with a
        // 400, not the router with a 404. Paths match as the document writes
        // them: `/API/v1/orders` or `//api/v1/orders` is no route of this API.
        Layer.provide(HttpRouter.setRouterConfig({
          maxParamLength: 16 * 1024,
          caseSensitive: true,
          ignoreDuplicateSlashes: false
        })),
        Observability.withSpanNames(routes),
        Layer.provide(HttpApiBuilder.middleware(Http.edge({ bodyLimit: config.bodyLimit, routes, inFlight }))),
        Layer.provide(Docs.layer({ path: "/docs" })),
        Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
        Layer.provide(Http.ApiLive),
        Layer.provide(Auth.layer),
        Layer.provide(Auth.layerVerifier),
        Layer.provide(BusLive),
        Layer.merge(Metrics.layerListener),
        Layer.provide(Metrics.layer),
        Layer.provide(Persistence.layerSql({}, IdempotencyStoreLayer.layer)),
        Layer.provide(Database.layerMigrated),
        Layer.provideMerge(HttpServerLive),
        Layer.provide(options.tracing ?? Observability.layerTracingFromConfig)
      )
    })
  )

/**
 * The whole service, tracing from configuration.
 *
 * @since 0.1.0
 * @category layers
 */
export const ServerLive = layer()

/**
 * Reads and checks every setting, and the JWT key, before anything starts:
 * a bad configuration fails in milliseconds, not after the database opened.
 *
 * @since 0.1.0
 * @category config
 */
export const checkConfig = Effect.all([
  Config.server,
  Config.database,
  Config.idempotencyStore,
  Config.jwt,
  Config.jwtAlgorithm,
  Config.observability
], { mode: "validate" }).pipe(
  // Every group read, so one line names every bad setting, not the first group's.
  Effect.mapError((errors) =>
    Arr.getSomes(errors).reduce((all: ConfigError.ConfigError, error) => ConfigError.And(all, error))
  ),
  // The metrics listener and the API cannot share a port (0 picks a free one for each).
  Effect.filterOrFail(
    ([server, , , , , observability]) =>
      Option.isNone(observability.metricsPort) || observability.metricsPort.value === 0 ||
      observability.metricsPort.value !== server.port,
    () => ConfigError.InvalidData(["METRICS_PORT"], "must differ from PORT")
  ),
  // Its warnings are logged once, when the verifier is built.
  Effect.zipRight(Logger.withMinimumLogLevel(Auth.keyFromConfig, LogLevel.None)),
  Effect.asVoid
)

/**
 * JSON lines, or a readable format when run in a terminal, at `LOG_LEVEL`.
 *
 * @since 0.1.0
 * @category layers
 */
export const LoggerLive = Layer.unwrapEffect(
  Effect.map(Config.server, (config) =>
    Layer.merge(
      process.stdout.isTTY ? Logger.pretty : Logger.json,
      Logger.minimumLogLevel(config.logLevel)
    ))
).pipe(
  // A bad setting still gets its message out, in the same format.
  Layer.orElse(() => process.stdout.isTTY ? Logger.pretty : Logger.json)
)

/**
 * Logs why the service stopped on a failure. A database it cannot reach or
 * open is one line naming the database and the driver's reason, without a
 * stack trace (it is not a bug); anything else is logged with its cause.
 *
 * @since 0.1.0
 * @category utils
 */
export const reportFailure = (cause: Cause.Cause<unknown>): Effect.Effect<void> =>
  // Whatever LOG_LEVEL says (`none` too): a process that stops says why.
  Logger.withMinimumLogLevel(failureLine(cause), LogLevel.Error)

const failureLine = (cause: Cause.Cause<unknown>): Effect.Effect<void> => {
  if (Cause.isInterruptedOnly(cause)) return Effect.void
  const error = Option.getOrUndefined(Option.orElse(Cause.failureOption(cause), () => Cause.dieOption(cause)))
  // A setting the operator must change, or a port already taken: the reason
  // is the whole story, a stack trace would only bury it.
  if (ConfigError.isConfigError(error)) {
    return Effect.logError("config.invalid").pipe(Effect.annotateLogs({ reason: Config.describeError(error) }))
  }
  if (error instanceof HttpServerError.ServeError) {
    return Effect.logError("server.listen_failed").pipe(Effect.annotateLogs({ reason: reasonOf(error.cause) }))
  }
  if (!(error instanceof SqlError)) return Effect.logError("service.failed", cause)
  return Effect.flatMap(
    Effect.option(Config.database),
    (config) =>
      Effect.logError(SqlFailure.isUnavailable(error) ? "database.unavailable" : "database.failed").pipe(
        Effect.annotateLogs({
          database: Option.match(Option.flatMap(config, (database) => database.url), {
            onNone: () => Option.match(config, { onNone: () => "(unknown)", onSome: (database) => database.dataDir }),
            onSome: (url) => Database.describeUrl(Redacted.value(url))
          }),
          reason: reasonOf(error)
        })
      )
  )
}

// The messages down an error's chain of causes: "Failed to acquire a
// connection: connect ECONNREFUSED 127.0.0.1:5432".
const reasonOf = (error: unknown): string => {
  const messages: Array<string> = []
  for (const link of SqlFailure.causeChain(error)) {
    const message = Predicate.hasProperty(link, "message") ? link.message : undefined
    if (typeof message === "string" && message !== "" && !messages.includes(message)) messages.push(message)
  }
  return messages.join(": ")
}
