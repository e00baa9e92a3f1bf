/**
 * The HTTP implementation of `Api`: each endpoint decodes, authenticates,
 * dispatches through the bus (or reads a store) and maps the result. The
 * edge middleware refuses bad bodies before the API runs, carries the
 * correlation id, and turns defects into problems without leaking details.
 *
 * @since 0.1.0
 */
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpMethod from "@effect/platform/HttpMethod"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import type * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import type * as Http from "node:http"
import * as NodeHttp from "node:http"
import { Command, CommandError, CurrentUser, Idempotency, Middleware, Outbox } from "../index.js"
import { CancelOrder, CreateOrder, RestockProduct } from "../orders/Commands.js"
import { Inventory } from "../orders/Inventory.js"
import type { Order } from "../orders/Order.js"
import { OrderNotFound } from "../orders/Order.js"
import type * as OrderBus from "../orders/OrderBus.js"
import { OrderRepository } from "../orders/OrderRepository.js"
import { SqlFailure } from "../sql/index.js"
import { Api } from "./Api.js"
import { adminRole, CurrentPrincipal } from "./Auth.js"
import {
  InternalError,
  MalformedJson,
  MalformedRequest,
  MethodNotAllowed,
  PayloadTooLarge,
  RepeatedHeader,
  RouteNotFound,
  ServiceUnavailable,
  UnsupportedMediaType
} from "./HttpErrors.js"
import * as Metrics from "./Metrics.js"
import * as Observability from "./Observability.js"
import * as Problem from "./Problem.js"

/**
 * The bus the API dispatches through.
 *
 * @since 0.1.0
 * @category tags
 */
export class Bus extends Context.Tag("server/Bus")<Bus, OrderBus.OrderBus>() {}

/**
 * The request's correlation id: the client's `X-Correlation-ID` when it is a
 * UUID, else a fresh one.
 *
 * @since 0.1.0
 * @category tags
 */
export class CorrelationId extends Context.Reference<CorrelationId>()("server/CorrelationId", {
  defaultValue: (): string => randomUUID()
}) {}

// -----------------------------------------------------------------------------
// dispatch
// -----------------------------------------------------------------------------

const invalid = (error: ParseResult.ParseError) => HttpApiDecodeError.refailParseError(error)

const markReplayed = HttpApp.appendPreResponseHandler((_request, response) =>
  Effect.succeed(HttpServerResponse.setHeader(response, "idempotent-replayed", "true"))
)

/**
 * Builds a command from the request (user from the token, correlation from
 * the request, key from the header), dispatches it as the principal, and
 * marks a replayed outcome with `Idempotent-Replayed: true`.
 */
const dispatch = <C extends Command.AnyClass, A, E, R>(
  definition: C,
  fields: Omit<ConstructorParameters<C>[0], "userId" | "correlationId" | "idempotencyKey">,
  idempotencyKey: string | undefined,
  run: (command: InstanceType<C>) => Effect.Effect<A, E, R>
) =>
  Effect.gen(function*() {
    const principal = yield* CurrentPrincipal
    const correlationId = yield* CorrelationId
    const command = yield* Command.construct(definition, {
      ...fields,
      userId: principal.userId,
      correlationId,
      ...(idempotencyKey === undefined ? {} : { idempotencyKey })
    }).pipe(Effect.catchAll(invalid))
    const { exit, replayed } = yield* Idempotency.observeReplay(CurrentUser.as(run(command), principal), command)
    if (replayed) yield* markReplayed
    return yield* exit
  })

const isAdmin = (principal: CurrentUser.Principal) => principal.roles.includes(adminRole)

const orderView = (order: Order) => ({
  order_id: order.id,
  customer_id: order.customerId,
  user_id: order.userId,
  status: order.status,
  items: order.items.map((line) => ({ product_id: line.productId, quantity: line.quantity })),
  shipping_address: {
    line1: order.shippingAddress.line1,
    ...(order.shippingAddress.line2 === undefined ? {} : { line2: order.shippingAddress.line2 }),
    city: order.shippingAddress.city,
    postal_code: order.shippingAddress.postalCode,
    country: order.shippingAddress.country
  },
  version: order.version,
  created_at: DateTime.formatIso(order.createdAt),
  updated_at: DateTime.formatIso(order.updatedAt),
  ...(order.cancelReason === undefined ? {} : { cancel_reason: order.cancelReason })
})

