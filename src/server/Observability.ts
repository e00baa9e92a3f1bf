/**
 * Tracing through OpenTelemetry. With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are batched and exported
 * over OTLP/HTTP: the HTTP request (its parent taken from an incoming W3C
 * `traceparent`), the command's dispatch, its handler, the repositories and
 * every SQL statement. Without it tracing is off: no span is made at all,
 * not even a no-op one where the code checks, so it costs next to nothing.
 *
 * Also here: the route templates requests are named and counted by, never
 * their raw paths.
 *
 * @since 0.1.0
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpTraceContext from "@effect/platform/HttpTraceContext"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { constTrue, type LazyArg } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import type { IncomingMessage } from "node:http"
import * as Config from "./Config.js"

// -----------------------------------------------------------------------------
// routes
// -----------------------------------------------------------------------------

/**
 * The route label of a request that matches no route.
 *
 * @since 0.1.0
 * @category routes
 */
export const unmatchedRoute = "unmatched"

/**
 * The route templates of a service (`/api/v1/orders/:orderId`), to name a
 * request by its template rather than its raw path, so labels and span
 * names stay few.
 *
 * @since 0.1.0
 * @category routes
 */
export interface RouteTable {
  /** The template `method` and `url` match, or `unmatchedRoute`. HEAD falls back to GET, as in the router. */
  readonly find: (method: string, url: string) => string
  /** The methods some route answers for `url`'s path (HEAD with GET), for a 405's `Allow`. */
  readonly methodsOf: (url: string) => ReadonlyArray<string>
}

interface Template {
  readonly path: string
  readonly segments: ReadonlyArray<string>
}

/**
 * A table of route templates, as the router writes them: `:name` matches
 * one non-empty path segment, everything else matches itself.
 *
 * @since 0.1.0
 * @category routes
 */
export const makeRouteTable = (
  routes: Iterable<{ readonly method: string; readonly path: string }>
): RouteTable => {
  // Static paths are one map lookup; templates with parameters are few, and
  // compared segment by segment.
  const statics = new Map<string, string>()
  const templates = new Map<string, Array<Template>>()
  const methods = new Set<string>()
  for (const { method, path } of routes) {
    methods.add(method)
    const segments = path.split("/")
    if (segments.some((segment) => segment.startsWith(":"))) {
      const list = templates.get(method) ?? []
      list.push({ path, segments })
      templates.set(method, list)
    } else {
      statics.set(`${method} ${path}`, path)
    }
  }
  const findFor = (method: string, path: string, segments: ReadonlyArray<string> | undefined) => {
    const exact = statics.get(`${method} ${path}`)
    if (exact !== undefined) return exact
    const candidates = templates.get(method)
    if (candidates === undefined) return undefined
    const parts = segments ?? path.split("/")
    for (const template of candidates) {
      if (matches(template.segments, parts)) return template.path
    }
    return undefined
  }
  return {
    find: (method, url) => {
      const path = routedPath(url)
      return findFor(method, path, undefined) ??
        (method === "HEAD" ? findFor("GET", path, undefined) : undefined) ??
        unmatchedRoute
    },
    methodsOf: (url) => {
      const path = routedPath(url)
      const segments = path.split("/")
      const found: Array<string> = []
      for (const method of methods) {
        if (findFor(method, path, segments) !== undefined) found.push(method)
      }
      if (found.includes("GET")) found.push("HEAD")
      return found
    }
  }
}

// W3C Trace Context, version 00: lowercase hex, ids not all zeros.
const validTraceparent = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/

/**
 * Removes a `traceparent` that W3C Trace Context says to ignore (uppercase
 * hex, all-zero ids, another version's layout), with its `tracestate`, from
 * a request's headers before the platform's tracer reads them: it parses
 * case-insensitively, so such a header would be joined and echoed back,
 * where the next W3C parser refuses it.
 *
 * @since 0.1.0
 * @category tracing
 */
export const dropInvalidTraceparent = (headers: Record<string, string | Array<string> | undefined>): void => {
  // The platform's tracer falls back to B3 headers, whose ids it takes as
  // they come (uppercase too, then echoed in `traceparent`): the parent is
  // W3C's `traceparent` only.
  for (const name of b3Headers) delete headers[name]
  const traceparent = headers["traceparent"]
  if (traceparent === undefined || (typeof traceparent === "string" && validTraceparent.test(traceparent.trim()))) {
    return
  }
  delete headers["traceparent"]
  delete headers["tracestate"]
}

const b3Headers = ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"]

