/**
 * The order service's HTTP API: its definition (paths, wire schemas in
 * snake_case, success and error responses), apart from its implementation in
 * `Http.ts`. The OpenAPI document is generated from this.
 *
 * @since 0.1.0
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as OpenApi from "@effect/platform/OpenApi"
import * as Schema from "effect/Schema"
import { Command, CommandError, Idempotency } from "../index.js"
import { limits } from "../orders/Commands.js"
import { InsufficientInventory, maxAvailable } from "../orders/Inventory.js"
import {
  OrderAlreadyCancelled,
  OrderAlreadyExists,
  OrderNotFound,
  OrderStatus,
  OrderVersionMismatch,
  ProductId,
  ShippingAddress
} from "../orders/Order.js"
import { Authentication } from "./Auth.js"
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
import * as Problem from "./Problem.js"

const snake = <S extends Schema.Schema.Any>(key: string, schema: S) =>
  Schema.propertySignature(schema).pipe(Schema.fromKey(key))

const strict = { parseOptions: { onExcessProperty: "error" } } as const

// -----------------------------------------------------------------------------
// wire schemas
// -----------------------------------------------------------------------------

/**
 * An order line on the wire; decodes to the domain's `OrderLine`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const OrderLineBody = Schema.Struct({
  productId: snake("product_id", ProductId),
  quantity: Schema.Int.pipe(Schema.between(limits.minQuantity, limits.maxQuantity))
}).annotations({ identifier: "OrderLine", ...strict })

/**
 * @since 0.1.0
 * @category schemas
 */
export const ShippingAddressBody = Schema.Struct({
  line1: ShippingAddress.fields.line1,
  line2: ShippingAddress.fields.line2,
  city: ShippingAddress.fields.city,
  postalCode: snake("postal_code", ShippingAddress.fields.postalCode),
  country: ShippingAddress.fields.country
}).annotations({ identifier: "ShippingAddress", ...strict })

/**
 * A UUID as a client may write it, in either case, decoded to lowercase: an
 * id is one id, and a request that names it in capitals has the same
 * idempotency fingerprint as one that does not.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Uuid = Schema.transform(Schema.UUID, Schema.UUID, {
  strict: true,
  decode: (id) => id.toLowerCase(),
  encode: (id) => id
})

/**
 * `POST /api/v1/orders` body; decodes to `CreateOrder`'s payload.
 *
 * @since 0.1.0
 * @category schemas
 */
export const CreateOrderBody = Schema.Struct({
  customerId: snake("customer_id", Uuid),
  items: Schema.Array(OrderLineBody).pipe(Schema.minItems(limits.minLines), Schema.maxItems(limits.maxLines)),
  shippingAddress: snake("shipping_address", ShippingAddressBody)
}).annotations({ identifier: "CreateOrderRequest", ...strict })

/**
 * @since 0.1.0
 * @category schemas
 */
export const OrderCreatedResponse = Schema.Struct({
  order_id: Schema.UUID,
  status: Schema.Literal("created")
}).annotations({ identifier: "OrderCreatedResponse" })

/**
 * @since 0.1.0
 * @category schemas
 */
export const CancelOrderBody = Schema.Struct({
  reason: Command.TextOfLength(1, 500)
}).annotations({ identifier: "CancelOrderRequest", ...strict })

/**
 * @since 0.1.0
 * @category schemas
 */
export const OrderCancelledResponse = Schema.Struct({
  order_id: Schema.UUID,
  status: Schema.Literal("cancelled")
}).annotations({ identifier: "OrderCancelledResponse" })

const OrderLineView = Schema.Struct({ product_id: Schema.String, quantity: Schema.Int }).annotations({
  identifier: "OrderLineView"
})

/**
 * @since 0.1.0
 * @category schemas
 */
