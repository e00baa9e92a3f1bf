/**
 * The HTTP server spans the service exports: the platform's tracer writes
 * every request header as an attribute and ends a written 5xx answer as a
 * success; `Observability.withServerSpans` keeps a few headers and ends a 5xx
 * as an error. Other spans pass through as they are.
 */
import { expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Tracer from "effect/Tracer"
import * as Observability from "../../src/server/Observability.js"

/** Spans made with `withServerSpans` over Effect's own tracer, which keeps what it is given. */
const recording = Effect.map(Effect.tracer, (native) => {
  const made: Array<Tracer.Span> = []
  const tracer = Observability.withServerSpans(Tracer.make({
    span: (...args) => {
      const span = native.span(...args)
      made.push(span)
      return span
    },
    context: native.context
  }))
  return { made, tracer }
})

const answer = (kind: Tracer.SpanKind, status: number) =>
  Effect.useSpan("POST /api/v1/orders", { kind }, (span) =>
    Effect.sync(() => {
      span.attribute("http.request.header.content-type", "application/json")
      span.attribute("http.request.header.proxy-authorization", "Bearer secret")
      span.attribute("http.request.header.x-invented-1", "v")
      span.attribute("http.response.status_code", status)
    }))

it.effect("a server span keeps only the allowed request headers, and a 5xx ends it as an error", () =>
  Effect.gen(function*() {
    const { made, tracer } = yield* recording
    yield* Effect.withTracer(
      Effect.all([answer("server", 503), answer("server", 201), answer("internal", 503)]),
      tracer
    )
    const [failed, succeeded, inner] = made
    expect([...failed!.attributes.keys()]).toEqual([
      "http.request.header.content-type",
      "http.response.status_code"
    ])
    expect(failed!.status._tag === "Ended" && Exit.isFailure(failed!.status.exit)).toBe(true)
    expect(succeeded!.status._tag === "Ended" && Exit.isSuccess(succeeded!.status.exit)).toBe(true)
    // Not a server span: as it was made.
    expect(inner!.attributes.get("http.request.header.proxy-authorization")).toBe("Bearer secret")
    expect(inner!.status._tag === "Ended" && Exit.isSuccess(inner!.status.exit)).toBe(true)
  }))
