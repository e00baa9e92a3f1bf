/**
 * Malformed requests, table-driven: each is refused with a 4xx (never a
 * 5xx) problem+json that has `type`, `title`, `status`, `detail` and `code`,
 * with the expected status, and no stack trace or SQL; and all of them
 * together change nothing (stock, orders, events).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { gzipSync } from "node:zlib"
import { kind } from "../support/Database.js"
import {
  absoluteFormPost,
  address,
  customerId,
  expectJson,
  expectProblem,
  layer,
  layerOptions,
  orderBody,
  parseRawReply,
  rawRequest,
  type Reply,
  request,
  setStock,
  stockOf,
  unknownOrderId,
  users,
  uuidPattern,
  waitForFeed
} from "./Http.js"

// -----------------------------------------------------------------------------
// the bodies the cases change
// -----------------------------------------------------------------------------

/** The product the order cases name: stocked, so an order that got through would show. */
const product = "bad-input-sku"
/** A product never stocked, for a case that must not reach the inventory to be told apart. */
const unstocked = "bad-input-unstocked"
/** The admin's stock cases set this product, so a PUT that got through would show. */
const stocked = "bad-input-stock"
/** The sentinel order's product. */
const sentinelProduct = "bad-input-sentinel"

const products = [product, stocked, sentinelProduct, unstocked] as const

const order = orderBody([{ product_id: product, quantity: 1 }])
const json = (value: unknown) => JSON.stringify(value)
const withOrder = (fields: Record<string, unknown>) => json({ ...order, ...fields })
const withLine = (fields: Record<string, unknown>) => withOrder({ items: [{ ...order.items[0], ...fields }] })
const withAddress = (fields: Record<string, unknown>) => withOrder({ shipping_address: { ...address, ...fields } })
const withoutKey = (value: Record<string, unknown>, key: string) =>
  json(Object.fromEntries(Object.entries(value).filter(([name]) => name !== key)))
/** The valid order with its quantity written as raw JSON text (for numbers JSON.stringify cannot write). */
const quantityText = (text: string) => json(order).replace("\"quantity\":1", `"quantity":${text}`)

/**
 * A request of `bytes` sent in 64 KB chunks without a Content-Length, as raw
 * HTTP: the service answers 413 and closes before the upload ends, which
 * `fetch` reports as a failed request rather than the answer.
 */
const chunkedRequest = (bytes: number) => (bearer: string) => {
  const chunk = "x".repeat(64 * 1024)
  const opening = "{\"padding\":\""
  const chunks = Array.from(
    { length: Math.ceil(bytes / chunk.length) },
    () => `${chunk.length.toString(16)}\r\n${chunk}\r\n`
  )
  const head = [
    "POST /api/v1/orders HTTP/1.1",
    "Host: localhost",
    `Authorization: Bearer ${bearer}`,
    "Content-Type: application/json",
    "Transfer-Encoding: chunked",
    "Connection: close",
    "",
    `${opening.length.toString(16)}\r\n${opening}\r\n`
  ].join("\r\n")
  return [head, ...chunks, "0\r\n\r\n"]
}

// -----------------------------------------------------------------------------
// the cases
// -----------------------------------------------------------------------------

interface Case {
  readonly name: string
  readonly method?: "GET" | "POST" | "PUT" | "DELETE"
  /** Defaults to `POST /api/v1/orders`; `{sentinel}` is the sentinel order's id. */
  readonly path?: string
  /** Who sends it: alice (default), an admin, or nobody. */
  readonly as?: "alice" | "admin"
  readonly body?: string | Uint8Array
  /** The whole request as raw HTTP, given the sender's token, instead of `method`, `path` and `body`. */
  readonly raw?: (bearer: string) => ReadonlyArray<string>
  /** Defaults to application/json when there is a body; `null` sends none. */
  readonly contentType?: string | null
  readonly headers?: Readonly<Record<string, string>>
  readonly status: number
  readonly code: string
  /** A known bug in the service: the case is expected to fail until it is fixed. */
  readonly bug?: string
  readonly check?: (reply: Reply) => void
}