export const OrderView = Schema.Struct({
  order_id: Schema.UUID,
  customer_id: Schema.UUID,
  user_id: Schema.String,
  status: OrderStatus,
  items: Schema.Array(OrderLineView),
  shipping_address: Schema.Struct({
    line1: Schema.String,
    line2: Schema.optionalWith(Schema.String, { exact: true }),
    city: Schema.String,
    postal_code: Schema.String,
    country: Schema.String
  }),
  version: Schema.Int,
  created_at: Schema.String,
  updated_at: Schema.String,
  cancel_reason: Schema.optionalWith(Schema.String, { exact: true })
}).annotations({ identifier: "Order" })

/**
 * @since 0.1.0
 * @category schemas
 */
export const StockBody = Schema.Struct({
  available: Schema.Int.pipe(Schema.between(0, maxAvailable))
}).annotations({ identifier: "StockRequest", ...strict })

/**
 * @since 0.1.0
 * @category schemas
 */
export const StockView = Schema.Struct({
  product_id: Schema.String,
  available: Schema.Int
}).annotations({ identifier: "Stock" })

/**
 * @since 0.1.0
 * @category schemas
 */
export const EventView = Schema.Struct({
  position: Schema.Int,
  event_id: Schema.UUID,
  type: Schema.String,
  aggregate_type: Schema.String,
  aggregate_id: Schema.String,
  aggregate_version: Schema.Int,
  occurred_at: Schema.String,
  correlation_id: Schema.String,
  causation_id: Schema.String,
  payload: Schema.Unknown
}).annotations({ identifier: "Event" })

/**
 * @since 0.1.0
 * @category schemas
 */
export const EventsPage = Schema.Struct({
  events: Schema.Array(EventView),
  next: Schema.Int.annotations({ description: "Pass as `after` to continue" })
}).annotations({ identifier: "EventsPage" })

// Decimal digits only: `NumberFromString` alone reads "0x10", "1e2" and " 5" as numbers.
// Documented as the integer it is, with its range, as query parameters are.
const IntFromString = (min: number, max: number) =>
  Schema.String.pipe(
    Schema.pattern(/^\d{1,20}$/, { message: () => "Expected a whole number in decimal digits" }),
    Schema.compose(Schema.NumberFromString),
    Schema.int(),
    Schema.between(min, max, { jsonSchema: { type: "integer", minimum: min, maximum: max } })
  )

/**
 * @since 0.1.0
 * @category schemas
 */
export const EventsQuery = Schema.Struct({
  after: Schema.optionalWith(IntFromString(0, Number.MAX_SAFE_INTEGER), { default: () => 0 }),
  limit: Schema.optionalWith(IntFromString(1, 1000), { default: () => 100 })
})

/**
 * Headers of the requests that accept an idempotency key.
 *
 * @since 0.1.0
 * @category schemas
 */
export const IdempotencyHeaders = Schema.Struct({
  "idempotency-key": Schema.optionalWith(Command.IdempotencyKey, { exact: true })
})

/**
 * A strong entity tag of an order's version, as `ETag` sends it.
 *
 * @since 0.1.0
 * @category schemas
 */
export const VersionTag = Schema.String.pipe(
  // A version as the ETag writes it: "01" is another tag, not version 1.
  Schema.pattern(/^(\*|"(0|[1-9]\d{0,8})")$/),
  Schema.annotations({ description: "The order's ETag, e.g. \"3\" (or * for any version)" })
)

/**
 * `If-None-Match` of a read: entity tags (`"3"`, `W/"3"`, a list of them)
 * or `*`. A tag that matches the order's answers 304 Not Modified.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ReadHeaders = Schema.Struct({
  "if-none-match": Schema.optionalWith(
    Schema.String.pipe(
      Schema.maxLength(1000),
      Schema.annotations({ description: "ETags the client has, e.g. \"3\"; a match answers 304 without a body" })
    ),
    { exact: true }
  )
})

/**
 * @since 0.1.0
 * @category schemas
 */