// -----------------------------------------------------------------------------
// groups
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category layers
 */
export const OrdersLive = HttpApiBuilder.group(Api, "orders", (handlers) =>
  Effect.gen(function*() {
    const bus = yield* Bus
    const orders = yield* OrderRepository
    return handlers
      .handle("createOrder", ({ headers, payload }) =>
        dispatch(CreateOrder, payload, headers["idempotency-key"], bus.dispatch).pipe(
          Effect.map((created) =>
            HttpServerResponse.unsafeJson({ order_id: created.orderId, status: "created" }, {
              status: 201,
              headers: { location: `/api/v1/orders/${created.orderId}` }
            })
          )
        ))
      .handle("cancelOrder", ({ headers, path, payload }) => {
        const ifMatch = headers["if-match"]
        return dispatch(
          CancelOrder,
          {
            orderId: path.orderId,
            reason: payload.reason,
            ...(ifMatch === undefined || ifMatch === "*" ? {} : { expectedVersion: Number(ifMatch.slice(1, -1)) })
          },
          headers["idempotency-key"],
          bus.dispatch
        ).pipe(
          Effect.map((cancelled) =>
            HttpServerResponse.unsafeJson({ order_id: cancelled.orderId, status: "cancelled" }, {
              headers: { etag: `"${cancelled.version}"` }
            })
          )
        )
      })
      .handle("getOrder", ({ headers, path }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          const order = yield* orders.findById(path.orderId)
          // Someone else's order is reported as missing: its existence is not
          // the caller's business.
          if (Option.isNone(order) || (order.value.userId !== principal.userId && !isAdmin(principal))) {
            return yield* new OrderNotFound({ orderId: path.orderId })
          }
          const etag = `"${order.value.version}"`
          if (noneMatch(headers["if-none-match"], etag)) {
            return HttpServerResponse.empty({ status: 304, headers: { etag } })
          }
          return HttpServerResponse.unsafeJson(orderView(order.value), { headers: { etag } })
        }))
  }))

// Whether an `If-None-Match` names `etag` (or is `*`). Reads compare weakly
// (RFC 9110, 13.1.2): `W/"3"` matches `"3"`.
const noneMatch = (header: string | undefined, etag: string): boolean => {
  if (header === undefined) return false
  const tags = header.split(",").map((tag) => tag.trim())
  return tags.includes("*") || tags.some((tag) => (tag.startsWith("W/") ? tag.slice(2) : tag) === etag)
}

/**
 * @since 0.1.0
 * @category layers
 */
export const ProductsLive = HttpApiBuilder.group(Api, "products", (handlers) =>
  Effect.gen(function*() {
    const bus = yield* Bus
    const inventory = yield* Inventory
    return handlers
      .handle("setStock", ({ headers, path, payload }) =>
        dispatch(
          RestockProduct,
          { productId: path.productId, available: payload.available },
          headers["idempotency-key"],
          bus.dispatch
        ).pipe(Effect.map((stock) => ({ product_id: stock.productId, available: stock.available }))))
      .handle("getStock", ({ path }) =>
        Effect.map(inventory.available(path.productId), (available) => ({ product_id: path.productId, available })))
  }))

/**
 * @since 0.1.0
 * @category layers
 */
export const EventsLive = HttpApiBuilder.group(Api, "events", (handlers) =>
  Effect.gen(function*() {
    const outbox = yield* Outbox.Outbox
    return handlers.handle("listEvents", ({ urlParams }) =>
      Effect.gen(function*() {
        const principal = yield* CurrentPrincipal
        if (!isAdmin(principal)) {
          return yield* new CommandError.Forbidden({ reason: "The events feed is for admins" })
        }
        const stored = yield* outbox.read({ after: urlParams.after, limit: urlParams.limit })
        return {
          events: stored.map(({ event, position }) => ({
            position,
            event_id: event.eventId,
            type: event.type,
            aggregate_type: event.aggregateType,
            aggregate_id: event.aggregateId,
            aggregate_version: event.aggregateVersion,
            occurred_at: DateTime.formatIso(event.occurredAt),
            correlation_id: event.correlationId,
            causation_id: event.causationId,
            payload: event.payload
          })),
          next: stored.length === 0 ? urlParams.after : stored[stored.length - 1]!.position
        }
      }))
  }))

