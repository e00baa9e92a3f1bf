/**
 * Helpers for the end-to-end tests of the order service over real HTTP: one
 * service per test file (as a layer), requests with a bounded time, problem
 * assertions, the events feed, and tokens crafted by hand.
 */
import { expect } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Jose from "jose"
import * as Net from "node:net"
import * as Service from "../support/Service.js"

/** The running service of a test file. */
export class TestService extends Context.Tag("test/server/TestService")<TestService, Service.RunningService>() {}

/** Starts the service for the whole file (as `it.layer`), stops it at the end. */
export const layer = (env: Record<string, string> = {}): Layer.Layer<TestService> =>
  Layer.scoped(TestService, Service.start(env)).pipe(Layer.orDie)

/** Options for `it.layer` of a service: build time, and the live clock. */
export const layerOptions = { timeout: Duration.minutes(2), excludeTestServices: true } as const

// -----------------------------------------------------------------------------
// fixtures
// -----------------------------------------------------------------------------

export const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"
export const unknownOrderId = "0b6a1c6e-2f4e-4d5b-9a3c-7e8f9a0b1c2d"

export const address = { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" } as const

export interface Line {
  readonly product_id: string
  readonly quantity: number
}

/** A valid `POST /api/v1/orders` body. */
export const orderBody = (items: ReadonlyArray<Line>) => ({ customer_id: customerId, items, shipping_address: address })

export const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

// -----------------------------------------------------------------------------
// requests
// -----------------------------------------------------------------------------

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  /** The parsed body, or `undefined` when it is not JSON. */
  readonly body: any
}

export interface RequestOptions {
  /** A bearer token for `Authorization`. */
  readonly token?: string
  /** A value serialized with `JSON.stringify`, sent as `application/json`. */
  readonly json?: unknown
  /** A body sent as is (`application/json` unless `contentType` says otherwise). */
  readonly body?: string | Uint8Array | ReadableStream<Uint8Array>
  /** The content type of the body; `null` sends none. */
  readonly contentType?: string | null
  readonly headers?: Readonly<Record<string, string>>
}