// The request headers a server span carries. Not the rest: a header of any
// name may hold a credential (Proxy-Authorization, a gateway's token), which
// the platform redacts only by name, and each name a client invents would be
// an attribute key of its own.
const tracedRequestHeaders = new Set([
  "accept",
  "content-length",
  "content-type",
  "host",
  "traceparent",
  "user-agent",
  "x-correlation-id"
])
const requestHeaderPrefix = "http.request.header."

/**
 * The HTTP server span as the platform's tracer makes it, kept to the
 * headers above, and ended as an error for a 5xx answer (which the
 * platform ends as a success: the answer was written), as OpenTelemetry's
 * HTTP conventions ask.
 */
const serverSpan = (span: Tracer.Span): Tracer.Span => {
  let status = 0
  const attribute = (key: string, value: unknown) => {
    if (key.startsWith(requestHeaderPrefix) && !tracedRequestHeaders.has(key.slice(requestHeaderPrefix.length))) {
      return
    }
    if (key === "http.response.status_code") status = Number(value)
    span.attribute(key, value)
  }
  const end = (endTime: bigint, exit: Exit.Exit<unknown, unknown>) =>
    span.end(endTime, status >= 500 && Exit.isSuccess(exit) ? Exit.fail(`HTTP ${status}`) : exit)
  return new Proxy(span, {
    get: (target, property) =>
      property === "attribute" ? attribute : property === "end" ? end : Reflect.get(target, property, target)
  })
}

/**
 * `tracer`, with its HTTP server spans kept to a few request headers and
 * ended as errors for 5xx answers. `layerTracing` uses it.
 *
 * @since 0.1.0
 * @category tracing
 */
export const withServerSpans = (tracer: Tracer.Tracer): Tracer.Tracer =>
  Tracer.make({
    span: (name, parent, context, links, startTime, kind, options) => {
      const span = tracer.span(name, parent, context, links, startTime, kind, options)
      return kind === "server" ? serverSpan(span) : span
    },
    context: tracer.context
  })

/**
 * The request target in origin form (`/api/v1/orders?…`): an absolute-form
 * target (`http://host/api/v1/orders`), which HTTP/1.1 servers must accept,
 * loses its scheme and authority, as the router's own matching does, so the
 * body checks and route labels see the path the router routes.
 *
 * @since 0.1.0
 * @category routes
 */