/**
 * @since 0.1.0
 * @category layers
 */
export const HealthLive = HttpApiBuilder.group(Api, "health", (handlers) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return handlers
      .handle("live", () => Effect.succeed({ status: "ok" as const }))
      .handle("ready", () =>
        // Disconnected: past its deadline the probe is left to end (its
        // cancel may wait on a server that does not answer) and the answer
        // is 503 at once.
        sql`SELECT 1`.pipe(
          Effect.disconnect,
          Effect.timeout("2 seconds"),
          Effect.as({ status: "ok" as const }),
          Effect.catchAllCause(() =>
            Effect.fail(new CommandError.StoreUnavailable({ store: "database", reason: "not reachable" }))
          )
        ))
  }))

/**
 * `GET /metrics` on the API's port: admins only.
 *
 * @since 0.1.0
 * @category layers
 */
export const MetricsLive = HttpApiBuilder.group(Api, "metrics", (handlers) =>
  Effect.gen(function*() {
    const { scrape } = yield* Metrics.Scraper
    return handlers.handle("metrics", () =>
      Effect.gen(function*() {
        const principal = yield* CurrentPrincipal
        if (!isAdmin(principal)) {
          return yield* new CommandError.Forbidden({ reason: "Metrics are for admins" })
        }
        return yield* scrape
      }))
  }))

// -----------------------------------------------------------------------------
// edge middleware
// -----------------------------------------------------------------------------

/**
 * Every route of the API as its template (`/api/v1/orders/:orderId`), for
 * span names and metric labels.
 *
 * @since 0.1.0
 * @category routes
 */
export const apiRoutes: ReadonlyArray<{ readonly method: string; readonly path: string }> = (() => {
  const routes: Array<{ readonly method: string; readonly path: string }> = []
  HttpApi.reflect(Api, {
    onGroup: () => {},
    onEndpoint: ({ endpoint }) => routes.push({ method: endpoint.method, path: endpoint.path })
  })
  return routes
})()

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

// RFC 6750 §3: a request that carried a bearer token which failed is told
// `invalid_token`; one with no bearer credentials gets the bare challenge.
const bearerToken = /^bearer +\S/i
const challengeFor = (authorization: string | ReadonlyArray<string> | undefined): string =>
  typeof authorization === "string" && bearerToken.test(authorization.trim())
    ? "Bearer error=\"invalid_token\""
    : "Bearer"

/**
 * The correlation id of a request: its `X-Correlation-ID` when that is a
 * UUID, else a new one.
 *
 * @since 0.1.0
 * @category utils
 */
export const correlationIdOf = (header: string | undefined): string =>
  header !== undefined && uuid.test(header) ? header.toLowerCase() : randomUUID()

/**
 * What the edge and the server's answer to a parser error (`Server`'s
 * `answerClientErrors`) share of one request: its correlation id, and the
 * status of an answer that error handler gave while the application had the
 * request (its body cut off by a bad chunk, or too slow to arrive). Made by
 * whichever of the two sees the request first.
 *
 * @since 0.1.0
 * @category models
 */
export interface EdgeState {
  readonly correlationId: string
  answered: number | undefined
}

const edgeStates = new WeakMap<object, EdgeState>()

/**
 * The `EdgeState` of Node's `request`, made on first use.
 *
 * @since 0.1.0
 * @category utils
 */
export const edgeStateOf = (request: Http.IncomingMessage): EdgeState => {
  let state = edgeStates.get(request)
  if (state === undefined) {
    const header = request.headers["x-correlation-id"]
    state = { correlationId: correlationIdOf(typeof header === "string" ? header : undefined), answered: undefined }
    edgeStates.set(request, state)
  }
  return state
}

// `application/json` only: the API reads the bodies of no other media type
// as JSON (`application/merge-patch+json` would mean another operation).
const isJson = (contentType: string) => contentType.split(";")[0]!.trim().toLowerCase() === "application/json"