const cancel = "/api/v1/orders/{sentinel}/cancel"
const stock = `/api/v1/products/${stocked}/stock`
const events = "/api/v1/events"
/** The valid order as a raw POST, with `headers` after the authorization and content type. */
const rawOrder = (headers: ReadonlyArray<string>) => (bearer: string) => [
  [
    "POST /api/v1/orders HTTP/1.1",
    "Host: localhost",
    `Authorization: Bearer ${bearer}`,
    "Content-Type: application/json",
    ...headers,
    "",
    json(order)
  ].join("\r\n")
]

const malformed = { status: 400, code: "MalformedJson" } as const
const invalid = { status: 400, code: "HttpApiDecodeError" } as const
const unsupported = { status: 415, code: "UnsupportedMediaType" } as const
const tooLarge = { status: 413, code: "PayloadTooLarge" } as const
const notFound = { status: 404, code: "RouteNotFound" } as const

const cases: ReadonlyArray<Case> = [
  // JSON that does not parse
  { name: "broken JSON", body: "{\"customer_id\": }", ...malformed },
  { name: "truncated JSON", body: json(order).slice(0, 40), ...malformed },
  { name: "trailing garbage after the JSON", body: `${json(order)} x`, ...malformed },
  { name: "single-quoted JSON", body: "{'customer_id': 'x'}", ...malformed },
  { name: "a comment in the JSON", body: `{/* note */${json(order).slice(1)}`, ...malformed },
  { name: "an empty body", body: "", ...malformed },
  { name: "a body of whitespace", body: " \n\t ", ...malformed },
  { name: "NaN as a number", method: "PUT", path: stock, as: "admin", body: "{\"available\": NaN}", ...malformed },
  { name: "a cancel body truncated", path: cancel, body: "{\"reason\": \"chan", ...malformed },
  // Well-formed, but formatting the rejected value overflowed the stack (500).
  { name: "arrays nested 3000 deep", body: "[".repeat(3000) + "]".repeat(3000), ...malformed },
  {
    name: "objects nested 3000 deep in a stock PUT",
    method: "PUT",
    path: stock,
    as: "admin",
    body: "{\"available\":" + "{\"a\":".repeat(3000) + "1" + "}".repeat(3001),
    ...malformed
  },
  {
    name: "a cancel reason nested 10000 deep",
    path: cancel,
    body: "{\"reason\":" + "[".repeat(10000) + "]".repeat(10000) + "}",
    ...malformed
  },
  // JSON that is not the expected object
  { name: "a null body", body: "null", ...invalid },
  { name: "an array instead of an object", body: "[]", ...invalid },
  { name: "the order wrapped in an array", body: json([order]), ...invalid },
  { name: "a string body", body: "\"order\"", ...invalid },
  { name: "a number body", body: "42", ...invalid },
  { name: "a null stock body", method: "PUT", path: stock, as: "admin", body: "null", ...invalid },
  // wrong types, missing fields, out of range
  { name: "customer_id as a number", body: withOrder({ customer_id: 42 }), ...invalid },
  { name: "customer_id not a UUID", body: withOrder({ customer_id: "customer-1" }), ...invalid },
  { name: "items as an object", body: withOrder({ items: { product_id: product, quantity: 1 } }), ...invalid },
  { name: "items empty", body: withOrder({ items: [] }), ...invalid },
  { name: "items null", body: withOrder({ items: null }), ...invalid },
  { name: "quantity as a string", body: withLine({ quantity: "1" }), ...invalid },
  { name: "quantity 1e400 (infinite)", body: quantityText("1e400"), ...invalid },
  { name: "quantity 2**60", body: quantityText(String(2 ** 60)), ...invalid },
  { name: "quantity 0", body: withLine({ quantity: 0 }), ...invalid },
  { name: "quantity -1", body: withLine({ quantity: -1 }), ...invalid },
  { name: "quantity 1.5", body: withLine({ quantity: 1.5 }), ...invalid },
  { name: "quantity 1001", body: withLine({ quantity: 1001 }), ...invalid },
  {
    name: "1001 lines",
    body: withOrder({
      items: Array.from({ length: 1001 }, (_, i) => ({ product_id: `${product}-${i}`, quantity: 1 }))
    }),
    ...invalid
  },
  { name: "product_id empty", body: withLine({ product_id: "" }), ...invalid },
  { name: "product_id of 101 characters", body: withLine({ product_id: "p".repeat(101) }), ...invalid },
  {
    name: "the same product on two lines",
    body: withOrder({ items: [order.items[0], order.items[0]] }),
    status: 400,
    code: "CommandValidationError"
  },
  { name: "customer_id missing", body: withoutKey(order, "customer_id"), ...invalid },
  { name: "shipping_address missing", body: withoutKey(order, "shipping_address"), ...invalid },
  {
    name: "postal_code missing",
    body: withOrder({ shipping_address: JSON.parse(withoutKey(address, "postal_code")) }),
    ...invalid
  },
  { name: "country in lower case", body: withAddress({ country: "us" }), ...invalid },
  {
    name: "a country code ISO does not assign (XX)",
    body: withAddress({ country: "XX" }),
    ...invalid,
    check: (reply) => expect(reply.text).toContain("\\\"XX\\\" is not an assigned ISO 3166-1 alpha-2 country code")
  },
  { name: "a withdrawn country code (YU)", body: withAddress({ country: "YU" }), ...invalid },
  { name: "line1 empty", body: withAddress({ line1: "" }), ...invalid },
  { name: "line1 of 201 characters", body: withAddress({ line1: "l".repeat(201) }), ...invalid },
  { name: "shipping_address as a string", body: withOrder({ shipping_address: "1 Main St" }), ...invalid },
  { name: "available -1", method: "PUT", path: stock, as: "admin", body: json({ available: -1 }), ...invalid },
  {
    name: "available as a string",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: "5" }),
    ...invalid
  },
  { name: "available 2**31", method: "PUT", path: stock, as: "admin", body: json({ available: 2 ** 31 }), ...invalid },
  { name: "available 1e400", method: "PUT", path: stock, as: "admin", body: "{\"available\":1e400}", ...invalid },
  { name: "available missing", method: "PUT", path: stock, as: "admin", body: "{}", ...invalid },
  { name: "reason empty", path: cancel, body: json({ reason: "" }), ...invalid },
  { name: "reason of 501 characters", path: cancel, body: json({ reason: "r".repeat(501) }), ...invalid },
  { name: "reason as a number", path: cancel, body: json({ reason: 1 }), ...invalid },
  { name: "reason missing", path: cancel, body: "{}", ...invalid },
  // unknown fields, at each level
  { name: "an unknown top-level field", body: withOrder({ discount: 100 }), ...invalid },
  { name: "an unknown field in a line", body: withLine({ price: 0 }), ...invalid },
  { name: "an unknown field in shipping_address", body: withAddress({ line3: "x" }), ...invalid },
  {
    name: "camelCase names instead of snake_case",
    body: json({ customerId, items: [{ productId: product, quantity: 1 }], shippingAddress: address }),
    ...invalid
  },
  { name: "an unknown field in a cancel body", path: cancel, body: json({ reason: "x", force: true }), ...invalid },
  {
    name: "an unknown field in a stock body",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: 1, reserved: 0 }),
    ...invalid
  },
  // prototype pollution
  { name: "__proto__ at the top", body: `{"__proto__":{"isAdmin":true},${json(order).slice(1)}`, ...invalid },
  { name: "constructor at the top", body: `{"constructor":{"prototype":{"x":1}},${json(order).slice(1)}`, ...invalid },
  {
    name: "__proto__ in a line",
    body: json(order).replace("{\"product_id\"", "{\"__proto__\":{\"quantity\":1000},\"product_id\""),
    ...invalid
  },
  {
    name: "constructor.prototype in shipping_address",
    body: json(order).replace("{\"line1\"", "{\"constructor\":{\"prototype\":{\"x\":1}},\"line1\""),
    ...invalid
  },
  {
    name: "__proto__ in a stock body",
    method: "PUT",
    path: stock,
    as: "admin",
    body: "{\"available\":1,\"__proto__\":{\"available\":5}}",
    ...invalid
  },
  // duplicate keys
  {
    name: "a duplicate key (customer_id twice)",
    body: json(orderBody([{ product_id: unstocked, quantity: 1 }])).replace(
      "{\"customer_id\"",
      "{\"customer_id\":\"not-a-uuid\",\"customer_id\""
    ),
    // As JSON.parse does (and the README says): the last of duplicate keys wins, here a valid
    // customer_id, so the command runs and finds no stock.
    status: 409,
    code: "InsufficientInventory"
  },
  // unicode oddities in string fields
  { name: "NUL in line1", body: withAddress({ line1: "1 Main\u0000St" }), ...invalid },
  { name: "NUL in product_id", body: withLine({ product_id: `${product}\u0000` }), ...invalid },
  { name: "NUL in a cancel reason", path: cancel, body: json({ reason: "a\u0000b" }), ...invalid },
  {
    name: "NUL in a product path",
    method: "GET",
    path: "/api/v1/products/sku%00x/stock",
    ...invalid
  },
  {
    name: "a lone surrogate \\ud800 in line1",
    body: withAddress({ line1: "a\ud800b" }),
    ...invalid
  },
  { name: "a lone surrogate \\udc00 in city", body: withAddress({ city: "\udc00" }), ...invalid },
  { name: "a zero-width space inside country", body: withAddress({ country: "U\u200BS" }), ...invalid },
  { name: "an RTL override in customer_id", body: withOrder({ customer_id: `\u202E${customerId}` }), ...invalid },
  {
    name: "a zero-width space before an order id in the path",
    method: "GET",
    path: `/api/v1/orders/%E2%80%8B${unknownOrderId}`,
    ...invalid
  },
  {
    name: "a lone surrogate (as UTF-8 bytes) in a product path",
    method: "GET",
    path: "/api/v1/products/%ED%A0%80/stock",
    status: 404,
    code: "RouteNotFound"
  },
  // content types
  { name: "text/plain", body: json(order), contentType: "text/plain", ...unsupported },
  { name: "a form", body: "customer_id=x&items=y", contentType: "application/x-www-form-urlencoded", ...unsupported },
  {
    name: "multipart/form-data",
    body: "--b\r\n\r\nx\r\n--b--",
    contentType: "multipart/form-data; boundary=b",
    ...unsupported
  },
  { name: "application/xml", body: "<order/>", contentType: "application/xml", ...unsupported },
  // JSON by its suffix, but not a body this API reads (and once hung the request).
  {
    name: "application/merge-patch+json",
    body: json(order),
    contentType: "application/merge-patch+json",
    ...unsupported
  },
  {
    name: "application/vnd.api+json on a stock PUT",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: 5 }),
    contentType: "application/vnd.api+json",
    ...unsupported
  },
  {
    name: "a gzip-compressed body",
    body: gzipSync(json(order)),
    headers: { "content-encoding": "gzip" },
    ...unsupported,
    check: (reply) => {
      expect(reply.body.contentEncoding).toBe("gzip")
      expect(reply.body.detail).toBe("Content-Encoding gzip is not supported; send the body uncompressed")
    }
  },
  {
    name: "Content-Encoding: identity is no encoding (wrong types: 400)",
    body: withOrder({ customer_id: 42 }),
    headers: { "content-encoding": "identity" },
    ...invalid
  },
  { name: "no content type", body: new TextEncoder().encode(json(order)), contentType: null, ...unsupported },
  {
    // No body and no content type is not a wrong media type but a missing body.
    name: "no body and no content type on a stock PUT",
    method: "PUT",
    path: stock,
    as: "admin",
    body: new Uint8Array(),
    contentType: null,
    ...invalid
  },
  // JSON is UTF-8: other bytes were decoded to U+FFFD and stored.
  { name: "Latin-1 bytes in the body", body: Buffer.from(withAddress({ line1: "Café" }), "latin1"), ...malformed },
  {
    name: "Latin-1 bytes in a body labelled charset=latin1",
    body: Buffer.from(withAddress({ line1: "Café" }), "latin1"),
    contentType: "application/json; charset=latin1",
    ...malformed
  },
  {
    name: "application/json; charset=latin1 is read as JSON (wrong types: 400, not 415)",
    body: withOrder({ customer_id: 42 }),
    contentType: "application/json; charset=latin1",
    ...invalid
  },
  // sizes
  {
    // The refused value is quoted in the detail and in each issue: clipped, not echoed three times over.
    name: "a string of a million characters where a number goes",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: "x".repeat(1_000_000) }),
    ...invalid,
    check: (reply) => {
      expect(reply.text.length).toBeLessThan(16 * 1024)
      expect(reply.body.detail).toContain("more characters)")
    }
  },
  {
    // Clipped between characters: never half a surrogate pair, which no strict JSON reader takes.
    name: "emoji where a number goes, clipped at a pair's first half",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: `a${"\u{1F600}".repeat(600)}` }),
    ...invalid,
    check: (reply) => {
      const lone = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/
      expect(reply.body.detail).toContain("more characters)")
      expect(lone.test(reply.body.detail)).toBe(false)
      expect(reply.body.issues.some((issue: { message: string }) => lone.test(issue.message))).toBe(false)
    }
  },
  { name: "a 10 MB body", body: "x".repeat(10 * 1024 * 1024), ...tooLarge },
  { name: "valid JSON one byte over 1 MiB", body: json({ pad: "x".repeat(1024 * 1024 - 9) }), ...tooLarge },
  {
    name: "2 MB chunked without a Content-Length",
    raw: chunkedRequest(2 * 1024 * 1024),
    ...tooLarge
  },
  {
    // Answered once the body passes the limit, while it still arrives: the
    // client (which stops sending once answered) gets its 413, not the reset
    // a body drained to the end of its bound would get.
    name: "40 MB chunked without a Content-Length",
    raw: chunkedRequest(40 * 1024 * 1024),
    ...tooLarge
  },
  // headers
  { name: "an empty Idempotency-Key", body: json(order), headers: { "idempotency-key": "" }, ...invalid },
  {
    name: "two Idempotency-Key lines (Node would join them as one key, \"a, b\")",
    raw: rawOrder([
      "Idempotency-Key: repeated-a",
      "Idempotency-Key: repeated-b",
      `Content-Length: ${Buffer.byteLength(json(order))}`,
      "Connection: close"
    ]),
    status: 400,
    code: "RepeatedHeader"
  },
  // refused by Node's HTTP parser, before any route
  {
    name: "a request line that is not HTTP",
    raw: () => ["GARBAGE\r\n\r\n"],
    status: 400,
    code: "MalformedRequest"
  },
  {
    name: "a Content-Length that is not a number",
    raw: rawOrder(["Content-Length: abc"]),
    status: 400,
    code: "MalformedRequest"
  },
  {
    name: "both Content-Length and Transfer-Encoding",
    raw: rawOrder([`Content-Length: ${Buffer.byteLength(json(order))}`, "Transfer-Encoding: chunked"]),
    status: 400,
    code: "MalformedRequest"
  },
  {
    name: "an Idempotency-Key of 256 characters",
    body: json(order),
    headers: { "idempotency-key": "k".repeat(256) },
    ...invalid
  },
  {
    name: "an Idempotency-Key of 8 KB",
    body: json(order),
    headers: { "idempotency-key": "k".repeat(8192) },
    ...invalid
  },
  {
    name: "an Idempotency-Key of 256 characters on a stock PUT",
    method: "PUT",
    path: stock,
    as: "admin",
    body: json({ available: 1 }),
    headers: { "idempotency-key": "k".repeat(256) },
    ...invalid
  },
  {
    name: "a weak If-Match",
    path: cancel,
    body: json({ reason: "x" }),
    headers: { "if-match": "W/\"1\"" },
    ...invalid
  },
  { name: "an unquoted If-Match", path: cancel, body: json({ reason: "x" }), headers: { "if-match": "1" }, ...invalid },
  // Not the ETag of version 1 (it once matched it).
  {
    name: "an If-Match of \"01\"",
    path: cancel,
    body: json({ reason: "x" }),
    headers: { "if-match": "\"01\"" },
    ...invalid
  },
  {
    name: "an If-Match list",
    path: cancel,
    body: json({ reason: "x" }),
    headers: { "if-match": "\"1\", \"2\"" },
    ...invalid
  },
  {
    name: "an If-Match of 8 KB",
    path: cancel,
    body: json({ reason: "x" }),
    headers: { "if-match": `"${"9".repeat(8192)}"` },
    ...invalid
  },
  {
    name: "an X-Correlation-ID of 8 KB is ignored",
    body: "{",
    headers: { "x-correlation-id": "c".repeat(8192) },
    ...malformed,
    check: (reply) => expect(reply.headers.get("x-correlation-id")).toMatch(uuidPattern)
  },
  {
    name: "an Authorization of 8 KB",
    body: json(order),
    headers: { authorization: `Bearer ${"a".repeat(8192)}` },
    status: 401,
    code: "Unauthorized"
  },
  // path parameters
  { name: "a non-UUID order id", method: "GET", path: "/api/v1/orders/42", ...invalid },
  {
    name: "a non-UUID order id to cancel",
    path: "/api/v1/orders/not-a-uuid/cancel",
    body: json({ reason: "x" }),
    ...invalid
  },
  { name: "an order id with a suffix", method: "GET", path: `/api/v1/orders/${unknownOrderId}0`, ...invalid },
  { name: "an SQL-looking order id", method: "GET", path: "/api/v1/orders/'%20OR%201=1--", ...invalid },
  // The router is configured for long (percent-encoded) path parameters, so
  // a product id over 100 characters reaches the schema and gets its message.
  {
    name: "a product id of 101 characters",
    method: "PUT",
    path: `/api/v1/products/${"p".repeat(101)}/stock`,
    as: "admin",
    body: json({ available: 1 }),
    ...invalid,
    check: (reply) => expect(reply.text).toContain("must be 1 to 100 characters long")
  },
  {
    name: "a product id of 101 emoji",
    method: "GET",
    path: `/api/v1/products/${encodeURIComponent("🍕".repeat(101))}/stock`,
    ...invalid
  },
  // Past the router's old limit on a parameter (1500), it was a 404.
  {
    name: "a product id of 1501 characters",
    method: "GET",
    path: `/api/v1/products/${"p".repeat(1501)}/stock`,
    ...invalid
  },
  {
    name: "a product id of 1501 characters in a stock PUT",
    method: "PUT",
    path: `/api/v1/products/${"p".repeat(1501)}/stock`,
    as: "admin",
    body: json({ available: 1 }),
    ...invalid
  },
  { name: "an order id of 1501 characters", method: "GET", path: `/api/v1/orders/${"a".repeat(1501)}`, ...invalid },
  // Spellings of an API path: the router matched them, the body checks did
  // not run, and broken JSON was a 500.
  { name: "a doubled slash before api, broken JSON", path: "//api/v1/orders", body: "{", ...notFound },
  { name: "api in capitals, broken JSON", path: "/API/v1/orders", body: "{", ...notFound },
  { name: "a doubled slash inside the path", path: "/api/v1//orders", body: json(order), ...notFound },
  {
    name: "an absolute-form target, broken JSON",
    raw: (bearer) => [absoluteFormPost("/api/v1/orders", bearer, "{")],
    ...malformed
  },
  {
    name: "an absolute-form target, a body over the limit",
    raw: (
      bearer
    ) => [absoluteFormPost("/api/v1/orders", bearer, json({ ...order, padding: "x".repeat(2 * 1024 * 1024) }))],
    ...tooLarge
  },
  // query parameters
  { name: "limit=0", method: "GET", path: `${events}?limit=0`, as: "admin", ...invalid },
  { name: "limit=1001", method: "GET", path: `${events}?limit=1001`, as: "admin", ...invalid },
  { name: "after=-1", method: "GET", path: `${events}?after=-1`, as: "admin", ...invalid },
  { name: "after=abc", method: "GET", path: `${events}?after=abc`, as: "admin", ...invalid },
  { name: "limit=1.5", method: "GET", path: `${events}?limit=1.5`, as: "admin", ...invalid },
  { name: "limit= (empty)", method: "GET", path: `${events}?limit=`, as: "admin", ...invalid },
  { name: "after=1e400", method: "GET", path: `${events}?after=1e400`, as: "admin", ...invalid },
  // Numbers are written in decimal digits: no hex, exponents, signs or spaces.
  { name: "limit=0x10", method: "GET", path: `${events}?limit=0x10`, as: "admin", ...invalid },
  { name: "limit=1e2", method: "GET", path: `${events}?limit=1e2`, as: "admin", ...invalid },
  { name: "limit=+5", method: "GET", path: `${events}?limit=%2B5`, as: "admin", ...invalid },
  { name: "limit=' 5'", method: "GET", path: `${events}?limit=%205`, as: "admin", ...invalid },
  { name: "after=0b1", method: "GET", path: `${events}?after=0b1`, as: "admin", ...invalid },
  { name: "limit given twice", method: "GET", path: `${events}?limit=1&limit=2`, as: "admin", ...invalid }
]

