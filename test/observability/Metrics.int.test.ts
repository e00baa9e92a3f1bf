/**
 * `GET /metrics` end to end: who may scrape it, that it is Prometheus text,
 * that requests move the counters they should (commands by type and
 * outcome, HTTP requests by route template and status, idempotency replays
 * and mismatches), the scrape-time gauges (outbox lag, database pool), and
 * the unauthenticated listener on `METRICS_PORT`.
 *
 * The metric registry is the process's, so each test compares two scrapes.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { randomUUID } from "node:crypto"
import * as Net from "node:net"
import { kind } from "../support/Database.js"
import { type RunningService, start } from "../support/Service.js"
import { orderBody, request } from "./Service.js"

class TestService extends Context.Tag("test/observability/Metrics/TestService")<TestService, RunningService>() {}

const ServiceLive = Layer.scoped(TestService, start({ METRICS_PORT: "0" }))

// -----------------------------------------------------------------------------
// the text format
// -----------------------------------------------------------------------------

const metricName = "[a-zA-Z_:][a-zA-Z0-9_:]*"
const labelPair = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`
const sampleLine = new RegExp(
  `^(${metricName})(?:\\{((?:${labelPair})(?:,${labelPair})*)?\\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$`
)
const typeLine = new RegExp(`^# TYPE (${metricName}) (counter|gauge|histogram|summary|untyped)$`)
const helpLine = new RegExp(`^# HELP (${metricName}) .*$`)

interface Parsed {
  /** The value of each series, by `name{label="value",...}` as written. */
  readonly series: Map<string, number>
  readonly types: Map<string, string>
}

/**
 * Parses the Prometheus text format (0.0.4) strictly: every line a HELP,
 * TYPE or other comment, or a sample; a family's TYPE before its samples,
 * given once; a family's samples together; a sample's name its family's
 * (with `_bucket`, `_sum`, `_count` for histograms).
 */
const parse = (text: string): Parsed => {
  const series = new Map<string, number>()
  const types = new Map<string, string>()
  const closed = new Set<string>()
  let current: string | undefined
  expect(text.endsWith("\n"), "ends with a newline").toBe(true)
  for (const line of text.split("\n").slice(0, -1)) {
    if (line === "") continue
    const type = typeLine.exec(line)
    if (type !== null) {
      expect(types.has(type[1]!), `one TYPE for ${type[1]}`).toBe(false)
      types.set(type[1]!, type[2]!)
      if (current !== undefined) closed.add(current)
      current = type[1]!
      continue
    }
    if (line.startsWith("#")) {
      expect(line.startsWith("# HELP ") ? helpLine.test(line) : true, line).toBe(true)
      continue
    }
    const sample = sampleLine.exec(line)
    expect(sample, `a sample line: ${line}`).not.toBeNull()
    const name = sample![1]!
    const family = types.get(name) === undefined ? name.replace(/_(bucket|sum|count)$/, "") : name
    expect(family, `${name} belongs to the family whose TYPE came last`).toBe(current)
    expect(closed.has(family), `${family}'s samples are together`).toBe(false)
    const key = sample![2] === undefined ? name : `${name}{${sample![2]}}`
    expect(series.has(key), `one sample of ${key}`).toBe(false)
    series.set(key, Number(sample![3]!.replace("+Inf", "Infinity").replace("-Inf", "-Infinity")))
  }
  return { series, types }
}

/** The value of a series (absent: 0), its labels in the order the service writes them. */
const valueOf = (parsed: Parsed, name: string, labels: Record<string, string> = {}) => {
  const rendered = Object.entries(labels).map(([key, value]) => `${key}="${value}"`).join(",")
  return parsed.series.get(rendered === "" ? name : `${name}{${rendered}}`) ?? 0
}

const scrape = Effect.gen(function*() {
  const service = yield* TestService
  const admin = yield* Effect.promise(() => service.token("metrics-admin", { admin: true }))
  const reply = yield* request(`${service.baseUrl}/metrics`, { token: admin })
  expect(reply.status, reply.text).toBe(200)
  return parse(reply.text)
})

const tokens = Effect.gen(function*() {
  const service = yield* TestService
  return {
    admin: yield* Effect.promise(() => service.token("root", { admin: true })),
    alice: yield* Effect.promise(() => service.token("alice"))
  }
})