// JSON is UTF-8 (RFC 8259 §8.1), whatever charset the content type names:
// bytes that are not are refused rather than turned into U+FFFD, which would
// store text the client never sent. A BOM is kept, so `JSON.parse` refuses
// it as before.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })

// Deeper than any body of this API, and far below what formatting a
// rejected value recursively (in a 400's detail) can take.
const maxJsonDepth = 64

// More values than any body of this API holds (a largest order, 100 lines,
// has about 320): a body of a million `{}` in 1 MB parses to 19 MB of heap,
// and a few dozen of them at once exhausted it; its 400 formatted the value
// twice, at 600 ms of CPU.
const maxJsonValues = 4096
const tooManyValues = `the body holds more than ${maxJsonValues} values`

// What JSON text's shape refuses before it is parsed: arrays and objects
// nested deeper than `maxJsonDepth`, or more than `maxJsonValues` values
// (counted by brackets and commas; strings are skipped, so one inside a
// string does not count). Undefined when it is neither.
const shapeRefusal = (text: string): string | undefined => {
  let depth = 0
  let values = 1
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92) i++ // backslash: skip the escaped character
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 91 || c === 123) {
      if (++depth > maxJsonDepth) return `the body nests arrays and objects deeper than ${maxJsonDepth} levels`
      if (++values > maxJsonValues) return tooManyValues
    } else if (c === 93 || c === 125) depth--
    else if (c === 44 && ++values > maxJsonValues) return tooManyValues
  }
  return undefined
}

type BodyRead =
  | { readonly _tag: "Read"; readonly text: string }
  | { readonly _tag: "NotUtf8" }
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Aborted" }

const decode = (chunks: ReadonlyArray<Buffer>): BodyRead => {
  try {
    return { _tag: "Read", text: utf8.decode(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)) }
  } catch {
    return { _tag: "NotUtf8" }
  }
}

/**
 * Reads a body of at most `limit` bytes. A larger one is `TooLarge` as soon
 * as it passes the limit, so the 413 goes out while the client still sends
 * (a client that reads as it uploads stops there); the rest is drained, up
 * to a bound, rather than cut off: cutting the stream would reset the
 * connection, and the reset can take the answer with it.
 */
const readBody = (incoming: Http.IncomingMessage, limit: number) =>
  Effect.async<BodyRead>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    let done = false
    const finish = (result: BodyRead) => {
      if (done) return
      done = true
      resume(Effect.succeed(result))
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size <= limit) return chunks.push(chunk)
      if (!done) {
        chunks.length = 0
        finish({ _tag: "TooLarge" })
      } else if (size > limit * 16) incoming.destroy()
    }
    const onEnd = () => finish(size > limit ? { _tag: "TooLarge" } : decode(chunks))
    const onClose = () => finish({ _tag: "Aborted" })
    incoming.on("data", onData)
    incoming.once("end", onEnd)
    incoming.once("error", onClose)
    incoming.once("close", onClose)
    return Effect.sync(() => {
      incoming.off("data", onData)
      incoming.off("end", onEnd)
      incoming.off("error", onClose)
      incoming.off("close", onClose)
    })
  })

const hasBody = (request: HttpServerRequest.HttpServerRequest) => {
  const length = request.headers["content-length"]
  return request.headers["transfer-encoding"] !== undefined || (length !== undefined && length.trim() !== "0")
}

/**
 * The request with its body already read and parsed, so the API's body
 * reader neither reads the stream again nor parses twice.
 */
const withBody = (request: HttpServerRequest.HttpServerRequest, text: string, json: unknown) =>
  Object.create(request, {
    text: { value: Effect.succeed(text) },
    json: { value: Effect.succeed(json) }
  }) as HttpServerRequest.HttpServerRequest

/**
 * Checks a body before the API reads it: JSON content type (415), size
 * (413) and well-formed JSON (400). The API's own body reader would turn
 * these into defects; here they are problems, and nothing runs. Requests
 * without a body go on to the router (an unknown route is a 404).
 */