const requestTimeout = 30_000

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** One request to `url`, bounded in time. */
export const requestUrl = (method: string, url: string, options: RequestOptions = {}) =>
  Effect.promise(async (): Promise<Reply> => {
    const headers: Record<string, string> = {}
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`
    const body = options.json === undefined ? options.body : JSON.stringify(options.json)
    if (body !== undefined && options.contentType !== null) {
      headers["content-type"] = options.contentType ?? "application/json"
    }
    Object.assign(headers, options.headers)
    const response = await fetch(url, {
      method,
      headers,
      signal: AbortSignal.timeout(requestTimeout),
      ...(body === undefined ? {} : { body }),
      ...(body instanceof ReadableStream ? { duplex: "half" } : {})
    } as RequestInit)
    const text = await response.text()
    return { status: response.status, headers: response.headers, text, body: parse(text) }
  })

/** One request to the service of the test file, bounded in time. */
export const request = (method: string, path: string, options: RequestOptions = {}) =>
  Effect.flatMap(TestService, (service) => requestUrl(method, `${service.baseUrl}${path}`, options))

/**
 * Sends bytes as they are over a socket (for what `fetch` refuses to send,
 * such as CR or LF in a header) and returns everything the server answered.
 * Given pieces, it writes them one after the other and stops writing once
 * the server answers (as a client that reads while it uploads would), so an
 * early answer is not lost to the reset of a connection closed mid-upload.
 * It then half-closes its side, unless `halfClose` is false: Node aborts a
 * request whose client half-closed (`httpAllowHalfOpen` is false), which
 * races with slower answers; without it, the server's close ends the read.
 */
export const rawRequest = (
  text: string | ReadonlyArray<string>,
  options: { readonly halfClose?: boolean } = {}
) =>
  Effect.flatMap(TestService, (service) =>
    Effect.async<string>((resume) => {
      const pieces = typeof text === "string" ? [text] : [...text]
      let answer = ""
      const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1", () => {
        const next = () => {
          const piece = pieces.shift()
          if (answer.length > 0 || piece === undefined) {
            if (options.halfClose !== false) socket.end()
            return
          }
          socket.write(piece, "latin1", (error) => error === undefined || error === null ? next() : undefined)
        }
        next()
      })
      const timer = setTimeout(() => socket.destroy(), 10_000)
      socket.on("data", (chunk: Buffer) => {
        answer += chunk.toString("latin1")
      })
      socket.on("error", () => {})
      socket.on("close", () => {
        clearTimeout(timer)
        resume(Effect.succeed(answer))
      })
      return Effect.sync(() => socket.destroy())
    }))

/**
 * `POST http://localhost{path}` in absolute form, as raw HTTP for
 * `rawRequest` (which writes latin1: the body's UTF-8 bytes, one character
 * each).
 */
export const absoluteFormPost = (path: string, bearer: string, body: string): string => {
  const bytes = Buffer.from(body, "utf8")
  return [
    `POST http://localhost${path} HTTP/1.1`,
    "Host: localhost",
    `Authorization: Bearer ${bearer}`,
    "Content-Type: application/json",
    `Content-Length: ${bytes.length}`,
    "Connection: close",
    "",
    bytes.toString("latin1")
  ].join("\r\n")
}

/** A raw HTTP/1.1 answer as a `Reply` (headers joined as `Headers`, body de-chunked). */
export const parseRawReply = (answer: string): Reply => {
  const split = answer.indexOf("\r\n\r\n")
  const head = split === -1 ? answer : answer.slice(0, split)
  let body = split === -1 ? "" : answer.slice(split + 4)
  const [statusLine = "", ...lines] = head.split("\r\n")
  const headers = new Headers()
  for (const line of lines) {
    const colon = line.indexOf(":")
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim())
  }
  if (headers.get("transfer-encoding") === "chunked") {
    let decoded = ""
    for (;;) {
      const end = body.indexOf("\r\n")
      const size = parseInt(body.slice(0, end), 16)
      if (end === -1 || !(size > 0)) break
      decoded += body.slice(end + 2, end + 2 + size)
      body = body.slice(end + 2 + size + 2)
    }
    body = decoded
  }
  const text = Buffer.from(body, "latin1").toString("utf8")
  return { status: Number(statusLine.split(" ")[1]), headers, text, body: parse(text) }
}

/** A token for `sub`, signed with the service's secret. */
export const token = (sub: string, options: { readonly admin?: boolean } = {}) =>
  Effect.flatMap(TestService, (service) => Effect.promise(() => service.token(sub, options)))

/** Tokens of the usual cast: an admin (`root`) and two users, `alice` and `bob`. */
export const users = Effect.all({
  admin: token("root", { admin: true }),
  alice: token("alice"),
  bob: token("bob")
})

// -----------------------------------------------------------------------------
// assertions
// -----------------------------------------------------------------------------

// What a stack trace, a file position or SQL looks like in a response body.
const leaks: ReadonlyArray<RegExp> = [
  /^\s*at\s/m,
  /\bat\s+\S+\s+\(.*:\d+:\d+\)/,
  /\.ts:/,
  /\.m?js:\d+/,
  /node_modules/,
  /SqlError/,
  /\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|ON\s+CONFLICT)\b/i,
  /jsonb|sqlstate|pg_|relation "|syntax error at|invalid byte sequence|unsupported Unicode escape|invalid input syntax/i
]

/** No stack trace, file position or SQL in a body. */
export const expectNoLeak = (text: string) => {
  for (const leak of leaks) expect(text, `response leaks ${leak}`).not.toMatch(leak)
}

/**
 * A problem+json response with this status (and code): `type`, `title`,
 * `status`, `detail` and `code`, and nothing that leaks internals.
 */
export const expectProblem = (reply: Reply, status: number, code?: string) => {
  expect(reply.status, reply.text.slice(0, 500)).toBe(status)
  expect(reply.headers.get("content-type")).toMatch(/^application\/problem\+json\b/)
  expect(reply.body).toMatchObject({
    type: expect.any(String),
    title: expect.any(String),
    status,
    detail: expect.any(String),
    code: code ?? expect.any(String)
  })
  expect(reply.body.type).toBe(`urn:effect-command-bus:problem:${reply.body.code}`)
  expect(reply.body.title.length).toBeGreaterThan(0)
  expectNoLeak(reply.text)
}

/** A successful JSON response with this status. */
export const expectJson = (reply: Reply, status: number) => {
  expect(reply.status, reply.text.slice(0, 500)).toBe(status)
  expect(reply.headers.get("content-type")).toMatch(/^application\/json\b/)
}

