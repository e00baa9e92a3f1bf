/**
 * The pieces of observability below the service: the dispatch span's
 * outcome (and no span with tracing off), the idempotency counters, the
 * route table that names requests, and the observability configuration.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Command, CommandBus, Handler, Idempotency, Middleware } from "../../src/index.js"
import * as Config from "../../src/server/Config.js"
import * as Observability from "../../src/server/Observability.js"
import { InMemory } from "../../src/testing/index.js"
import { recordingTracer } from "../support/Tracing.js"

class Declined extends Schema.TaggedError<Declined>()("Declined", {}) {}

class Charge extends Command.Class<Charge>()("ObservabilityCharge", {
  payload: { amount: Schema.Int },
  success: Schema.Struct({ charged: Schema.Int }),
  failure: Declined
}) {}

/** A bus whose handler declines 13, and waits for `gate` when given. */
const makeBus = (gate?: Deferred.Deferred<void>) =>
  CommandBus.make([Charge], {
    ObservabilityCharge: (command) =>
      Effect.gen(function*() {
        if (gate !== undefined) yield* Deferred.await(gate)
        if (command.amount === 13) return yield* new Declined()
        return Handler.result({ charged: command.amount })
      })
  })

describe("observability", () => {
  describe("the dispatch span", () => {
    const bus = makeBus().pipe(CommandBus.withMiddleware(Middleware.tracing))

    it.effect("carries command.outcome: success, or the error's tag", () =>
      Effect.gen(function*() {
        const { spans, tracer } = yield* recordingTracer
        yield* bus.dispatch(new Charge({ amount: 5 })).pipe(Effect.withTracer(tracer))
        yield* Effect.exit(bus.dispatch(new Charge({ amount: 13 })).pipe(Effect.withTracer(tracer)))
        assert.deepStrictEqual(spans.map((span) => span.attributes.get("command.outcome")), ["success", "Declined"])
        assert.deepStrictEqual(spans.map((span) => span.attributes.get("command.error")), [undefined, "Declined"])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("with tracing off, makes no span and leaves the caller's span the current one", () =>
      Effect.gen(function*() {
        const { spans, tracer } = yield* recordingTracer
        const inner = makeBus().pipe(CommandBus.withMiddleware(Middleware.tracing))
        const result = yield* inner.dispatch(new Charge({ amount: 7 })).pipe(
          Effect.withTracerEnabled(false),
          Effect.withTracer(tracer)
        )
        assert.deepStrictEqual(result, { charged: 7 })
        assert.deepStrictEqual(spans, [])
      }).pipe(Effect.provide(InMemory.layer)))
  })

  describe("idempotency counters", () => {
    const counterValue = (name: string, command: string) => {
      const found = Metric.unsafeSnapshot().find((pair) =>
        pair.metricKey.name === name &&
        pair.metricKey.tags.some((tag) => tag.key === "command" && tag.value === command)
      )
      return found !== undefined && MetricState.isCounterState(found.metricState) ? Number(found.metricState.count) : 0
    }
    const counts = () => ({
      replays: counterValue("command_bus_idempotency_replays_total", "ObservabilityCharge"),
      mismatches: counterValue("command_bus_idempotency_mismatches_total", "ObservabilityCharge"),
      inFlight: counterValue("command_bus_idempotency_in_flight_total", "ObservabilityCharge")
    })

    it.effect("count replays, mismatches and keys in flight, by command", () =>
      Effect.gen(function*() {
        const gate = yield* Deferred.make<void>()
        const bus = makeBus(gate).pipe(CommandBus.withMiddleware(Idempotency.middleware()))
        const before = counts()
        const first = yield* Effect.fork(bus.dispatch(new Charge({ amount: 5, idempotencyKey: "k" })))
        yield* Effect.yieldNow()
        // The first still runs: a duplicate is refused as in flight.
        const duplicate = yield* Effect.exit(bus.dispatch(new Charge({ amount: 5, idempotencyKey: "k" })))
        assert.isTrue(Exit.isFailure(duplicate))
        yield* Deferred.succeed(gate, undefined)
        assert.deepStrictEqual(yield* Fiber.join(first), { charged: 5 })
        // Done: a repeat replays, another payload is a mismatch.
        assert.deepStrictEqual(yield* bus.dispatch(new Charge({ amount: 5, idempotencyKey: "k" })), { charged: 5 })
        const mismatch = yield* Effect.flip(bus.dispatch(new Charge({ amount: 6, idempotencyKey: "k" })))
        assert.instanceOf(mismatch, Idempotency.IdempotencyKeyMismatch)
        // Without a key, nothing is counted.
        yield* bus.dispatch(new Charge({ amount: 5 }))
        const after = counts()
        assert.deepStrictEqual(
          { replays: after.replays - before.replays, mismatches: after.mismatches - before.mismatches },
          { replays: 1, mismatches: 1 }
        )
        assert.strictEqual(after.inFlight - before.inFlight, 1)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  describe("route table", () => {
    const routes = Observability.makeRouteTable([
      { method: "POST", path: "/api/v1/orders" },
      { method: "GET", path: "/api/v1/orders/:orderId" },
      { method: "POST", path: "/api/v1/orders/:orderId/cancel" },
      { method: "GET", path: "/api/v1/products/:productId/stock" },
      { method: "PUT", path: "/api/v1/products/:productId/stock" },
      { method: "GET", path: "/health/live" }
    ])

    it("names a request by its template, with the query left out", () => {
      expect(routes.find("POST", "/api/v1/orders")).toBe("/api/v1/orders")
      expect(routes.find("POST", "/api/v1/orders?x=1")).toBe("/api/v1/orders")
      expect(routes.find("GET", "/api/v1/orders/6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10")).toBe("/api/v1/orders/:orderId")
      expect(routes.find("POST", "/api/v1/orders/abc/cancel")).toBe("/api/v1/orders/:orderId/cancel")
      expect(routes.find("PUT", "/api/v1/products/sku-1/stock?a=b")).toBe("/api/v1/products/:productId/stock")
      expect(routes.find("HEAD", "/health/live")).toBe("/health/live")
    })

    it("calls anything else unmatched: other methods, empty parameters, other depths", () => {
      for (
        const [method, url] of [
          ["DELETE", "/api/v1/orders"],
          ["GET", "/api/v1/orders/"],
          ["GET", "/api/v1/orders/a/b"],
          ["GET", "/api/v1/products//stock"],
          ["GET", "/"],
          ["GET", "/api/v1/orders/x/../../../etc/passwd"]
        ] as const
      ) {
        expect(routes.find(method, url), `${method} ${url}`).toBe(Observability.unmatchedRoute)
      }
    })
  })

  describe("configuration", () => {
    const read = (env: Record<string, string>) =>
      Effect.either(Effect.withConfigProvider(Config.observability, ConfigProvider.fromJson(env)))

    it.effect("off by default; service name orders-service; no metrics port", () =>
      Effect.gen(function*() {
        const config = yield* Effect.flatten(read({}))
        assert.isTrue(Option.isNone(config.tracesUrl))
        assert.strictEqual(config.serviceName, "orders-service")
        assert.isTrue(Option.isNone(config.metricsPort))
      }))

    it.effect("OTEL_EXPORTER_OTLP_ENDPOINT is a base: /v1/traces is appended; the traces endpoint wins as is", () =>
      Effect.gen(function*() {
        const base = yield* Effect.flatten(read({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" }))
        assert.deepStrictEqual(base.tracesUrl, Option.some("http://collector:4318/v1/traces"))
        const both = yield* Effect.flatten(read({
          OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://traces.example/ingest"
        }))
        assert.deepStrictEqual(both.tracesUrl, Option.some("https://traces.example/ingest"))
        const empty = yield* Effect.flatten(read({ OTEL_EXPORTER_OTLP_ENDPOINT: "" }))
        assert.isTrue(Option.isNone(empty.tracesUrl))
      }))

    it.effect("refuses an endpoint that is not an http(s) URL, and a bad METRICS_PORT", () =>
      Effect.gen(function*() {
        for (
          const env of [
            { OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" },
            { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "grpc://collector:4317" },
            { METRICS_PORT: "70000" },
            { METRICS_PORT: "nine" },
            { OTEL_SERVICE_NAME: " " }
          ]
        ) {
          const result = yield* read(env)
          assert.isTrue(result._tag === "Left", JSON.stringify(env))
        }
        const port = yield* Effect.flatten(read({ METRICS_PORT: "9464" }))
        assert.deepStrictEqual(port.metricsPort, Option.some(9464))
      }))
  })
})