export const CancelHeaders = Schema.Struct({
  "idempotency-key": Schema.optionalWith(Command.IdempotencyKey, { exact: true }),
  "if-match": Schema.optionalWith(VersionTag, { exact: true })
})

const OrderIdPath = Schema.Struct({ orderId: Uuid })
const ProductIdPath = Schema.Struct({ productId: ProductId })

// -----------------------------------------------------------------------------
// problems
// -----------------------------------------------------------------------------

/**
 * Errors every command endpoint may answer with, whatever the command.
 *
 * @since 0.1.0
 * @category errors
 */
export const commandProblems = [
  Problem.schema(CommandError.CommandValidationError),
  Problem.schema(CommandError.Forbidden),
  Problem.schema(CommandError.CommandTimeout),
  Problem.schema(CommandError.StoreUnavailable),
  Problem.schema(Idempotency.IdempotencyKeyInFlight),
  Problem.schema(Idempotency.IdempotencyKeyMismatch)
] as const

// -----------------------------------------------------------------------------
// groups
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category groups
 */
export class OrdersGroup extends HttpApiGroup.make("orders")
  .add(
    HttpApiEndpoint.post("createOrder", "/api/v1/orders")
      .setPayload(CreateOrderBody)
      .setHeaders(IdempotencyHeaders)
      .addSuccess(OrderCreatedResponse, { status: 201 })
      .addError(Problem.schema(InsufficientInventory))
      .addError(Problem.schema(OrderAlreadyExists))
      .annotate(OpenApi.Summary, "Place an order and reserve its stock")
  )
  .add(
    HttpApiEndpoint.post("cancelOrder", "/api/v1/orders/:orderId/cancel")
      .setPath(OrderIdPath)
      .setPayload(CancelOrderBody)
      .setHeaders(CancelHeaders)
      .addSuccess(OrderCancelledResponse)
      .addError(Problem.schema(OrderNotFound))
      .addError(Problem.schema(OrderAlreadyCancelled))
      .addError(Problem.schema(OrderVersionMismatch))
      .addError(Problem.schema(CommandError.ConcurrencyConflict))
      .annotate(OpenApi.Summary, "Cancel an order (owner or admin) and release its stock")
  )
  .add(
    HttpApiEndpoint.get("getOrder", "/api/v1/orders/:orderId")
      .setPath(OrderIdPath)
      .setHeaders(ReadHeaders)
      .addSuccess(OrderView)
      .addSuccess(Schema.Void.annotations({ description: "Not modified: the order's ETag is one of If-None-Match" }), {
        status: 304
      })
      .addError(Problem.schema(OrderNotFound))
      .annotate(OpenApi.Summary, "Read an order (owner or admin); its ETag is its version")
  )
  .addError(commandProblems[0])
  .addError(commandProblems[1])
  .addError(commandProblems[2])
  .addError(commandProblems[3])
  .addError(commandProblems[4])
  .addError(commandProblems[5])
  .middleware(Authentication)
{}

/**
 * @since 0.1.0
 * @category groups
 */
export class ProductsGroup extends HttpApiGroup.make("products")
  .add(
    HttpApiEndpoint.put("setStock", "/api/v1/products/:productId/stock")
      .setPath(ProductIdPath)
      .setPayload(StockBody)
      .setHeaders(IdempotencyHeaders)
      .addSuccess(StockView)
      .annotate(OpenApi.Summary, "Set a product's available stock (admin)")
  )
  .add(
    HttpApiEndpoint.get("getStock", "/api/v1/products/:productId/stock")
      .setPath(ProductIdPath)
      .addSuccess(StockView)
      .annotate(OpenApi.Summary, "Read a product's available stock")
  )
  .addError(commandProblems[0])
  .addError(commandProblems[1])
  .addError(commandProblems[2])
  .addError(commandProblems[3])
  .addError(commandProblems[4])
  .addError(commandProblems[5])
  .middleware(Authentication)
{}

