/**
 * Spans made in the current step, without the effects `Effect.withSpan`
 * spends on it (`makeSpan`, `useSpan`'s region, `withParentSpan`'s
 * acquire/release of the context): a span costs its tracer's work and one
 * `onExit`, which matters on paths that run several per command.
 *
 * @internal
 */
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"

/** @internal */
export interface Options {
  readonly kind: Tracer.SpanKind
  readonly attributes?: Readonly<Record<string, unknown>> | undefined
}

const noStackTrace = { captureStackTrace: false } as const

/**
 * What `Effect.makeSpan` does when tracing is on: the parent is the context's
 * span unless its propagation is disabled, the fiber's span links and
 * annotations join the span's own attributes, and the start is read from the
 * fiber's clock when timing is on. Check `currentTracerEnabled` first: with
 * tracing off, every span is a no-op one.
 *
 * @internal
 */
export const start = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  name: string,
  options: Options
): Tracer.Span => {
  const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
  const span = fiber.currentTracer.span(
    name,
    propagated(Context.getOption(fiber.currentContext, Tracer.ParentSpan)),
    Context.empty(),
    Chunk.toReadonlyArray(fiber.getFiberRef(FiberRef.currentTracerSpanLinks)),
    fiber.getFiberRef(FiberRef.currentTracerTimingEnabled) ? clock.unsafeCurrentTimeNanos() : BigInt(0),
    options.kind,
    noStackTrace
  )
  const annotations = fiber.getFiberRef(FiberRef.currentTracerSpanAnnotations)
  if (HashMap.size(annotations) > 0) HashMap.forEach(annotations, (value, key) => span.attribute(key, value))
  if (options.attributes !== undefined) {
    for (const key in options.attributes) span.attribute(key, options.attributes[key])
  }
  return span
}

const propagated = (span: Option.Option<Tracer.AnySpan>): Option.Option<Tracer.AnySpan> => {
  if (Option.isNone(span) || !Context.get(span.value.context, Tracer.DisablePropagation)) return span
  return span.value._tag === "Span" ? propagated(span.value.parent) : Option.none()
}

/**
 * Ends `span` with `exit`, unless something ended it already.
 *
 * @internal
 */
export const end = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  span: Tracer.Span,
  exit: Exit.Exit<unknown, unknown>
): void => {
  if (span.status._tag === "Ended") return
  const timing = fiber.getFiberRef(FiberRef.currentTracerTimingEnabled)
  span.end(timing ? Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeNanos() : BigInt(0), exit)
}

/**
 * `Effect.withSpan(self, name, { captureStackTrace: false, ... })` in one
 * region: the span is the parent of the spans made inside `self`. `onEnd`
 * may add attributes from the exit before the span ends.
 *
 * @internal
 */
export const around = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  name: string,
  options: Options,
  onEnd?: (span: Tracer.Span, exit: Exit.Exit<A, E>) => void
): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime<A, E, R>((fiber) => {
    if (!fiber.getFiberRef(FiberRef.currentTracerEnabled)) return self
    const span = start(fiber, name, options)
    const outer = fiber.currentContext
    return Effect.onExit(
      Effect.zipRight(FiberRef.set(FiberRef.currentContext, Context.add(outer, Tracer.ParentSpan, span)), self),
      (exit) => {
        if (onEnd !== undefined) onEnd(span, exit)
        end(fiber, span, exit)
        return FiberRef.set(FiberRef.currentContext, outer)
      }
    )
  })

/**
 * A span around `self` that no span is made inside (a leaf, such as one SQL
 * statement): it need not become the context's parent span.
 *
 * @internal
 */
export const leaf = <A, E, R>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  self: Effect.Effect<A, E, R>,
  name: string,
  options: Options
): Effect.Effect<A, E, R> => {
  const span = start(fiber, name, options)
  return Effect.onExit(self, (exit) => {
    end(fiber, span, exit)
    return Effect.void
  })
}
