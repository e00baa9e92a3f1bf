/**
 * The HTTP implementation of `Api`: each endpoint decodes, authenticates,
 * dispatches through the bus (or reads a store) and maps the result. The
 * edge middleware refuses bad bodies before the API runs, carries the
 * correlation id, and turns defects into problems without leaking details.
 *
 * @since 0.1.0
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import * as HttpApp from "@effect/platform/HttpApp"
import * as IncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as HttpMethod from "@effect/platform/HttpMethod"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as ParseResult from "effect/ParseResult"
import { randomUUID } from "node:crypto"
import { Command, CommandError, CurrentUser, Idempotency, Outbox } from "../index.js"
import { CancelOrder, CreateOrder, RestockProduct } from "../orders/Commands.js"
import { Inventory } from "../orders/Inventory.js"
import type { Order } from "../orders/Order.js"
import { OrderNotFound } from "../orders/Order.js"
import type * as OrderBus from "../orders/OrderBus.js"
import { OrderRepository } from "../orders/OrderRepository.js"
import { SqlFailure } from "../sql/index.js"
import { Api } from "./Api.js"
import { adminRole, CurrentPrincipal } from "./Auth.js"
import { InternalError, MalformedJson, PayloadTooLarge, RouteNotFound, UnsupportedMediaType } from "./HttpErrors.js"
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
    const { exit, replayed } = yield* Idempotency.observeReplay(CurrentUser.as(run(command), principal))
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
      .handle("getOrder", ({ path }) =>
        Effect.gen(function*() {
          const principal = yield* CurrentPrincipal
          const order = yield* orders.findById(path.orderId)
          // Someone else's order is reported as missing: its existence is not
          // the caller's business.
          if (Option.isNone(order) || (order.value.userId !== principal.userId && !isAdmin(principal))) {
            return yield* new OrderNotFound({ orderId: path.orderId })
          }
          return HttpServerResponse.unsafeJson(orderView(order.value), {
            headers: { etag: `"${order.value.version}"` }
          })
        }))
  }))

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
        sql`SELECT 1`.pipe(
          Effect.timeout("2 seconds"),
          Effect.as({ status: "ok" as const }),
          Effect.catchAllCause(() =>
            Effect.fail(new CommandError.StoreUnavailable({ store: "database", reason: "not reachable" }))
          )
        ))
  }))

// -----------------------------------------------------------------------------
// edge middleware
// -----------------------------------------------------------------------------

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const problemOf = (error: { readonly _tag: string; readonly message: string }, status: number, title: string) => ({
  type: Problem.typeOf(error._tag),
  title,
  status,
  detail: error.message,
  code: error._tag,
  ...Object.fromEntries(Object.entries(error).filter(([key]) => key !== "_tag"))
})

const isJson = (contentType: string) => {
  const mediaType = contentType.split(";")[0]!.trim().toLowerCase()
  return mediaType === "application/json" || (mediaType.startsWith("application/") && mediaType.endsWith("+json"))
}

/**
 * Checks a body before the API reads it: JSON content type (415), size
 * (413) and well-formed JSON (400). The API's own body reader would turn
 * these into defects; here they are problems, and nothing runs.
 */
const checkBody = (request: HttpServerRequest.HttpServerRequest, limit: number) =>
  Effect.gen(function*() {
    const contentType = request.headers["content-type"] ?? ""
    if (!isJson(contentType)) {
      return Option.some(
        Problem.response(problemOf(new UnsupportedMediaType({ contentType }), 415, "Unsupported media type"))
      )
    }
    const tooLarge = Problem.response(problemOf(new PayloadTooLarge({ limitBytes: limit }), 413, "Payload too large"))
    const declared = Number(request.headers["content-length"] ?? "0")
    if (declared > limit) return Option.some(tooLarge)
    const text = yield* request.text.pipe(
      IncomingMessage.withMaxBodySize(Option.some(limit)),
      Effect.either
    )
    if (text._tag === "Left") {
      return Option.some(
        String(text.left.cause).includes("maxBytes") || String(text.left.cause).toLowerCase().includes("too large")
          ? tooLarge
          : Problem.response(
            problemOf(new MalformedJson({ reason: "the body could not be read" }), 400, "Malformed JSON")
          )
      )
    }
    try {
      JSON.parse(text.right)
      return Option.none()
    } catch (error) {
      return Option.some(Problem.response(problemOf(
        new MalformedJson({ reason: text.right.trim() === "" ? "the body is empty" : (error as Error).message }),
        400,
        "Malformed JSON"
      )))
    }
  })