// -----------------------------------------------------------------------------
// the suite
// -----------------------------------------------------------------------------

interface Snapshot {
  readonly stock: Record<string, number>
  readonly feedEnd: number
  readonly sentinel: unknown
}

const snapshotStock = (userToken: string) =>
  Effect.map(
    Effect.forEach(products, (productId) => Effect.map(stockOf(productId, userToken), (n) => [productId, n] as const)),
    Object.fromEntries
  )

describe(`malformed requests (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    let sentinel = ""
    let before: Snapshot | undefined

    it.effect("setup: stock, a sentinel order to aim cancels at, and the state before", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        yield* setStock(product, 100, admin)
        yield* setStock(stocked, 50, admin)
        yield* setStock(sentinelProduct, 1, admin)
        const created = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: orderBody([{ product_id: sentinelProduct, quantity: 1 }])
        })
        expectJson(created, 201)
        sentinel = created.body.order_id
        const feed = yield* waitForFeed(admin, (events) => events.some((event) => event.aggregate_id === sentinel))
        const read = yield* request("GET", `/api/v1/orders/${sentinel}`, { token: alice })
        expectJson(read, 200)
        before = { stock: yield* snapshotStock(alice), feedEnd: feed[feed.length - 1]!.position, sentinel: read.body }
        expect(before.stock).toEqual({ [product]: 100, [stocked]: 50, [sentinelProduct]: 0, [unstocked]: 0 })
      }))

    it("has at least 40 cases", () => {
      expect(cases.length).toBeGreaterThanOrEqual(40)
      expect(new Set(cases.map((testCase) => testCase.name)).size).toBe(cases.length)
    })

    for (const testCase of cases) {
      const test = testCase.bug === undefined ? it.effect : it.effect.fails
      const method = testCase.method ?? "POST"
      const path = testCase.path ?? "/api/v1/orders"
      const title = `${testCase.name}: ${testCase.status} ${testCase.code}${
        testCase.bug === undefined ? "" : ` (known bug: ${testCase.bug})`
      }`
      test(title, () =>
        Effect.gen(function*() {
          const tokens = yield* users
          const bearer = testCase.as === "admin" ? tokens.admin : tokens.alice
          const reply = testCase.raw === undefined
            ? yield* request(method, path.replace("{sentinel}", sentinel), {
              token: bearer,
              ...(testCase.body === undefined ? {} : { body: testCase.body }),
              ...(testCase.contentType === undefined ? {} : { contentType: testCase.contentType }),
              ...(testCase.headers === undefined ? {} : { headers: testCase.headers })
            })
            : parseRawReply(yield* rawRequest(testCase.raw(bearer)))
          expect(reply.status, reply.text.slice(0, 300)).toBeGreaterThanOrEqual(400)
          expect(reply.status, reply.text.slice(0, 300)).toBeLessThan(500)
          expectProblem(reply, testCase.status, testCase.code)
          expect(reply.headers.get("idempotent-replayed")).toBeNull()
          testCase.check?.(reply)
        }))
    }

    it.effect("a header block over Node's 16 KB limit is refused with 431, a problem like any other", () =>
      Effect.gen(function*() {
        const { alice } = yield* users
        const reply = yield* request("POST", "/api/v1/orders", {
          token: alice,
          json: order,
          headers: { "x-padding": "p".repeat(20 * 1024) }
        })
        // Node's HTTP parser refuses it before any route runs; the service
        // answers for it.
        expectProblem(reply, 431, "MalformedRequest")
        expect(reply.body.reason).toBe("HPE_HEADER_OVERFLOW")
      }))

    it.effect("nothing changed: stock, the sentinel order, and no event but the sentinel's cancellation", () =>
      Effect.gen(function*() {
        const { admin, alice } = yield* users
        expect(before, "the setup test ran first").toBeDefined()
        expect(yield* snapshotStock(alice)).toEqual(before!.stock)
        const read = yield* request("GET", `/api/v1/orders/${sentinel}`, { token: alice })
        expect(read.body).toEqual(before!.sentinel)

        // Events reach the feed in commit order: once the sentinel's
        // cancellation is there, any event a bad request had caused is too.
        const cancelled = yield* request("POST", `/api/v1/orders/${sentinel}/cancel`, {
          token: alice,
          json: { reason: "end of suite" }
        })
        expectJson(cancelled, 200)
        const after = yield* waitForFeed(
          admin,
          (events) => events.some((event) => event.type === "OrderCancelled" && event.aggregate_id === sentinel),
          { after: before!.feedEnd }
        )
        expect(after.map((event) => [event.type, event.aggregate_id])).toEqual([["OrderCancelled", sentinel]])
      }))
  })
})