/**
 * @since 0.1.0
 * @category groups
 */
export class EventsGroup extends HttpApiGroup.make("events")
  .add(
    HttpApiEndpoint.get("listEvents", "/api/v1/events")
      .setUrlParams(EventsQuery)
      .addSuccess(EventsPage)
      .annotate(OpenApi.Summary, "Committed events in log order (admin)")
  )
  .addError(Problem.schema(CommandError.Forbidden))
  .addError(Problem.schema(CommandError.StoreUnavailable))
  .middleware(Authentication)
{}

/**
 * @since 0.1.0
 * @category schemas
 */
export const Health = Schema.Struct({
  status: Schema.Literal("ok")
}).annotations({ identifier: "Health" })

/**
 * @since 0.1.0
 * @category groups
 */
export class HealthGroup extends HttpApiGroup.make("health")
  .add(HttpApiEndpoint.get("live", "/health/live").addSuccess(Health))
  .add(
    HttpApiEndpoint.get("ready", "/health/ready")
      .addSuccess(Health)
      .addError(Problem.schema(CommandError.StoreUnavailable))
  )
{}

/**
 * @since 0.1.0
 * @category groups
 */
export class MetricsGroup extends HttpApiGroup.make("metrics")
  .add(
    HttpApiEndpoint.get("metrics", "/metrics")
      .addSuccess(
        HttpApiSchema.Text({ contentType: Metrics.contentType }).annotations({
          description: "Every metric in the Prometheus text exposition format (0.0.4)"
        })
      )
      .annotate(
        OpenApi.Summary,
        "Metrics in the Prometheus text format (admin; without a token on METRICS_PORT when set)"
      )
  )
  .addError(Problem.schema(CommandError.Forbidden))
  .middleware(Authentication)
{}

/**
 * Every error response is problem+json; the generator says so for a status
 * with one error schema but falls back to `application/json` when several
 * share it, so the document is corrected here.
 */
const problemContentTypes = (spec: Record<string, any>): Record<string, any> => {
  for (const operations of Object.values(spec.paths ?? {}) as Array<Record<string, any>>) {
    for (const operation of Object.values(operations)) {
      for (const [status, response] of Object.entries(operation?.responses ?? {}) as Array<[string, any]>) {
        const content = response?.content
        if (Number(status) >= 400 && content?.["application/json"] !== undefined) {
          content[Problem.contentType] = content["application/json"]
          delete content["application/json"]
        }
      }
    }
  }
  return spec
}

// The response headers the service sets, which `HttpApi` has no way to
// declare: written into the document here so that clients see them.
const header = (description: string, schema: Record<string, unknown> = { type: "string" }) => ({ description, schema })

const correlationHeader = header(
  "The request's X-Correlation-ID when it was a UUID, else a new one; the command's correlation id",
  { type: "string", format: "uuid" }
)

const versionTag = { ETag: header("The order's version (after the cancel, for one), quoted: \"2\"") }

const headersByOperation: Readonly<Record<string, Readonly<Record<string, Readonly<Record<string, unknown>>>>>> = {
  "orders.createOrder": { "201": { Location: header("/api/v1/orders/{order_id} of the new order") } },
  "orders.cancelOrder": { "200": versionTag },
  "orders.getOrder": { "200": versionTag, "304": versionTag }
}

// Answers of the endpoints that take an Idempotency-Key may be replays: a
// success, or a failure the command declares (refusals before the command
// runs and outages are not stored). A cancel's 403 is the handler's (not the
// order's owner), so it is stored; the others' 403 is the role check before.
const replayableStatuses = ["200", "201", "404", "409", "412"]
const replayable: Readonly<Record<string, ReadonlySet<string>>> = {
  "orders.createOrder": new Set(replayableStatuses),
  "orders.cancelOrder": new Set([...replayableStatuses, "403"]),
  "products.setStock": new Set(replayableStatuses)
}