const checkBody = (request: HttpServerRequest.HttpServerRequest, limit: number) =>
  Effect.gen(function*() {
    // Refused before its body is read: the connection closes, rather than
    // Node read the body, of any length, to keep it.
    const unread = hasBody(request) ? { connection: "close" } : undefined
    // Two keys would reach the API as one, "a, b": neither the client meant.
    if (request.headers["idempotency-key"]?.includes(",") && repeated(request, "idempotency-key")) {
      return Either.left(
        Problem.responseFor(RepeatedHeader, new RepeatedHeader({ header: "Idempotency-Key" }), unread)
      )
    }
    // No body and no content type: nothing to check; the router answers
    // (an unknown route is a 404).
    if (!hasBody(request) && request.headers["content-type"] === undefined) return Either.right(request)
    const contentType = request.headers["content-type"] ?? ""
    if (!isJson(contentType)) {
      return Either.left(Problem.responseFor(UnsupportedMediaType, new UnsupportedMediaType({ contentType }), unread))
    }
    // A compressed body would reach the JSON parser as bytes.
    const contentEncoding = request.headers["content-encoding"]?.trim().toLowerCase()
    if (contentEncoding !== undefined && contentEncoding !== "" && contentEncoding !== "identity") {
      return Either.left(
        Problem.responseFor(UnsupportedMediaType, new UnsupportedMediaType({ contentType, contentEncoding }), unread)
      )
    }
    // Built only when needed: an error and its problem response cost more
    // than the rest of this check.
    const tooLarge = () =>
      Either.left(
        Problem.responseFor(PayloadTooLarge, new PayloadTooLarge({ limitBytes: limit }), { connection: "close" })
      )
    if (Number(request.headers["content-length"] ?? "0") > limit) return tooLarge()
    // A client that waits for `100 Continue` before its body gets it now
    // that the body will be read, and not when it is refused unread (Node
    // would have sent it on arrival; the server hands such requests on).
    if (request.headers.expect?.trim().toLowerCase() === "100-continue") {
      const response = NodeHttpServerRequest.toServerResponse(request)
      if (!response.headersSent && !response.writableEnded) response.writeContinue()
    }
    // The edge runs where the platform made the request uninterruptible (the
    // router makes only its handlers interruptible again): a shutdown that
    // stops waiting for a body still arriving must be able to end the wait.
    const body = yield* Effect.interruptible(readBody(NodeHttpServerRequest.toIncomingMessage(request), limit))
    if (body._tag === "TooLarge") return tooLarge()
    // The connection is gone: no answer can reach the client, and writing
    // one would wait for good on a socket that never finishes.
    if (body._tag === "Aborted") return yield* Effect.interrupt
    if (body._tag === "NotUtf8") {
      return Either.left(Problem.responseFor(MalformedJson, new MalformedJson({ reason: "the body is not UTF-8" })))
    }
    // Before the parse, which is what such a body costs.
    const refused = shapeRefusal(body.text)
    if (refused !== undefined) {
      return Either.left(Problem.responseFor(MalformedJson, new MalformedJson({ reason: refused })))
    }
    try {
      const json: unknown = JSON.parse(body.text)
      return Either.right(withBody(request, body.text, json))
    } catch (error) {
      return Either.left(Problem.responseFor(
        MalformedJson,
        new MalformedJson({ reason: body.text.trim() === "" ? "the body is empty" : (error as Error).message })
      ))
    }
  })

// Whether the header came on more than one line (Node joins such lines).
const repeated = (request: HttpServerRequest.HttpServerRequest, name: string): boolean =>
  (NodeHttpServerRequest.toIncomingMessage(request).headersDistinct[name]?.length ?? 0) > 1

/** 405 with `Allow` when some route takes the path with another method, else 404. */
const notRouted = (request: HttpServerRequest.HttpServerRequest, routes: Observability.RouteTable) => {
  const path = request.url.split("?")[0]!
  const allowed = routes.methodsOf(request.url)
  // A path whose template takes this method, yet the router found no
  // route (a parameter it could not decode), is not found.
  if (allowed.length > 0 && !allowed.includes(request.method)) {
    const error = new MethodNotAllowed({ method: request.method, path, allowed })
    return Problem.responseFor(MethodNotAllowed, error, { allow: allowed.join(", ") })
  }
  return Problem.responseFor(RouteNotFound, new RouteNotFound({ method: request.method, path }))
}

