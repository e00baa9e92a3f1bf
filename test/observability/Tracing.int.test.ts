/**
 * Tracing end to end: the service in-process with an in-memory span
 * exporter, one request, and the span tree it yields (HTTP server span,
 * dispatch, handler, SQL statements), W3C `traceparent` in and out; with
 * tracing off, no `traceparent` out; with an OTLP endpoint, spans exported
 * over OTLP/HTTP to a collector on loopback.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import type { ReadableSpan } from "@opentelemetry/sdk-trace-base"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Http from "node:http"
import { kind } from "../support/Database.js"
import { type RunningService, start } from "../support/Service.js"
import { inMemoryTracing, orderBody, request } from "./Service.js"

const traceId = "0af7651916cd43dd8448eb211c80319c"
const callerSpanId = "b7ad6b7169203331"
const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/

const spanId = (span: ReadableSpan) => span.spanContext().spanId
const parentId = (span: ReadableSpan) => span.parentSpanContext?.spanId

/** Whether `ancestor` is above `span` in `spans`' tree. */
const isUnder = (spans: ReadonlyArray<ReadableSpan>, span: ReadableSpan, ancestor: ReadableSpan): boolean => {
  const byId = new Map(spans.map((candidate) => [spanId(candidate), candidate]))
  for (let parent = parentId(span); parent !== undefined; parent = parentId(byId.get(parent)!)) {
    if (parent === spanId(ancestor)) return true
    if (!byId.has(parent)) return false
  }
  return false
}

/**
 * The spans of a trace once its server span ended: the server span ends
 * just after the response is written, so the client may see the response a
 * moment before.
 */
const traceOf = (spansNow: () => ReadonlyArray<ReadableSpan>, id: string) =>
  Effect.suspend(() => {
    const spans = spansNow().filter((span) => span.spanContext().traceId === id)
    return spans.some((span) => span.kind === 1 /* SERVER */) ? Effect.succeed(spans) : Effect.fail("not yet")
  }).pipe(Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("5 seconds"))), Effect.orDie)

/** A service whose spans are kept in memory, shared by the tests of a block. */
class Traced extends Context.Tag("test/observability/Traced")<Traced, {
  readonly service: RunningService
  readonly exporter: ReturnType<typeof inMemoryTracing>["exporter"]
}>() {}

const TracedLive = Layer.scoped(
  Traced,
  Effect.suspend(() => {
    const { exporter, layer } = inMemoryTracing()
    return Effect.map(start({}, { tracing: layer }), (service) => ({ service, exporter }))
  })
)

