/**
 * Spans as Effect's native tracer makes them, kept for a test to inspect.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"

/** A tracer that makes spans with the native one and keeps every span it makes. */
export const recordingTracer = Effect.map(Effect.tracer, (native) => {
  const spans: Array<Tracer.Span> = []
  const tracer = Tracer.make({
    span: (...args) => {
      const span = native.span(...args)
      spans.push(span)
      return span
    },
    context: (f, fiber) => native.context(f, fiber)
  })
  return { spans, tracer }
})

/** The id of a span's parent, if it has one. */
export const parentId = (span: Tracer.Span): string | undefined =>
  Option.getOrUndefined(Option.map(span.parent, (parent) => parent.spanId))