/**
 * A failure no endpoint mapped (a defect, or a route that does not exist)
 * as a problem. Database outages are 503 with `Retry-After`; anything else
 * is 500, logged with its cause and never shown to the client.
 */
const unmapped = (
  cause: Cause.Cause<unknown>,
  request: HttpServerRequest.HttpServerRequest,
  routes: Observability.RouteTable
) => {
  // The client went away: there is no one to answer, and nothing to log.
  if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure) && (failure.value as { _tag?: unknown })._tag === "RouteNotFound") {
    return Effect.succeed(notRouted(request, routes))
  }
  const defect = Option.orElse(Cause.dieOption(cause), () => failure)
  if (Option.isSome(defect) && SqlFailure.isUnavailable(defect.value)) {
    const error = new CommandError.StoreUnavailable({ store: "database", reason: "not reachable" })
    return Effect.as(
      Effect.logWarning("http.database-unavailable", cause),
      Problem.responseFor(CommandError.StoreUnavailable, error)
    )
  }
  return Effect.as(
    Effect.logError("http.unhandled", cause),
    Problem.responseFor(InternalError, new InternalError())
  )
}

/**
 * The edge middleware, around the API's router (inside its error encoding):
 * correlation id, body checks, unmapped failures as problems, the headers
 * some statuses need, a `traceparent` of the request's span when tracing is
 * on, one log line per request, and `http_server_requests_total` and
 * `http_server_request_duration_seconds` by route template and status.
 *
 * @since 0.1.0
 * @category middleware
 */
export const edge = (options: {
  readonly bodyLimit: number
  readonly routes: Observability.RouteTable
  /** Told of each request as it starts and ends, for a shutdown to wait for those in flight. */
  readonly inFlight?: InFlight | undefined
}) =>
<E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> => {
  const handled = edgeOf(options)(app)
  const inFlight = options.inFlight
  return inFlight === undefined ? handled : inFlight.track(handled)
}

/**
 * The requests in flight, for a shutdown to finish them.
 *
 * @since 0.1.0
 * @category models
 */
export interface InFlight {
  /** Runs `self`, a request, counted in flight on its fiber until it ends. */
  readonly track: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /**
   * Waits up to `timeout` for the requests in flight to end, then ends those
   * still running, and gives them up to `grace` for it. A command still at
   * work ends as at its deadline (503 `CommandTimeout`: rolled back, its
   * idempotency key released); one whose commit has begun, or a request
   * whose command committed, is left to answer with its outcome; any other
   * request is interrupted (503 `ServiceUnavailable`). It may run in a
   * finalizer: its waits are interruptible, so their deadlines hold there too.
   */
  readonly drain: (timeout: Duration.Duration, grace: Duration.Duration) => Effect.Effect<void>
}