// -----------------------------------------------------------------------------
// events feed
// -----------------------------------------------------------------------------

export interface FeedEvent {
  readonly position: number
  readonly event_id: string
  readonly type: string
  readonly aggregate_type: string
  readonly aggregate_id: string
  readonly aggregate_version: number
  readonly occurred_at: string
  readonly correlation_id: string
  readonly causation_id: string
  readonly payload: any
}

/** Every event of the feed after `after`, following `next` page by page. */
export const readFeed = (adminToken: string, after = 0, limit = 1000) =>
  Effect.gen(function*() {
    const events: Array<FeedEvent> = []
    let cursor = after
    for (;;) {
      const page = yield* request("GET", `/api/v1/events?after=${cursor}&limit=${limit}`, { token: adminToken })
      expectJson(page, 200)
      events.push(...page.body.events)
      if (page.body.events.length === 0) {
        expect(page.body.next).toBe(cursor)
        return events
      }
      cursor = page.body.next
    }
  })

/**
 * Reads the feed until `until` holds for its events: events are published
 * to the feed by the outbox relay shortly after their command committed.
 */
export const waitForFeed = (
  adminToken: string,
  until: (events: ReadonlyArray<FeedEvent>) => boolean,
  options: { readonly after?: number; readonly timeout?: Duration.DurationInput } = {}
) =>
  Effect.gen(function*() {
    const deadline = Date.now() + Duration.toMillis(Duration.decode(options.timeout ?? "15 seconds"))
    for (;;) {
      const events = yield* readFeed(adminToken, options.after ?? 0)
      if (until(events)) return events
      if (Date.now() > deadline) {
        return yield* Effect.dieMessage(`the events feed did not reach the expected state: ${events.length} events`)
      }
      yield* Effect.sleep("100 millis")
    }
  })

/** The highest position of the feed now (0 when empty). */
export const feedEnd = (adminToken: string) =>
  Effect.map(readFeed(adminToken), (events) => events.length === 0 ? 0 : events[events.length - 1]!.position)

/** A product's stock, read as an authenticated user. */
export const stockOf = (productId: string, userToken: string) =>
  Effect.map(
    request("GET", `/api/v1/products/${encodeURIComponent(productId)}/stock`, { token: userToken }),
    (reply) => {
      expectJson(reply, 200)
      return reply.body.available as number
    }
  )

/** Sets a product's stock as an admin, and checks it was set. */
export const setStock = (productId: string, available: number, adminToken: string) =>
  Effect.map(
    request("PUT", `/api/v1/products/${encodeURIComponent(productId)}/stock`, {
      token: adminToken,
      json: { available }
    }),
    (reply) => {
      expectJson(reply, 200)
      expect(reply.body).toEqual({ product_id: productId, available })
    }
  )

/** Places an order, and checks it was created. Returns its id. */
export const placeOrder = (userToken: string, items: ReadonlyArray<Line>) =>
  Effect.map(request("POST", "/api/v1/orders", { token: userToken, json: orderBody(items) }), (reply) => {
    expectJson(reply, 201)
    return reply.body.order_id as string
  })

// -----------------------------------------------------------------------------
// tokens crafted by hand
// -----------------------------------------------------------------------------

const segment = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

/** An unsecured JWT (`alg: none`), built by hand. */
export const unsecuredToken = (claims: Record<string, unknown>, signature = "") =>
  `${segment({ alg: "none", typ: "JWT" })}.${segment(claims)}.${signature}`

/** A JWT signed with any HMAC secret and algorithm. */
export const signToken = (
  secret: string,
  claims: Record<string, unknown>,
  options: { readonly alg?: string; readonly expiresAt?: number | null; readonly notBefore?: number } = {}
) =>
  Effect.promise(() => {
    let jwt = new Jose.SignJWT(claims).setProtectedHeader({ alg: options.alg ?? "HS256", typ: "JWT" }).setIssuedAt()
    if (options.expiresAt !== null) {
      jwt = jwt.setExpirationTime(options.expiresAt ?? Math.floor(Date.now() / 1000) + 3600)
    }
    if (options.notBefore !== undefined) jwt = jwt.setNotBefore(options.notBefore)
    return jwt.sign(new TextEncoder().encode(secret))
  })

/** The service's JWT secret (set by the test environment). */
export const serviceSecret = Effect.map(TestService, (service) => service.env.JWT_SECRET!)
