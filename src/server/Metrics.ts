/**
 * The service's metrics in the Prometheus text format: everything in
 * Effect's metric registry (the bus's commands, durations, retries and
 * idempotency outcomes, the outbox relay, HTTP requests), plus gauges read
 * at each scrape (outbox lag, database pool). `@effect/opentelemetry`'s
 * metric producer turns the registry into OpenTelemetry metric data, and
 * `@opentelemetry/exporter-prometheus`'s serializer writes it as text.
 *
 * Served at `GET /metrics` on the API's port (admins only) and, when
 * `METRICS_PORT` is set, without authentication on a listener of its own
 * on `HOST:METRICS_PORT`.
 *
 * @since 0.1.0
 */
import * as Metrics from "@effect/opentelemetry/Metrics"
import * as Resource from "@effect/opentelemetry/Resource"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import type * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as SqlClient from "@effect/sql/SqlClient"
import { PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import { createServer } from "node:http"
import { SqlOutbox } from "../sql/index.js"
import * as Config from "./Config.js"
import { DatabasePool } from "./Database.js"
import { MalformedRequest, MethodNotAllowed, RouteNotFound } from "./HttpErrors.js"
import * as Observability from "./Observability.js"
import * as Problem from "./Problem.js"

/**
 * The media type of the Prometheus text exposition format.
 *
 * @since 0.1.0
 * @category constants
 */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

// -----------------------------------------------------------------------------
// HTTP requests
// -----------------------------------------------------------------------------

const requestsTotal = Metric.counter("http_server_requests_total", {
  description: "HTTP requests answered, by method, route template and status",
  incremental: true
})

const requestDuration = Metric.histogram(
  "http_server_request_duration_seconds",
  MetricBoundaries.exponential({ start: 0.0005, factor: 2, count: 16 }),
  "HTTP request duration in seconds, until the response is ready to write, by method and route template"
)

interface RouteLabels {
  readonly duration: ReadonlyArray<MetricLabel.MetricLabel>
  readonly byStatus: Map<number, ReadonlyArray<MetricLabel.MetricLabel>>
}

// A metric updated with the same array of labels finds its hook in a cache
// (as in `Middleware.ts`), so each label set is built once and kept. Routes
// are templates, methods the few Node's parser accepts, statuses few.
const labelSets = new Map<string, Map<string, RouteLabels>>()

const labelsFor = (method: string, route: string): RouteLabels => {
  let byRoute = labelSets.get(method)
  if (byRoute === undefined) {
    byRoute = new Map()
    labelSets.set(method, byRoute)
  }
  let labels = byRoute.get(route)
  if (labels === undefined) {
    labels = { duration: [MetricLabel.make("method", method), MetricLabel.make("route", route)], byStatus: new Map() }
    byRoute.set(route, labels)
  }
  return labels
}

/**
 * Counts one answered request (`http_server_requests_total{method,route,status}`)
 * and its duration (`http_server_request_duration_seconds{method,route}`).
 * `route` is the route template, never the raw path.
 *
 * @since 0.1.0
 * @category http
 */
export const recordRequest = (method: string, route: string, status: number, seconds: number): void => {
  const labels = labelsFor(method, route)
  let withStatus = labels.byStatus.get(status)
  if (withStatus === undefined) {
    withStatus = [...labels.duration, MetricLabel.make("status", String(status))]
    labels.byStatus.set(status, withStatus)
  }
  requestsTotal.unsafeUpdate(1, withStatus)
  requestDuration.unsafeUpdate(seconds, labels.duration)
}

// -----------------------------------------------------------------------------
// read at each scrape
// -----------------------------------------------------------------------------

const outboxUnpublished = Metric.gauge("command_bus_outbox_unpublished_events", {
  description: "Committed events the relay has not published yet (NaN when the database did not answer)"
})

const outboxOldestAge = Metric.gauge("command_bus_outbox_oldest_unpublished_age_seconds", {
  description:
    "Age of the oldest unpublished event in seconds, 0 when there is none (NaN when the database did not answer)"
})

const poolConnections = Metric.gauge("db_client_connections", {
  description: "Open connections of the database pool, by state (idle or used)"
})

const poolMax = Metric.gauge("db_client_connections_max", {
  description: "The most connections the database pool opens (DB_POOL_SIZE)"
})

const poolPending = Metric.gauge("db_client_connection_pending_requests", {
  description: "Callers waiting for a connection of the database pool"
})

const idle = [MetricLabel.make("state", "idle")]
const used = [MetricLabel.make("state", "used")]

const lagTimeout = "2 seconds"

/**
 * Reads the outbox lag (`SqlOutbox.lag`) and the pool's usage into their
 * gauges. A lag query that fails or runs past 2 seconds sets both outbox
 * gauges to NaN: the scrape still answers, and a stale figure is not
 * mistaken for a current one.
 */
const refresh = (sql: SqlClient.SqlClient, pool: Context.Tag.Service<DatabasePool>) =>
  Effect.flatMap(pool.usage, (usage) => {
    if (Option.isSome(usage)) {
      poolMax.unsafeUpdate(usage.value.max, [])
      poolConnections.unsafeUpdate(usage.value.idle, idle)
      poolConnections.unsafeUpdate(usage.value.open - usage.value.idle, used)
      poolPending.unsafeUpdate(usage.value.waiting, [])
    }
    return SqlOutbox.lag.pipe(
      Effect.timeout(lagTimeout),
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.matchCauseEffect({
        onSuccess: (lag) =>
          Effect.sync(() => {
            outboxUnpublished.unsafeUpdate(lag.unpublished, [])
            outboxOldestAge.unsafeUpdate(lag.oldestAgeSeconds, [])
          }),
        onFailure: (cause) =>
          Effect.zipRight(
            Effect.sync(() => {
              outboxUnpublished.unsafeUpdate(Number.NaN, [])
              outboxOldestAge.unsafeUpdate(Number.NaN, [])
            }),
            Effect.logWarning("metrics.outbox-lag-failed", cause)
          )
      })
    )
  })

// -----------------------------------------------------------------------------
// scrape
// -----------------------------------------------------------------------------

/**
 * Renders the metrics as Prometheus text, the scrape-time gauges read first.
 *
 * @since 0.1.0
 * @category tags
 */
export class Scraper extends Context.Tag("server/Metrics/Scraper")<Scraper, {
  readonly scrape: Effect.Effect<string>
}>() {}

/**
 * The scraper, on the service's database. `target_info` carries the
 * resource (`service.name` from `OTEL_SERVICE_NAME`); samples carry no
 * OpenTelemetry scope label. A scrape is not traced.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Scraper, ConfigError.ConfigError, SqlClient.SqlClient | DatabasePool> = Layer.effect(
  Scraper,
  Effect.gen(function*() {
    const config = yield* Config.observability
    const sql = yield* SqlClient.SqlClient
    const pool = yield* DatabasePool
    const producer = yield* Effect.provide(Metrics.makeProducer, Resource.layer({ serviceName: config.serviceName }))
    const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
    return {
      scrape: refresh(sql, pool).pipe(
        Effect.zipRight(Effect.promise(() => producer.collect())),
        Effect.map(({ resourceMetrics }) => serializer.serialize(resourceMetrics)),
        // Its lag query would be a trace of its own at every scrape.
        Effect.withTracerEnabled(false)
      )
    }
  })
)

// -----------------------------------------------------------------------------
// the listener on METRICS_PORT
// -----------------------------------------------------------------------------

/**
 * Where the unauthenticated metrics listener listens, if `METRICS_PORT` is
 * set.
 *
 * @since 0.1.0
 * @category tags
 */
export class Listener extends Context.Tag("server/Metrics/Listener")<Listener, {
  readonly address: Option.Option<HttpServer.Address>
}>() {}

/** `GET /metrics`, and nothing else; refusals are the API's problems. */
const listenerApp = (scrape: Effect.Effect<string>) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    // As the API's router reads a target: absolute form and a trailing slash too.
    const host = Observability.hostRefusal(request)
    if (host !== undefined) {
      return Effect.succeed(
        Problem.responseFor(MalformedRequest, new MalformedRequest({ reason: host }), { connection: "close" })
      )
    }
    const path = Observability.routedPath(request.url)
    if (path !== "/metrics") {
      return Effect.succeed(Problem.responseFor(RouteNotFound, new RouteNotFound({ method: request.method, path })))
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      const allowed = ["GET", "HEAD"]
      return Effect.succeed(
        Problem.responseFor(MethodNotAllowed, new MethodNotAllowed({ method: request.method, path, allowed }), {
          allow: allowed.join(", ")
        })
      )
    }
    return Effect.map(scrape, (text) => HttpServerResponse.text(text, { contentType }))
  })