interface Running {
  /** The deadlines of its dispatches that wait on something, to pass now. */
  readonly cuts: Set<() => boolean>
  /** One of its dispatches began its commit: it has an outcome to report. */
  committed: boolean
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makeInFlight = (): InFlight => {
  const running = new Map<Fiber.RuntimeFiber<unknown, unknown>, Running>()
  const waiting = new Set<() => void>()
  const ended = (fiber: Fiber.RuntimeFiber<unknown, unknown>) => {
    running.delete(fiber)
    if (running.size > 0) return
    for (const resume of waiting) resume()
    waiting.clear()
  }
  const drained = Effect.async<void>((resume) => {
    if (running.size === 0) return resume(Effect.void)
    const done = () => resume(Effect.void)
    waiting.add(done)
    return Effect.sync(() => waiting.delete(done))
  })
  // A finalizer is uninterruptible, and a timeout ends its effect by
  // interrupting it: the wait must be interruptible for the deadline to hold.
  const waitUpTo = (duration: Duration.Duration) => Effect.timeoutOption(Effect.interruptible(drained), duration)
  return {
    track: (self) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.withFiberRuntime((fiber) => {
          const request: Running = { cuts: new Set(), committed: false }
          const cutoff: Middleware.Cutoff = {
            register: (cut) => {
              request.cuts.add(cut)
              return () => request.cuts.delete(cut)
            },
            committed: () => {
              request.committed = true
            }
          }
          running.set(fiber, request)
          return Effect.ensuring(
            restore(Effect.provideService(self, Middleware.CurrentCutoff, cutoff)),
            Effect.sync(() => ended(fiber))
          )
        })
      ),
    drain: (timeout, grace) =>
      Effect.flatMap(
        waitUpTo(timeout),
        (done) =>
          Option.isSome(done) || running.size === 0 ? Effect.void : Effect.withFiberRuntime((self) => {
            let cut = 0
            let interrupted = 0
            for (const [fiber, request] of running) {
              // Its dispatches still at work first: a dispatch made inside
              // another's transaction may have committed (its savepoint)
              // while the outer one still works.
              if (request.cuts.size > 0) {
                for (const passNow of [...request.cuts]) if (passNow()) cut++
              } else if (!request.committed) {
                fiber.unsafeInterruptAsFork(self.id())
                interrupted++
              }
            }
            return Effect.zipRight(
              Effect.logWarning("server.requests_stopped").pipe(
                Effect.annotateLogs({ running: running.size, commandsCut: cut, interrupted })
              ),
              Effect.asVoid(waitUpTo(grace))
            )
          })
      )
  }
}

const stoppingResponse = () =>
  Problem.responseFor(ServiceUnavailable, new ServiceUnavailable({ phase: "stopping" }), { connection: "close" })

/**
 * The most header lines a request may have; one with more is refused with
 * 431. The Node server counts none (`maxHeadersCount = 0`; its 16 KB limit
 * on the head still holds): with a count, it drops the lines past it and
 * serves the rest, so an `Idempotency-Key` or `Authorization` among them
 * went unseen and a retry ran twice.
 *
 * @since 0.1.0
 * @category constants
 */
export const maxHeaders = 100

// The request's header lines as Node received them (repeats included).
const headerCount = (request: HttpServerRequest.HttpServerRequest): number => {
  const raw = (request.source as { readonly rawHeaders?: ReadonlyArray<string> } | undefined)?.rawHeaders
  return raw === undefined ? 0 : raw.length / 2
}

const encodeMalformed = Schema.encodeSync(Problem.schema(MalformedRequest))