export const originForm = (url: string): string => {
  if (url.startsWith("/")) return url
  const authority = /^https?:\/\/[^/?#]*/i.exec(url)
  if (authority === null) return url
  const rest = url.slice(authority[0].length)
  return rest.startsWith("/") ? rest : `/${rest}`
}

/**
 * The path the router matches: origin form, no query, percent-escapes
 * decoded as the router decodes them (`decodeURI`: `/%61pi` is `/api`, an
 * escaped `/` stays one; "" when an escape is malformed, a path no route
 * has), and no trailing slash, which it ignores. A `;`
 * stays in: the router would cut the path there, and the edge answers 404
 * instead (`hasPathParameters`).
 *
 * @since 0.1.0
 * @category routes
 */
export const routedPath = (target: string): string => {
  const url = originForm(target)
  const end = url.search(/[?#]/)
  let path = end === -1 ? url : url.slice(0, end)
  if (path.includes("%")) {
    try {
      path = decodeURI(path)
    } catch {
      // Malformed: the router finds no route for it, and neither does a
      // route table (the raw path would fit a template's parameter).
      return ""
    }
  }
  return path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path
}

/**
 * Whether the path (before the query) has a `;` or a `#`: the router cuts
 * the path at either (`/api/v1/orders;x` would be `/api/v1/orders`), where
 * the API's paths are matched as written.
 *
 * @since 0.1.0
 * @category routes
 */
export const hasPathParameters = (target: string): boolean => {
  const url = originForm(target)
  const query = url.indexOf("?")
  const path = query === -1 ? url : url.slice(0, query)
  return path.includes(";") || path.includes("#")
}

const matches = (template: ReadonlyArray<string>, parts: ReadonlyArray<string>): boolean => {
  if (template.length !== parts.length) return false
  for (let i = 0; i < template.length; i++) {
    const expected = template[i]!
    const actual = parts[i]!
    if (expected.startsWith(":") ? actual === "" : expected !== actual) return false
  }
  return true
}

/**
 * HTTP server spans named as OpenTelemetry's conventions say:
 * `{method} {route}` (`POST /api/v1/orders`), or the method alone when no
 * route matches. Apply to the layer that serves the app.
 *
 * @since 0.1.0
 * @category tracing
 */
export const withSpanNames = (routes: RouteTable) => <A, E, R>(layer: Layer.Layer<A, E, R>): Layer.Layer<A, E, R> =>
  HttpMiddleware.withSpanNameGenerator(layer, (request) => {
    const route = routes.find(request.method, request.url)
    return route === unmatchedRoute ? request.method : `${request.method} ${route}`
  })

// -----------------------------------------------------------------------------
// tracing
// -----------------------------------------------------------------------------

// Scrapes and probes come every few seconds: spans of them would be noise.
const untraced = (request: HttpServerRequest.HttpServerRequest): boolean => {
  const path = routedPath(request.url)
  return path === "/metrics" || path.startsWith("/health/")
}

/**
 * Tracing on, through OpenTelemetry's Node SDK, with the span processor
 * `spanProcessor` makes when the layer is built (a batch processor with an
 * OTLP exporter in production; an in-memory exporter in tests). Requests to
 * `/metrics` and `/health/*` are not traced. Spans still queued are flushed
 * when the layer closes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTracing = (options: {
  readonly spanProcessor: LazyArg<SpanProcessor>
  readonly serviceName: string
}): Layer.Layer<never> =>
  Layer.merge(
    Layer.unwrapEffect(Effect.map(Effect.tracer, (tracer) => Layer.setTracer(withServerSpans(tracer)))).pipe(
      Layer.provide(NodeSdk.layer(() => ({
        spanProcessor: options.spanProcessor(),
        resource: { serviceName: options.serviceName }
      })))
    ),
    Layer.locallyScoped(HttpMiddleware.currentTracerDisabledWhen, untraced)
  )

/**
 * Tracing off: Effect's tracer disabled, so `withSpan` and `Effect.fn` make
 * no-op spans, and the HTTP server's tracer skips every request (no URL
 * parsed, no span, no attributes).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTracingOff: Layer.Layer<never> = Layer.merge(
  Layer.setTracerEnabled(false),
  Layer.locallyScoped(HttpMiddleware.currentTracerDisabledWhen, constTrue)
)

/**
 * Tracing from configuration: exported over OTLP/HTTP (a batch span
 * processor, resource `service.name` from `OTEL_SERVICE_NAME`) when an
 * endpoint is configured, else off. The exporter reads its other settings
 * (`OTEL_EXPORTER_OTLP_HEADERS`, timeouts, compression) from the
 * environment itself.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTracingFromConfig: Layer.Layer<never, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const config = yield* Config.observability
    if (Option.isNone(config.tracesUrl)) return layerTracingOff
    const url = config.tracesUrl.value
    yield* Effect.logInfo("tracing.otlp").pipe(
      Effect.annotateLogs({ endpoint: describeUrl(url), serviceName: config.serviceName })
    )
    return layerTracing({
      spanProcessor: () => new BatchSpanProcessor(new OTLPTraceExporter({ url })),
      serviceName: config.serviceName
    })
  })
)

// Where spans go, without credentials a URL may carry, for the log.
const describeUrl = (url: string) => {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`
  } catch {
    return "(unparseable URL)"
  }
}

/**
 * The W3C `traceparent` of the span a context runs in, when it is one of
 * this service's own (not the caller's, passed in): what a response carries
 * so a client can find the trace of its request.
 *
 * @since 0.1.0
 * @category tracing
 */
export const traceparentOf = (context: Context.Context<never>): string | undefined => {
  const span = Context.getOption(context, Tracer.ParentSpan)
  return Option.isSome(span) && span.value._tag === "Span"
    ? HttpTraceContext.toHeaders(span.value).traceparent
    : undefined
}

/**
 * Why a request's `Host` is refused, if it is: an HTTP/1.1 request names its
 * host once (RFC 9112, 3.2). Node, told not to answer a missing one itself
 * with a bare 400 (`requireHostHeader: false`), keeps the first of two.
 *
 * @since 0.1.0
 * @category utils
 */
export const hostRefusal = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const incoming = request.source as Partial<IncomingMessage> | undefined
  const raw = incoming?.rawHeaders
  // Not from Node's parser (a web request): its URL has the host.
  if (raw === undefined) return undefined
  let hosts = 0
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === "host") hosts++
  }
  if (hosts > 1) return "REPEATED_HOST"
  return hosts === 0 && (incoming!.httpVersionMajor! > 1 || incoming!.httpVersionMinor! >= 1)
    ? "MISSING_HOST"
    : undefined
}