const stock = (productId: string, available: number) =>
  Effect.gen(function*() {
    const service = yield* TestService
    const { admin } = yield* tokens
    const reply = yield* request(`${service.baseUrl}/api/v1/products/${productId}/stock`, {
      method: "PUT",
      token: admin,
      json: { available }
    })
    expect(reply.status).toBe(200)
  })

const createOrder = (productId: string, options: { readonly key?: string; readonly quantity?: number } = {}) =>
  Effect.gen(function*() {
    const service = yield* TestService
    const { alice } = yield* tokens
    return yield* request(`${service.baseUrl}/api/v1/orders`, {
      method: "POST",
      token: alice,
      json: orderBody(productId, options.quantity ?? 1),
      ...(options.key === undefined ? {} : { headers: { "idempotency-key": options.key } })
    })
  })

/** How far `http_server_requests_total` of the given labels moved from `before` to `after`. */
const requestsDelta = (before: Parsed, after: Parsed) => (labels: Record<string, string>) =>
  valueOf(after, "http_server_requests_total", labels) - valueOf(before, "http_server_requests_total", labels)

/**
 * Writes `text` in one write to the server at `baseUrl`, without half-closing
 * (Node would abort a request whose client half-closed), and returns all it
 * answers until it closes the connection (at most 10 seconds).
 */
const rawExchange = (baseUrl: string, text: string) =>
  Effect.async<string>((resume) => {
    const { hostname, port } = new URL(baseUrl)
    let answer = ""
    const socket = Net.connect(Number(port), hostname, () => socket.write(text))
    socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")))
    socket.on("error", () => {})
    socket.on("close", () => resume(Effect.succeed(answer)))
    return Effect.sync(() => socket.destroy())
  }).pipe(Effect.timeout("10 seconds"))