describe(`tracing (${kind})`, () => {
  layer(TracedLive, { timeout: Duration.minutes(2), excludeTestServices: true })((it) => {
    it.effect("one POST /api/v1/orders with a traceparent: server span → dispatch → handler → SQL, traceparent out", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const admin = yield* Effect.promise(() => service.token("root", { admin: true }))
        const alice = yield* Effect.promise(() => service.token("alice"))
        const stocked = yield* request(`${service.baseUrl}/api/v1/products/sku-traced/stock`, {
          method: "PUT",
          token: admin,
          json: { available: 5 }
        })
        expect(stocked.status).toBe(200)

        const reply = yield* request(`${service.baseUrl}/api/v1/orders`, {
          method: "POST",
          token: alice,
          json: orderBody("sku-traced", 2),
          headers: { traceparent: `00-${traceId}-${callerSpanId}-01` }
        })
        expect(reply.status, reply.text).toBe(201)
        const spans = yield* traceOf(() => exporter.getFinishedSpans(), traceId)

        // The HTTP server span: a child of the caller's span, in its trace.
        const servers = spans.filter((span) => span.kind === 1)
        expect(servers).toHaveLength(1)
        const server = servers[0]!
        expect(server.name).toBe("POST /api/v1/orders")
        expect(parentId(server)).toBe(callerSpanId)
        expect(server.attributes["http.route"]).toBe("/api/v1/orders")
        expect(server.attributes["http.response.status_code"]).toBe(201)
        expect(server.resource.attributes["service.name"]).toBe("orders-service-test")

        // The response names the server span, so the client can find the trace.
        const out = traceparentPattern.exec(reply.headers.get("traceparent") ?? "")
        expect(out, `traceparent ${reply.headers.get("traceparent")}`).not.toBeNull()
        expect(out![1]).toBe(traceId)
        expect(out![2]).toBe(spanId(server))

        // The dispatch, directly under the server span, with the command's ids and outcome.
        const dispatch = spans.find((span) => span.name === "CommandBus.dispatch CreateOrder")
        expect(dispatch).toBeDefined()
        expect(parentId(dispatch!)).toBe(spanId(server))
        expect(dispatch!.attributes).toMatchObject({
          "command.type": "CreateOrder",
          "command.correlation_id": reply.headers.get("x-correlation-id"),
          "command.outcome": "success"
        })
        expect(dispatch!.attributes["command.id"]).toMatch(/^[0-9a-f-]{36}$/)

        // The handler, inside the dispatch (and its transaction).
        const handler = spans.find((span) => span.name === "Orders.createOrder")
        expect(handler).toBeDefined()
        expect(isUnder(spans, handler!, dispatch!)).toBe(true)

        // The SQL statements of the handler, under it, with their text.
        const statements = spans.filter((span) => span.name === "sql.execute" && isUnder(spans, span, handler!))
        const texts = statements.map((span) => String(span.attributes["db.query.text"]))
        expect(texts).toEqual(expect.arrayContaining([expect.stringContaining("INSERT INTO orders")]))
        expect(texts.some((text) => text.includes("inventory"))).toBe(true)
        for (const span of statements) expect(span.kind).toBe(2 /* CLIENT */)
        expect(spans.some((span) => span.name === "OrderRepository.insert" && isUnder(spans, span, handler!))).toBe(
          true
        )
        // Everything of the request is in the one trace.
        for (const span of spans) expect(isUnder(spans, span, server) || span === server).toBe(true)
      }))

    it.effect("a traceparent W3C says to ignore (uppercase hex, zero ids) is ignored: a trace of its own, not echoed", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const alice = yield* Effect.promise(() => service.token("alice"))
        for (
          const sent of [
            `00-${"A".repeat(32)}-${"B".repeat(16)}-01`,
            `00-${"0".repeat(32)}-${"b".repeat(16)}-01`,
            `00-${"a".repeat(32)}-${"0".repeat(16)}-01`
          ]
        ) {
          const reply = yield* request(`${service.baseUrl}/api/v1/products/sku-trace/stock`, {
            token: alice,
            headers: { traceparent: sent, tracestate: "vendor=1" }
          })
          const out = traceparentPattern.exec(reply.headers.get("traceparent") ?? "")
          expect(out, sent).not.toBeNull()
          expect(out![1], sent).not.toBe(sent.slice(3, 35).toLowerCase())
          const spans = yield* traceOf(() => exporter.getFinishedSpans(), out![1]!)
          expect(parentId(spans.find((span) => span.kind === 1)!), sent).toBeUndefined()
        }
      }))

    it.effect("an idle outbox's polls make no traces; the batch that publishes an order's event does", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const relayed = () =>
          exporter.getFinishedSpans().filter((span) =>
            span.name === "OutboxRelay.relayBatch" ||
            String(span.attributes["db.query.text"] ?? "").includes("FROM outbox WHERE position IS NULL")
          )
        // Whatever earlier tests left is published by now; then two polls and more of an idle outbox.
        yield* Effect.sleep("1 second")
        exporter.reset()
        yield* Effect.sleep("2500 millis")
        expect(relayed().map((span) => span.name)).toEqual([])

        const admin = yield* Effect.promise(() => service.token("root", { admin: true }))
        const alice = yield* Effect.promise(() => service.token("alice"))
        yield* request(`${service.baseUrl}/api/v1/products/sku-relayed/stock`, {
          method: "PUT",
          token: admin,
          json: { available: 1 }
        })
        const created = yield* request(`${service.baseUrl}/api/v1/orders`, {
          method: "POST",
          token: alice,
          json: orderBody("sku-relayed", 1)
        })
        expect(created.status).toBe(201)
        yield* Effect.suspend(() =>
          relayed().some((span) => span.name === "OutboxRelay.relayBatch") ? Effect.void : Effect.fail("not yet")
        ).pipe(Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("5 seconds"))), Effect.orDie)
      }))

    it.effect("B3 headers are no parent; a server span carries a few request headers, no credential of any name", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const alice = yield* Effect.promise(() => service.token("alice"))
        const b3Trace = "0AF7651916CD43DD8448EB211C80319C"
        const b3Span = "B7AD6B7169203331"
        const invented = Array.from({ length: 20 }, (_, i) => `x-invented-${i}`)
        for (
          const b3 of [
            { b3: `${b3Trace}-${b3Span}-1` },
            { "x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "1" }
          ]
        ) {
          const reply = yield* request(`${service.baseUrl}/api/v1/products/sku-trace/stock`, {
            token: alice,
            headers: {
              ...b3,
              "proxy-authorization": `Bearer ${alice}`,
              "x-auth-token": alice,
              ...Object.fromEntries(invented.map((name) => [name, "v"]))
            }
          })
          const out = traceparentPattern.exec(reply.headers.get("traceparent") ?? "")
          expect(out, reply.headers.get("traceparent") ?? "").not.toBeNull()
          expect(out![1]).not.toBe(b3Trace.toLowerCase())
          const server = (yield* traceOf(() => exporter.getFinishedSpans(), out![1]!)).find((span) => span.kind === 1)!
          expect(parentId(server)).toBeUndefined()
          const headers = Object.keys(server.attributes).filter((key) => key.startsWith("http.request.header."))
          const allowed = ["accept", "content-length", "content-type", "host", "traceparent", "user-agent"]
          expect(headers.filter((key) => !allowed.includes(key.slice("http.request.header.".length)))).toEqual([])
          expect(headers).toContain("http.request.header.host")
          expect(Object.values(server.attributes).some((value) => String(value).includes(alice))).toBe(false)
        }
      }))

    it.effect("without a traceparent a request starts a trace of its own; a refused command's outcome is its error", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const alice = yield* Effect.promise(() => service.token("alice"))
        const reply = yield* request(`${service.baseUrl}/api/v1/orders`, {
          method: "POST",
          token: alice,
          json: orderBody("sku-never-stocked")
        })
        expect(reply.status).toBe(409)
        const out = traceparentPattern.exec(reply.headers.get("traceparent") ?? "")
        expect(out).not.toBeNull()
        const spans = yield* traceOf(() => exporter.getFinishedSpans(), out![1]!)
        const server = spans.find((span) => span.kind === 1)!
        expect(parentId(server)).toBeUndefined()
        expect(server.attributes["http.response.status_code"]).toBe(409)
        const dispatch = spans.find((span) => span.name === "CommandBus.dispatch CreateOrder")
        expect(dispatch?.attributes["command.outcome"]).toBe("InsufficientInventory")
        expect(dispatch?.attributes["command.error"]).toBe("InsufficientInventory")
      }))

    it.effect("scrapes and probes are not traced", () =>
      Effect.gen(function*() {
        const { exporter, service } = yield* Traced
        const admin = yield* Effect.promise(() => service.token("root", { admin: true }))
        const before = new Set(exporter.getFinishedSpans())
        const live = yield* request(`${service.baseUrl}/health/live`)
        const ready = yield* request(`${service.baseUrl}/health/ready`)
        const metrics = yield* request(`${service.baseUrl}/metrics`, { token: admin })
        expect([live.status, ready.status, metrics.status]).toEqual([200, 200, 200])
        for (const reply of [live, ready, metrics]) expect(reply.headers.get("traceparent")).toBeNull()
        const added = exporter.getFinishedSpans().filter((span) => !before.has(span))
        // Background work (the relay's poll, pruning) may end spans meanwhile; none of the requests did.
        expect(added.filter((span) => span.kind === 1)).toEqual([])
        const statements = added.filter((span) => span.name === "sql.execute" && parentId(span) === undefined)
        expect(statements.map((span) => span.attributes["db.query.text"])).not.toEqual(
          expect.arrayContaining([expect.stringContaining("count(*) AS unpublished")])
        )
        expect(statements.map((span) => span.attributes["db.query.text"])).not.toEqual(
          expect.arrayContaining(["SELECT 1"])
        )
      }))
  })

  it.scoped("with tracing off (no OTLP endpoint), responses carry no traceparent", () =>
    Effect.gen(function*() {
      const service = yield* start()
      const alice = yield* Effect.promise(() => service.token("alice"))
      const reply = yield* request(`${service.baseUrl}/api/v1/orders`, {
        method: "POST",
        token: alice,
        json: orderBody("sku-none"),
        headers: { traceparent: `00-${traceId}-${callerSpanId}-01` }
      })
      expect(reply.status).toBe(409)
      expect(reply.headers.get("traceparent")).toBeNull()
      expect(reply.headers.get("x-correlation-id")).toMatch(/^[0-9a-f-]{36}$/)
    }))

  it.scoped("with OTEL_EXPORTER_OTLP_ENDPOINT, spans go over OTLP/HTTP, flushed when the service stops", () =>
    Effect.gen(function*() {
      const received: Array<{ readonly path: string; readonly body: string }> = []
      const collector = yield* Effect.acquireRelease(
        Effect.async<Http.Server>((resume) => {
          const server = Http.createServer((incoming, response) => {
            const chunks: Array<Buffer> = []
            incoming.on("data", (chunk: Buffer) => chunks.push(chunk))
            incoming.on("end", () => {
              received.push({ path: incoming.url ?? "", body: Buffer.concat(chunks).toString("utf8") })
              response.writeHead(200, { "content-type": "application/json" }).end("{}")
            })
          })
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
      )
      const address = collector.address()
      if (address === null || typeof address === "string") return yield* Effect.dieMessage("no collector port")
      yield* Effect.scoped(Effect.gen(function*() {
        const service = yield* start({
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${address.port}`,
          OTEL_SERVICE_NAME: "orders-otlp"
        })
        const alice = yield* Effect.promise(() => service.token("alice"))
        const reply = yield* request(`${service.baseUrl}/api/v1/orders`, {
          method: "POST",
          token: alice,
          json: orderBody("sku-otlp"),
          headers: { traceparent: `00-${traceId}-${callerSpanId}-01` }
        })
        expect(reply.status).toBe(409)
        expect(reply.headers.get("traceparent")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`))
      }))
      // The service has stopped: its batch processor flushed on the way out.
      const traces = received.filter((export_) => export_.path === "/v1/traces")
      expect(traces.length).toBeGreaterThan(0)
      const body = traces.map((export_) => export_.body).join("\n")
      expect(body).toContain("CommandBus.dispatch CreateOrder")
      expect(body).toContain("POST /api/v1/orders")
      expect(body).toContain("orders-otlp")
      expect(body).toContain(traceId)
    }))
})
