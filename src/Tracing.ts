/**
 * Spans for paths that run many per command. `Effect.withSpan` costs a span
 * effect, a region to end it and an acquire/release of the fiber's context,
 * and `Effect.fn` a call-site stack capture besides: on the machine the
 * benches ran on, 12 and 20 µs per call against 5–7 µs here, for the same
 * span (name, kind, attributes, parent, links, the fiber's span annotations,
 * ended with the exit). No call-site stack trace is captured.
 *
 * @since 0.1.0
 */
import type * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import type * as Tracer from "effect/Tracer"
import * as Span from "./internal/span.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface SpanOptions {
  readonly kind?: Tracer.SpanKind | undefined
  readonly attributes?: Readonly<Record<string, unknown>> | undefined
}

/**
 * Runs `self` in a span named `name`, the parent of the spans made inside it.
 * With tracing off it adds nothing.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withSpan: {
  (name: string, options?: SpanOptions): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, name: string, options?: SpanOptions): Effect.Effect<A, E, R>
} = dual(
  (args) => typeof args[0] !== "string",
  <A, E, R>(self: Effect.Effect<A, E, R>, name: string, options: SpanOptions = {}): Effect.Effect<A, E, R> =>
    Span.around(self, name, { kind: options.kind ?? "internal", attributes: options.attributes })
)