const edgeOf =
  (options: { readonly bodyLimit: number; readonly routes: Observability.RouteTable }) =>
  <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
    Effect.withFiberRuntime((fiber) => {
      const received = Context.unsafeGet(fiber.currentContext, HttpServerRequest.HttpServerRequest)
      const url = Observability.originForm(received.url)
      const request = url === received.url ? received : received.modify({ url })
      const start = performance.now()
      const route = options.routes.find(request.method, request.url)
      // The span the platform's HTTP tracer opened for this request (its
      // parent the caller's `traceparent`, if any), when tracing is on. A
      // request it leaves out (scrapes, probes) is not traced inside either:
      // its SQL statements would each start a trace of their own.
      const tracing = fiber.getFiberRef(FiberRef.currentTracerEnabled)
      const traceparent = tracing ? Observability.traceparentOf(fiber.currentContext) : undefined
      const untraced = tracing && traceparent === undefined
      // Node's request, when served by Node: shared with its parser errors' answer.
      const edge = received.source instanceof NodeHttp.IncomingMessage ? edgeStateOf(received.source) : undefined
      const correlationId = edge?.correlationId ?? correlationIdOf(request.headers["x-correlation-id"])
      return Effect.gen(function*() {
        // Runs on the final response, whatever produced it (handler, encoded
        // error, refusal), just before it is written.
        yield* HttpApp.appendPreResponseHandler((_request, response) => {
          const elapsedMs = performance.now() - start
          // Answered already by the parser's error handler: that answer is the request's.
          const status = edge?.answered ?? response.status
          Metrics.recordRequest(request.method, route, status, elapsedMs / 1000)
          // An empty 503 is the platform's answer for a request interrupted
          // by the server: a shutdown that stopped waiting for it.
          let decorated = HttpServerResponse.setHeader(
            response.status === 503 && response.body._tag === "Empty" ? stoppingResponse() : response,
            "x-correlation-id",
            correlationId
          )
          if (traceparent !== undefined) decorated = HttpServerResponse.setHeader(decorated, "traceparent", traceparent)
          // Rather than read a body no route takes (up to any length) to keep the connection:
          // an unknown route's, or one sent with a read, which no check bounds.
          if (
            (route === Observability.unmatchedRoute || !HttpMethod.hasBody(request.method)) &&
            hasBody(request)
          ) {
            decorated = HttpServerResponse.setHeader(decorated, "connection", "close")
          }
          if (response.status === 401) {
            decorated = HttpServerResponse.setHeader(
              decorated,
              "www-authenticate",
              challengeFor(request.headers["authorization"])
            )
          } else if (response.status === 503) {
            decorated = HttpServerResponse.setHeader(decorated, "retry-after", "1")
          }
          // Below the minimum level the line is not built: annotating it
          // would still set and restore the fiber's annotations.
          if (LogLevel.lessThan(LogLevel.Info, fiber.getFiberRef(FiberRef.currentMinimumLogLevel))) {
            return Effect.succeed(decorated)
          }
          return Effect.as(
            Effect.logInfo("http.request").pipe(
              Effect.annotateLogs({
                method: request.method,
                path: request.url.split("?")[0],
                status,
                durationMs: Math.round(elapsedMs),
                correlationId
              })
            ),
            decorated
          )
        })
        if (headerCount(received) > maxHeaders) {
          return Problem.response({
            ...encodeMalformed(new MalformedRequest({ reason: "TOO_MANY_HEADERS" })),
            status: 431
          }, { connection: "close" })
        }
        const host = Observability.hostRefusal(request)
        if (host !== undefined) {
          return Problem.responseFor(MalformedRequest, new MalformedRequest({ reason: host }), { connection: "close" })
        }
        if (Observability.hasPathParameters(request.url)) {
          const path = request.url.split("?")[0]!
          return Problem.responseFor(RouteNotFound, new RouteNotFound({ method: request.method, path }))
        }
        let checked = request
        // The path as the router decodes it: `/%61pi/v1/orders` is an API route too.
        if (HttpMethod.hasBody(request.method) && Observability.routedPath(request.url).startsWith("/api/")) {
          // No route takes the method and path: 404 or 405 from here, whatever
          // the body, which is left unread (the connection closes). Not the
          // router's answer: where it would find a route after all (an empty
          // parameter), the body would reach the API unchecked.
          if (route === Observability.unmatchedRoute) return notRouted(request, options.routes)
          const body = yield* checkBody(request, options.bodyLimit)
          if (Either.isLeft(body)) return body.left
          checked = body.right
        }
        // One change of the context, not one per service.
        const provided: HttpApp.Default<E, R> = Effect.mapInputContext(
          app,
          (context: Context.Context<any>) =>
            Context.add(
              Context.add(context, CorrelationId, correlationId),
              HttpServerRequest.HttpServerRequest,
              checked
            )
        )
        const handled = provided.pipe(
          Effect.catchAllCause((cause) =>
            isMappedFailure(cause)
              ? Effect.failCause(cause)
              // Its log line (the cause of a 500) carries the id the client was given.
              : Effect.annotateLogs(unmapped(cause, request, options.routes), "correlationId", correlationId)
          )
        )
        return yield* (untraced ? Effect.withTracerEnabled(handled, false) : handled)
      })
    })

// A typed failure of an endpoint: the API encodes it with its problem schema.
const isMappedFailure = (cause: Cause.Cause<unknown>) => {
  if (Cause.isDie(cause) || Cause.isInterruptedOnly(cause)) return false
  const failure = Cause.failureOption(cause)
  return Option.isSome(failure) && (failure.value as { _tag?: unknown })._tag !== "RouteNotFound"
}

/**
 * Every group's implementation; needs the bus, the stores, the database and
 * the metrics scraper.
 *
 * @since 0.1.0
 * @category layers
 */
export const ApiLive = HttpApiBuilder.api(Api).pipe(
  Layer.provide([OrdersLive, ProductsLive, EventsLive, HealthLive, MetricsLive])
)
