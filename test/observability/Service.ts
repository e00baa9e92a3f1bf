/**
 * The order service in-process for the observability tests: as
 * `test/support/Service.ts` starts it, with the tracing layer the test
 * chooses, and the address of the metrics listener when `METRICS_PORT` is
 * set.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Auth from "../../src/server/Auth.js"
import * as Metrics from "../../src/server/Metrics.js"
import * as Observability from "../../src/server/Observability.js"
import * as Server from "../../src/server/Server.js"
import * as TestDatabase from "../support/Database.js"

export interface RunningService {
  readonly baseUrl: string
  /** `http://127.0.0.1:<port>` of the metrics listener, when `METRICS_PORT` was set. */
  readonly metricsUrl: Option.Option<string>
  readonly token: (sub: string, options?: { readonly admin?: boolean }) => Promise<string>
}

/**
 * Starts the service for the surrounding scope with `tracing` (by default
 * from configuration, as in production); stops it, flushing spans, when the
 * scope closes.
 */
export const start = (options: {
  readonly env?: Record<string, string>
  readonly tracing?: Layer.Layer<never>
} = {}) =>
  Effect.gen(function*() {
    const dataDir = yield* TestDatabase.tempDir("ecb-observability")
    const env = TestDatabase.serviceEnv(dataDir, options.env ?? {})
    yield* Effect.addFinalizer(() => TestDatabase.dropServiceSchema(env))
    const context = yield* Layer.build(
      Server.layer(options.tracing === undefined ? {} : { tracing: options.tracing }).pipe(
        Layer.provide(Logger.minimumLogLevel(LogLevel.Warning)),
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson(env)))
      )
    )
    const server = yield* Effect.provide(HttpServer.HttpServer, context)
    const listener = yield* Effect.provide(Metrics.Listener, context)
    const address = server.address
    if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
    const secret = new TextEncoder().encode(env.JWT_SECRET!)
    const service: RunningService = {
      baseUrl: `http://127.0.0.1:${address.port}`,
      metricsUrl: Option.flatMap(
        listener.address,
        (bound) => bound._tag === "TcpAddress" ? Option.some(`http://127.0.0.1:${bound.port}`) : Option.none()
      ),
      token: (sub, tokenOptions = {}) =>
        Auth.sign({ secret, sub, roles: tokenOptions.admin === true ? [Auth.adminRole] : [] })
    }
    return service
  })

/** Tracing on, every span kept in memory as it ends. */
export const inMemoryTracing = () => {
  const exporter = new InMemorySpanExporter()
  const layer = Observability.layerTracing({
    spanProcessor: () => new SimpleSpanProcessor(exporter),
    serviceName: "orders-service-test"
  })
  return { exporter, layer }
}

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

/** One request, bounded in time. */
export const request = (
  url: string,
  init: {
    readonly method?: string
    readonly token?: string
    readonly json?: unknown
    readonly headers?: Record<string, string>
  } = {}
) =>
  Effect.promise(async (): Promise<Reply> => {
    const headers: Record<string, string> = { ...init.headers }
    if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`
    if (init.json !== undefined) headers["content-type"] = "application/json"
    const response = await fetch(url, {
      method: init.method ?? "GET",
      headers,
      signal: AbortSignal.timeout(30_000),
      ...(init.json === undefined ? {} : { body: JSON.stringify(init.json) })
    })
    return { status: response.status, headers: response.headers, text: await response.text() }
  })

export const customerId = "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10"

export const orderBody = (productId: string, quantity = 1) => ({
  customer_id: customerId,
  items: [{ product_id: productId, quantity }],
  shipping_address: { line1: "1 Main St", city: "Springfield", postal_code: "12345", country: "US" }
})