/**
 * A failure no endpoint mapped (a defect, or a route that does not exist)
 * as a problem. Database outages are 503 with `Retry-After`; anything else
 * is 500, logged with its cause and never shown to the client.
 */
const unmapped = (cause: Cause.Cause<unknown>, request: HttpServerRequest.HttpServerRequest) => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure) && (failure.value as { _tag?: unknown })._tag === "RouteNotFound") {
    const error = new RouteNotFound({ method: request.method, path: request.url.split("?")[0]! })
    return Effect.succeed(Problem.response(problemOf(error, 404, "Not found")))
  }
  const defect = Option.orElse(Cause.dieOption(cause), () => failure)
  if (Option.isSome(defect) && SqlFailure.isUnavailable(defect.value)) {
    const error = new CommandError.StoreUnavailable({ store: "database", reason: "not reachable" })
    return Effect.as(
      Effect.logWarning("http.database-unavailable", cause),
      Problem.response(problemOf(error, 503, "Service unavailable"))
    )
  }
  return Effect.as(
    Effect.logError("http.unhandled", cause),
    Problem.response(problemOf(new InternalError(), 500, "Internal server error"))
  )
}

/**
 * The edge middleware, around the API's router (inside its error encoding):
 * correlation id, body checks, unmapped failures as problems, the headers
 * some statuses need, and one log line per request.
 *
 * @since 0.1.0
 * @category middleware
 */
export const edge =
  (options: { readonly bodyLimit: number }) => <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const start = Date.now()
      const header = request.headers["x-correlation-id"]
      const correlationId = header !== undefined && uuid.test(header) ? header.toLowerCase() : randomUUID()
      // Runs on the final response, whatever produced it (handler, encoded
      // error, refusal), just before it is written.
      yield* HttpApp.appendPreResponseHandler((_request, response) => {
        let decorated = HttpServerResponse.setHeader(response, "x-correlation-id", correlationId)
        if (response.status === 401) {
          decorated = HttpServerResponse.setHeader(decorated, "www-authenticate", "Bearer")
        } else if (response.status === 503) {
          decorated = HttpServerResponse.setHeader(decorated, "retry-after", "1")
        }
        return Effect.as(
          Effect.logInfo("http.request").pipe(
            Effect.annotateLogs({
              method: request.method,
              path: request.url.split("?")[0],
              status: response.status,
              durationMs: Date.now() - start,
              correlationId
            })
          ),
          decorated
        )
      })
      if (HttpMethod.hasBody(request.method) && request.url.startsWith("/api/")) {
        const refused = yield* checkBody(request, options.bodyLimit)
        if (Option.isSome(refused)) return refused.value
      }
      return yield* app.pipe(
        Effect.provideService(CorrelationId, correlationId),
        Effect.catchAllCause((cause) => isMappedFailure(cause) ? Effect.failCause(cause) : unmapped(cause, request))
      )
    })

// A typed failure of an endpoint: the API encodes it with its problem schema.
const isMappedFailure = (cause: Cause.Cause<unknown>) => {
  if (Cause.isDie(cause) || Cause.isInterruptedOnly(cause)) return false
  const failure = Cause.failureOption(cause)
  return Option.isSome(failure) && (failure.value as { _tag?: unknown })._tag !== "RouteNotFound"
}

/**
 * Every group's implementation; needs the bus, the stores and the database.
 *
 * @since 0.1.0
 * @category layers
 */
export const ApiLive = HttpApiBuilder.api(Api).pipe(
  Layer.provide([OrdersLive, ProductsLive, EventsLive, HealthLive])
)