/**
 * With `METRICS_PORT` set, a plain HTTP listener on `HOST:METRICS_PORT`
 * that serves `GET /metrics` without authentication, for a scraper on a
 * network the API's clients cannot reach. Its requests are not traced and
 * not counted. It stops, finishing requests in flight, when the layer
 * closes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerListener: Layer.Layer<
  Listener,
  HttpServerError.ServeError | ConfigError.ConfigError,
  Scraper
> = Layer.scoped(
  Listener,
  Effect.gen(function*() {
    const { metricsPort } = yield* Config.observability
    if (Option.isNone(metricsPort)) return { address: Option.none() }
    const { host } = yield* Config.server
    const { scrape } = yield* Scraper
    const server = yield* NodeHttpServer.make(() => createServer({ requireHostHeader: false }), {
      port: metricsPort.value,
      host
    }).pipe(
      // Its failure names the setting: the API's port is not the one taken.
      Effect.mapError((error) =>
        new HttpServerError.ServeError({ cause: new Error("METRICS_PORT", { cause: error.cause }) })
      )
    )
    yield* server.serve(listenerApp(scrape)).pipe(Effect.withTracerEnabled(false))
    const address = server.address
    yield* Effect.logInfo("metrics.listening").pipe(
      Effect.annotateLogs({
        address: address._tag === "TcpAddress" ? `http://${address.hostname}:${address.port}/metrics` : address.path
      })
    )
    return { address: Option.some(address) }
  })
)