describe(`metrics (${kind})`, () => {
  layer(ServiceLive, { timeout: Duration.minutes(2), excludeTestServices: true })((it) => {
    it.effect("GET /metrics: 401 without a token, 403 for a user, Prometheus text for an admin", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { admin, alice } = yield* tokens
        const anonymous = yield* request(`${service.baseUrl}/metrics`)
        expect(anonymous.status).toBe(401)
        expect(anonymous.headers.get("www-authenticate")).toBe("Bearer")
        const user = yield* request(`${service.baseUrl}/metrics`, { token: alice })
        expect(user.status).toBe(403)
        expect(JSON.parse(user.text)).toMatchObject({ code: "Forbidden", status: 403 })
        const allowed = yield* request(`${service.baseUrl}/metrics`, { token: admin })
        expect(allowed.status).toBe(200)
        expect(allowed.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8")
        const parsed = parse(allowed.text)
        expect(parsed.types.get("command_bus_commands_total")).toBeUndefined() // none dispatched yet is fine
        expect(parsed.types.get("http_server_requests_total")).toBe("counter")
        expect(parsed.types.get("http_server_request_duration_seconds")).toBe("histogram")
        expect(parsed.types.get("command_bus_outbox_unpublished_events")).toBe("gauge")
        expect(parsed.types.get("command_bus_outbox_oldest_unpublished_age_seconds")).toBe("gauge")
        expect(valueOf(parsed, "http_server_requests_total", { method: "GET", route: "/metrics", status: "401" }))
          .toBeGreaterThanOrEqual(1)
        expect(valueOf(parsed, "http_server_requests_total", { method: "GET", route: "/metrics", status: "403" }))
          .toBeGreaterThanOrEqual(1)
      }))

    it.effect("a created order moves commands_total{CreateOrder,success} and the route's requests with 201", () =>
      Effect.gen(function*() {
        yield* stock("sku-m1", 10)
        const before = yield* scrape
        const created = yield* createOrder("sku-m1")
        expect(created.status).toBe(201)
        const refused = yield* createOrder("sku-m1", { quantity: 11 })
        expect(refused.status).toBe(409)
        const after = yield* scrape
        const delta = (name: string, labels: Record<string, string>) =>
          valueOf(after, name, labels) - valueOf(before, name, labels)
        expect(delta("command_bus_commands_total", { command: "CreateOrder", outcome: "success" })).toBe(1)
        expect(delta("command_bus_commands_total", { command: "CreateOrder", outcome: "InsufficientInventory" }))
          .toBe(1)
        expect(delta("http_server_requests_total", { method: "POST", route: "/api/v1/orders", status: "201" })).toBe(1)
        expect(delta("http_server_requests_total", { method: "POST", route: "/api/v1/orders", status: "409" })).toBe(1)
        expect(delta("command_bus_dispatch_duration_seconds_count", { command: "CreateOrder" })).toBe(2)
        expect(delta("http_server_request_duration_seconds_count", { method: "POST", route: "/api/v1/orders" }))
          .toBe(2)
        // A histogram's buckets are cumulative, and +Inf counts every observation.
        const bucketSeries = [...after.series.entries()].filter(([key]) =>
          key.startsWith("http_server_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/orders\",")
        )
        expect(bucketSeries.map(([key]) => /le="([^"]+)"/.exec(key)![1])).toEqual([
          ...Array.from({ length: 15 }, (_, i) => String(0.0005 * 2 ** i)),
          "+Inf"
        ])
        const buckets = bucketSeries.map(([, value]) => value)
        expect([...buckets].sort((a, b) => a - b)).toEqual(buckets)
        expect(buckets[buckets.length - 1]).toBe(
          valueOf(after, "http_server_request_duration_seconds_count", { method: "POST", route: "/api/v1/orders" })
        )
      }))

    // Node's parser refuses the body of a request the application already
    // has: its answer, not the application's "client went away" (499), is
    // what the request gets, counts and carries.
    it.effect("a body the parser refuses mid-request: 400 with the request's correlation id, counted as 400", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { alice } = yield* tokens
        const before = yield* scrape
        const send = (pieces: ReadonlyArray<string>) =>
          Effect.async<string>((resume) => {
            let answer = ""
            const socket = Net.connect(Number(new URL(service.baseUrl).port), "127.0.0.1", () => {
              socket.write(pieces[0]!)
              // The rest once the application has the request (or at once).
              if (pieces.length > 1) setTimeout(() => socket.write(pieces[1]!), 300)
            })
            socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")))
            socket.on("error", () => {})
            socket.on("close", () => resume(Effect.succeed(answer)))
            return Effect.sync(() => socket.destroy())
          }).pipe(Effect.timeout("10 seconds"))
        const head = (correlationId: string) =>
          `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
          `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nX-Correlation-ID: ${correlationId}\r\n\r\n` +
          `5\r\n{"cus\r\n`
        const badChunk = "zz\r\n"
        for (const split of [true, false]) {
          const correlationId = randomUUID()
          const answer = yield* send(split ? [head(correlationId), badChunk] : [head(correlationId) + badChunk])
          const [statusLine, ...lines] = answer.split("\r\n\r\n")[0]!.split("\r\n")
          expect(statusLine).toMatch(/^HTTP\/1\.1 400 /)
          expect(lines.map((line) => line.toLowerCase())).toContain(`x-correlation-id: ${correlationId}`)
        }
        // Counted once the application has let go of them.
        yield* Effect.sleep("300 millis")
        const after = yield* scrape
        const delta = (status: string) =>
          valueOf(after, "http_server_requests_total", { method: "POST", route: "/api/v1/orders", status }) -
          valueOf(before, "http_server_requests_total", { method: "POST", route: "/api/v1/orders", status })
        expect([delta("400"), delta("499")]).toEqual([2, 0])
      }))

    // HTTP/1.1 pipelining: bytes the parser refuses behind a complete request
    // are a request of their own, not that one's body.
    it.effect("a request the parser refuses behind a complete one is its own 400, after the complete one's answer", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { alice } = yield* tokens
        yield* stock("sku-m9", 10)
        const before = yield* scrape
        const correlationId = randomUUID()
        const body = JSON.stringify(orderBody("sku-m9", 1))
        const answer = yield* rawExchange(
          service.baseUrl,
          `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
            `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
            `X-Correlation-ID: ${correlationId}\r\n\r\n${body}GARBAGE\r\n\r\n`
        )
        // The order's own answer first, then the refusal, which is not the order's.
        expect(answer.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 201", "HTTP/1.1 400"])
        const [created, refused] = answer.toLowerCase().split("http/1.1 400")
        expect(created).toContain(`x-correlation-id: ${correlationId}`)
        expect(refused).not.toContain(`x-correlation-id: ${correlationId}`)
        yield* Effect.sleep("300 millis")
        const after = yield* scrape
        const delta = requestsDelta(before, after)
        expect(delta({ method: "POST", route: "/api/v1/orders", status: "201" })).toBe(1)
        expect(delta({ method: "POST", route: "/api/v1/orders", status: "400" })).toBe(0)
        expect(delta({ method: "UNKNOWN", route: "unmatched", status: "400" })).toBe(1)
      }))

    it.effect("a refusal behind a request whose answer closes the connection is never sent, and not counted", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { alice } = yield* tokens
        const before = yield* scrape
        const answer = yield* rawExchange(
          service.baseUrl,
          `GET /api/v1/orders/${randomUUID()} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
            "Connection: close\r\n\r\nBOGUS\r\n\r\n"
        )
        expect(answer.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 404"])
        yield* Effect.sleep("300 millis")
        const after = yield* scrape
        const delta = requestsDelta(before, after)
        expect(delta({ method: "UNKNOWN", route: "unmatched", status: "400" })).toBe(0)
      }))

    it.effect("an idempotent replay moves the replay counter; the key with another body, the mismatch counter", () =>
      Effect.gen(function*() {
        yield* stock("sku-m2", 10)
        const key = `key-${randomUUID()}`
        const before = yield* scrape
        expect((yield* createOrder("sku-m2", { key })).status).toBe(201)
        const replayed = yield* createOrder("sku-m2", { key })
        expect(replayed.status).toBe(201)
        expect(replayed.headers.get("idempotent-replayed")).toBe("true")
        expect((yield* createOrder("sku-m2", { key, quantity: 2 })).status).toBe(422)
        const after = yield* scrape
        const delta = (name: string) =>
          valueOf(after, name, { command: "CreateOrder" }) - valueOf(before, name, { command: "CreateOrder" })
        expect(delta("command_bus_idempotency_replays_total")).toBe(1)
        expect(delta("command_bus_idempotency_mismatches_total")).toBe(1)
        expect(delta("command_bus_idempotency_in_flight_total")).toBe(0)
      }))

    it.effect("requests are labelled by route template, never by raw path; unknown paths as unmatched", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { alice } = yield* tokens
        const orderId = randomUUID()
        const before = yield* scrape
        expect((yield* request(`${service.baseUrl}/api/v1/orders/${orderId}`, { token: alice })).status).toBe(404)
        expect((yield* request(`${service.baseUrl}/no/such/${orderId}?x=1`)).status).toBe(404)
        expect((yield* request(`${service.baseUrl}/api/v1/products/sku-m3/stock`, { token: alice })).status).toBe(200)
        const admin = yield* Effect.promise(() => service.token("metrics-admin", { admin: true }))
        const text = (yield* request(`${service.baseUrl}/metrics`, { token: admin })).text
        const after = parse(text)
        const delta = requestsDelta(before, after)
        expect(delta({ method: "GET", route: "/api/v1/orders/:orderId", status: "404" })).toBe(1)
        expect(delta({ method: "GET", route: "unmatched", status: "404" })).toBe(1)
        expect(delta({ method: "GET", route: "/api/v1/products/:productId/stock", status: "200" })).toBe(1)
        expect(text).not.toContain(orderId)
        expect(text).not.toContain("sku-m3")
      }))

    it.effect("requests Node's parser refuses, or Node answers itself, are counted too, as unmatched", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const port = Number(new URL(service.baseUrl).port)
        const send = (text: string, options: { readonly hangUpAfter?: number } = {}) =>
          Effect.async<void>((resume) => {
            const socket = Net.connect(port, "127.0.0.1", () => {
              socket.write(text)
              if (options.hangUpAfter !== undefined) setTimeout(() => socket.end(), options.hangUpAfter)
            })
            const timer = setTimeout(() => socket.destroy(), 5000)
            socket.on("data", () => {})
            socket.on("error", () => {})
            socket.on("close", () => {
              clearTimeout(timer)
              resume(Effect.void)
            })
          })
        const before = yield* scrape
        yield* send("POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        yield* send(`GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`)
        yield* send("PUT /api/v1/products/p/stock HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Length: 2\r\n\r\n")
        yield* send("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
        const after = yield* scrape
        const delta = requestsDelta(before, after)
        expect([
          delta({ method: "UNKNOWN", route: "unmatched", status: "400" }),
          delta({ method: "UNKNOWN", route: "unmatched", status: "431" }),
          delta({ method: "PUT", route: "unmatched", status: "417" }),
          delta({ method: "CONNECT", route: "unmatched", status: "405" })
        ]).toEqual([1, 1, 1, 1])

        // A client that hangs up mid-body: its request is the edge's to count (499), once, not also
        // a parser refusal.
        const { alice } = yield* tokens
        const hungUpBefore = yield* scrape
        yield* send(
          `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice}\r\n` +
            `Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"customer`,
          { hangUpAfter: 300 }
        )
        yield* Effect.sleep("300 millis")
        const hungUpAfter = yield* scrape
        const total = (parsed: Parsed) =>
          [...parsed.series].filter(([key]) => key.startsWith("http_server_requests_total{"))
            .filter(([key]) => !key.includes("route=\"/metrics\""))
            .reduce((sum, [, value]) => sum + value, 0)
        expect(total(hungUpAfter) - total(hungUpBefore)).toBe(1)
      }))

    it.effect("the outbox lag gauges are read at the scrape; pool gauges on a server, none on the embedded database", () =>
      Effect.gen(function*() {
        const parsed = yield* scrape
        const unpublished = parsed.series.get("command_bus_outbox_unpublished_events")
        const oldest = parsed.series.get("command_bus_outbox_oldest_unpublished_age_seconds")
        expect(unpublished).toBeGreaterThanOrEqual(0)
        expect(oldest).toBeGreaterThanOrEqual(0)
        if (kind === "postgres") {
          expect(parsed.types.get("db_client_connections")).toBe("gauge")
          expect(valueOf(parsed, "db_client_connections_max")).toBe(20)
          const idle = valueOf(parsed, "db_client_connections", { state: "idle" })
          const used = valueOf(parsed, "db_client_connections", { state: "used" })
          expect(idle + used).toBeGreaterThanOrEqual(1)
          expect(idle + used).toBeLessThanOrEqual(20)
          expect(parsed.series.get("db_client_connection_pending_requests")).toBeGreaterThanOrEqual(0)
        } else {
          expect(parsed.types.has("db_client_connections")).toBe(false)
        }
      }))

    it.effect("METRICS_PORT: the same metrics without a token, only at /metrics, on 127.0.0.1", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        expect(Option.isSome(service.metricsUrl)).toBe(true)
        const metricsUrl = Option.getOrThrow(service.metricsUrl)
        expect(metricsUrl).not.toBe(service.baseUrl)
        const plain = yield* request(`${metricsUrl}/metrics`)
        expect(plain.status).toBe(200)
        expect(plain.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8")
        const parsed = parse(plain.text)
        expect([...parsed.types.keys()]).toEqual(expect.arrayContaining([
          "http_server_requests_total",
          "command_bus_outbox_unpublished_events"
        ]))
        const viaApi = yield* scrape
        expect([...parsed.types.keys()].sort()).toEqual([...viaApi.types.keys()].sort())
        // Refusals are problems, as the API's are.
        const missing = yield* request(`${metricsUrl}/api/v1/orders`)
        expect(missing.status).toBe(404)
        expect(missing.headers.get("content-type")).toBe("application/problem+json")
        expect(missing.body).toMatchObject({ status: 404, code: "RouteNotFound", path: "/api/v1/orders" })
        // Targets as the API's router reads them: a trailing slash, and the absolute form
        // (written without half-closing: Node would abort a request whose client half-closed).
        expect((yield* request(`${metricsUrl}/metrics/`)).status).toBe(200)
        const absolute = yield* rawExchange(
          metricsUrl,
          `GET ${metricsUrl}/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`
        )
        expect(absolute.split("\r\n")[0]).toBe("HTTP/1.1 200 OK")
        // Without Host: a problem, as the API's port answers it, not Node's bare 400.
        const hostless = yield* rawExchange(metricsUrl, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        expect(hostless.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request")
        expect(hostless.toLowerCase()).toContain("content-type: application/problem+json")
        expect(hostless).toContain("\"reason\":\"MISSING_HOST\"")
        const posted = yield* request(`${metricsUrl}/metrics`, { method: "POST" })
        expect(posted.status).toBe(405)
        expect(posted.headers.get("allow")).toBe("GET, HEAD")
        expect(posted.body).toMatchObject({ status: 405, code: "MethodNotAllowed", allowed: ["GET", "HEAD"] })
        // Its requests are not the API's: they are not counted.
        const later = yield* scrape
        expect(valueOf(later, "http_server_requests_total", { method: "GET", route: "unmatched", status: "404" }))
          .toBe(valueOf(viaApi, "http_server_requests_total", { method: "GET", route: "unmatched", status: "404" }))
      }))
  })

  it.scoped("without METRICS_PORT there is no metrics listener", () =>
    Effect.gen(function*() {
      const service = yield* start()
      expect(Option.isNone(service.metricsUrl)).toBe(true)
    }))
})
