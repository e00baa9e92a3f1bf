/**
 * The order service, started in-process on 127.0.0.1 on a free port with
 * its own database, for end-to-end tests over real HTTP: tracing as
 * configured (as in production) unless a test passes its own layer, and the
 * address of the metrics listener when `METRICS_PORT` is set.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Auth from "../../src/server/Auth.js"
import * as Metrics from "../../src/server/Metrics.js"
import * as Server from "../../src/server/Server.js"
import * as TestDatabase from "./Database.js"

export interface RunningService {
  readonly baseUrl: string
  readonly env: Record<string, string>
  /** `http://127.0.0.1:<port>` of the metrics listener, when `METRICS_PORT` was set. */
  readonly metricsUrl: Option.Option<string>
  /** A token for `sub`, signed with the service's secret. */
  readonly token: (sub: string, options?: { readonly admin?: boolean; readonly expiresIn?: string }) => Promise<string>
}

/**
 * Starts the service for the surrounding scope; stops it (and drops its
 * schema on a server, and flushes its spans) when the scope closes.
 */
export const start = (
  extraEnv: Record<string, string> = {},
  options: { readonly tracing?: Layer.Layer<never> } = {}
) =>
  Effect.gen(function*() {
    const dataDir = yield* TestDatabase.tempDir("ecb-service")
    const env = TestDatabase.serviceEnv(dataDir, extraEnv)
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
      env,
      metricsUrl: Option.flatMap(
        listener.address,
        (bound) => bound._tag === "TcpAddress" ? Option.some(`http://127.0.0.1:${bound.port}`) : Option.none()
      ),
      token: (sub, options = {}) =>
        Auth.sign({
          secret,
          sub,
          roles: options.admin === true ? [Auth.adminRole] : [],
          ...(options.expiresIn === undefined ? {} : { expiresIn: options.expiresIn })
        })
    }
    return service
  })