// What Node's parser and the edge refuse before any route is found, on any
// path: declared on every operation, so a client generated from the
// document knows these answers too.
const refusedBeforeRouting: Readonly<Record<string, string>> = {
  "408": "The request did not arrive in time",
  "417": "An Expect other than 100-continue",
  "431": "Headers over 16 KB, or more than 100 header lines"
}

const malformedRequests = (spec: Record<string, any>): Record<string, any> => {
  for (const operations of Object.values(spec.paths ?? {}) as Array<Record<string, any>>) {
    for (const operation of Object.values(operations)) {
      if (operation?.responses === undefined) continue
      for (const [status, description] of Object.entries(refusedBeforeRouting)) {
        operation.responses[status] ??= {
          description,
          content: { [Problem.contentType]: { schema: { $ref: "#/components/schemas/MalformedRequest" } } }
        }
      }
    }
  }
  return spec
}

const responseHeaders = (spec: Record<string, any>): Record<string, any> => {
  for (const operations of Object.values(spec.paths ?? {}) as Array<Record<string, any>>) {
    for (const operation of Object.values(operations)) {
      const id: string = operation?.operationId ?? ""
      for (const [status, response] of Object.entries(operation?.responses ?? {}) as Array<[string, any]>) {
        const headers: Record<string, unknown> = { "X-Correlation-ID": correlationHeader }
        if (replayable[id]?.has(status) === true) {
          headers["Idempotent-Replayed"] = header(
            "\"true\" when this is the stored answer to an earlier request with the same Idempotency-Key",
            { type: "string", enum: ["true"] }
          )
        }
        if (status === "401") {
          headers["WWW-Authenticate"] = header(
            "`Bearer error=\"invalid_token\"` when a bearer token was sent and refused, else `Bearer` (RFC 6750)",
            { type: "string", enum: ["Bearer", "Bearer error=\"invalid_token\""] }
          )
        }
        if (status === "503") headers["Retry-After"] = header("Seconds to wait before trying again", { type: "string" })
        if (status === "405") headers["Allow"] = header("The methods the path takes")
        Object.assign(headers, headersByOperation[id]?.[status] ?? {})
        response.headers = { ...response.headers, ...headers }
      }
    }
  }
  return spec
}

const ApiBase = HttpApi.make("orders-service") // `HttpApi.make` starts every API with the plain `HttpApiDecodeError`, which
 // would be encoded before any other schema of that error; replace it with its
// problem+json form so schema failures are problems like every other error.
;(ApiBase as { errorSchema: Schema.Schema.Any }).errorSchema = Problem.schema(HttpApiDecodeError, {
  title: "Invalid request"
})

/**
 * The whole API.
 *
 * @since 0.1.0
 * @category api
 */
export class Api extends ApiBase
  .add(OrdersGroup)
  .add(ProductsGroup)
  .add(EventsGroup)
  .add(HealthGroup)
  .add(MetricsGroup)
  .addError(Problem.schema(MalformedJson))
  .addError(Problem.schema(MalformedRequest))
  .addError(Problem.schema(RepeatedHeader))
  .addError(Problem.schema(PayloadTooLarge))
  .addError(Problem.schema(UnsupportedMediaType))
  .addError(Problem.schema(RouteNotFound))
  .addError(Problem.schema(MethodNotAllowed))
  .addError(Problem.schema(InternalError))
  .addError(Problem.schema(ServiceUnavailable))
  .annotate(OpenApi.Transform, (spec) => responseHeaders(malformedRequests(problemContentTypes(spec))))
  .annotate(OpenApi.Title, "Orders service (effect-command-bus reference)")
  .annotate(OpenApi.Version, "0.1.0")
  .annotate(
    OpenApi.Description,
    "Every error is application/problem+json (RFC 9457) with a stable `code`. " +
      "POST and PUT accept an Idempotency-Key header (1 to 255 characters, scoped to the user)."
  )
{}
