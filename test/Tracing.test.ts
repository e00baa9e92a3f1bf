import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type * as Tracer from "effect/Tracer"
import { Tracing } from "../src/index.js"
import { parentId, recordingTracer } from "./support/Tracing.js"

const exitOf = (span: Tracer.Span) => span.status._tag === "Ended" ? span.status.exit : undefined

describe("Tracing.withSpan", () => {
  it.effect("makes the span Effect.withSpan makes: parent, kind, attributes, annotations, links, children", () =>
    Effect.gen(function*() {
      const { spans, tracer } = yield* recordingTracer
      const linked = yield* Effect.makeSpan("linked")
      const inner = Effect.void.pipe(Effect.withSpan("inner"))
      const result = yield* Effect.succeed(42).pipe(
        Effect.zipLeft(inner),
        Tracing.withSpan("lean", { kind: "client", attributes: { "db.system": "postgresql" } }),
        Effect.annotateSpans("tenant", "t-1"),
        Effect.linkSpans(linked),
        Effect.withSpan("outer"),
        Effect.withTracer(tracer)
      )
      assert.strictEqual(result, 42)
      const byName = (name: string) => spans.find((span) => span.name === name)!
      const [outer, lean, child] = [byName("outer"), byName("lean"), byName("inner")]
      assert.strictEqual(parentId(lean), outer.spanId)
      assert.strictEqual(parentId(child), lean.spanId)
      assert.strictEqual(lean.traceId, outer.traceId)
      assert.strictEqual(lean.kind, "client")
      assert.strictEqual(lean.attributes.get("db.system"), "postgresql")
      assert.strictEqual(lean.attributes.get("tenant"), "t-1")
      assert.deepStrictEqual(lean.links.map((link) => link.span.spanId), [linked.spanId])
      assert.isFalse(lean.attributes.has("code.stacktrace"))
      assert.isTrue(Exit.isSuccess(exitOf(lean)!))
      // The caller's parent span is back after it.
      const after = yield* Effect.currentSpan.pipe(Effect.option, Tracing.withSpan("lean"))
      assert.isTrue(Option.isSome(after))
      assert.isTrue(Option.isNone(yield* Effect.option(Effect.currentSpan)))
    }))

  it.effect("ends the span with the exit: failure and interruption", () =>
    Effect.gen(function*() {
      const { spans, tracer } = yield* recordingTracer
      yield* Effect.exit(Effect.fail("no").pipe(Tracing.withSpan("failing"), Effect.withTracer(tracer)))
      const fiber = yield* Effect.never.pipe(Tracing.withSpan("interrupted"), Effect.withTracer(tracer), Effect.fork)
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(fiber)
      const failing = spans.find((span) => span.name === "failing")!
      const interrupted = spans.find((span) => span.name === "interrupted")!
      assert.deepStrictEqual(exitOf(failing), Exit.fail("no"))
      const exit = exitOf(interrupted)
      assert.isDefined(exit)
      assert.isTrue(Exit.isInterrupted(exit!))
    }))

  it.effect("makes no span with tracing off", () =>
    Effect.gen(function*() {
      const { spans, tracer } = yield* recordingTracer
      const span = yield* Effect.currentSpan.pipe(
        Effect.option,
        Tracing.withSpan("off"),
        Effect.withTracerEnabled(false),
        Effect.withTracer(tracer)
      )
      assert.deepStrictEqual(spans, [])
      assert.isTrue(Option.isNone(span))
    }))
})
