/**
 * Edges of the bus that reviews found broken: a deadline beyond what a
 * timer can hold, the retry counter when retries run out, an own
 * `__proto__` key in a fingerprinted payload, input whose reading throws,
 * a handler that breaks its type, and lengths counted in code points.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, Handler, Middleware, Outbox } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"
import { read } from "./support/Metrics.js"

class Ping extends Command.Class<Ping>()("Ping", {
  payload: { n: Schema.Number },
  success: Schema.Void,
  failure: CommandError.ConcurrencyConflict,
  retryable: ["ConcurrencyConflict"]
}) {}

class Note extends Command.Class<Note>()("Note", {
  payload: { meta: Schema.Unknown },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Lines extends Command.Class<Lines>()("Lines", {
  payload: { lines: Schema.Array(Schema.Number) },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const ok = () => Effect.succeed(Handler.result(undefined))

class Noted extends DomainEvent.Class<Noted>()("Noted", { note: Schema.String }) {}

class Jot extends Command.Class<Jot>()("Jot", {
  payload: { note: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

/** A jot's result: its note, as an event. */
const jotted = (note: string) =>
  Handler.result(undefined, [
    DomainEvent.draft({ aggregateType: "Note", aggregateId: note, aggregateVersion: 1 }, new Noted({ note }))
  ])

/** The notes the outbox holds, in order. */
const publishedNotes = Effect.flatMap(
  Outbox.Outbox,
  (outbox) =>
    Effect.map(outbox.read({ after: 0, limit: 10 }), (events) => events.map((entry) => entry.event.aggregateId))
)

describe("bus edges", () => {
  // 1. Middleware.timeout on the live clock: a deadline >= 2^31 ms (Infinity, "30 days")
  // goes to setTimeout, which clamps it to 1 ms.
  for (const limit of [Duration.infinity, Duration.days(30)]) {
    it.live(`timeout(${Duration.format(limit)}) does not time out a 20 ms dispatch`, () =>
      Effect.gen(function*() {
        const bus = CommandBus.make([Ping], {
          Ping: () => Effect.as(Effect.sleep("20 millis"), Handler.result(undefined))
        }).pipe(CommandBus.withMiddleware(Middleware.timeout(limit)))
        const exit = yield* Effect.exit(bus.dispatch(new Ping({ n: 1 })))
        assert.isTrue(Exit.isSuccess(exit), String(Exit.isFailure(exit) ? exit.cause : ""))
      }).pipe(Effect.provide(InMemory.layer)))
  }

  // 2. command_bus_retries_total counts the final, not-retried failure too.
  it.effect("retries_total counts re-runs, not failures, when retries run out", () =>
    Effect.gen(function*() {
      const conflict = new CommandError.ConcurrencyConflict({
        aggregateType: "a",
        aggregateId: "b",
        expectedVersion: 1
      })
      let runs = 0
      const bus = CommandBus.make([Ping], {
        Ping: () => {
          runs++
          return Effect.fail(conflict)
        }
      }).pipe(CommandBus.withMiddleware(Middleware.retry({ schedule: Schedule.recurs(2) })))
      const tags = { command: "Ping", error: "ConcurrencyConflict" }
      const before = (yield* read("command_bus_retries_total", tags)).count
      yield* Effect.exit(bus.dispatch(new Ping({ n: 1 })))
      const after = (yield* read("command_bus_retries_total", tags)).count
      assert.strictEqual(runs, 3)
      assert.strictEqual(after - before, runs - 1)
    }).pipe(Effect.provide(InMemory.layer)))

  // 3. canonicalJson loses an own "__proto__" key: different payloads, same fingerprint.
  it.effect("payloads differing only under an own __proto__ key get different fingerprints", () =>
    Effect.gen(function*() {
      const decode = Schema.decodeUnknownSync(Note)
      const a = decode(JSON.parse("{\"_tag\":\"Note\",\"meta\":{\"__proto__\":{\"admin\":true}}}"))
      const b = decode(JSON.parse("{\"_tag\":\"Note\",\"meta\":{\"__proto__\":{\"admin\":false}}}"))
      assert.notStrictEqual(
        JSON.stringify(Schema.encodeSync(Note)(a).meta),
        JSON.stringify(Schema.encodeSync(Note)(b).meta)
      )
      assert.notStrictEqual(yield* Command.fingerprint(Note, a), yield* Command.fingerprint(Note, b))
    }))

  // 4. dispatchUnknown throws synchronously on an input whose properties throw when read.
  it.effect("dispatchUnknown does not throw on an input with a throwing getter", () =>
    Effect.gen(function*() {
      const bus = CommandBus.make([Ping], { Ping: ok })
      const inputs = [
        {
          get _tag(): string {
            throw new Error("boom")
          }
        },
        {
          _tag: "Ping",
          get n(): number {
            throw new Error("boom")
          }
        }
      ]
      for (const input of inputs) {
        let effect: Effect.Effect<unknown, unknown, unknown> | undefined
        assert.doesNotThrow(() => {
          effect = bus.dispatchUnknown(input)
        })
        if (effect !== undefined) {
          const exit = yield* Effect.exit(effect as Effect.Effect<unknown, unknown, never>)
          assert.isTrue(Exit.isFailure(exit))
        }
      }
    }).pipe(Effect.provide(InMemory.layer)))

  // Untyped input of any size or depth: an InvalidCommand of bounded size, never a defect.
  it.effect("dispatchUnknown: input nested too deep to format, or with many or huge issues, is a bounded InvalidCommand", () =>
    Effect.gen(function*() {
      const bus = CommandBus.make([Ping, Lines], { Ping: ok, Lines: ok })
      let deep: unknown = []
      for (let i = 0; i < 20_000; i++) deep = [deep]
      const nested = yield* Effect.flip(bus.dispatchUnknown({ _tag: "Ping", n: deep }))
      assert.instanceOf(nested, CommandError.InvalidCommand)
      assert.deepStrictEqual(nested.issues.map((issue) => issue.message), [
        "the input is invalid, and nested too deep to say where"
      ])

      const many = yield* Effect.flip(
        bus.dispatchUnknown({ _tag: "Lines", lines: Array.from({ length: 5000 }, () => "not a number") })
      )
      assert.instanceOf(many, CommandError.InvalidCommand)
      assert.strictEqual(many.issues.length, 100)
      assert.strictEqual(many.issues[99]!.message, "and 4901 more issues")
      // Exactly 100: all of them, none saying "more".
      const hundred = yield* Effect.flip(
        bus.dispatchUnknown({ _tag: "Lines", lines: Array.from({ length: 100 }, () => "not a number") })
      )
      assert.instanceOf(hundred, CommandError.InvalidCommand)
      assert.deepStrictEqual(hundred.issues.map((issue) => issue.path[1]), Array.from({ length: 100 }, (_, i) => i))

      const huge = yield* Effect.flip(bus.dispatchUnknown({ _tag: "Ping", n: "x".repeat(100_000) }))
      assert.instanceOf(huge, CommandError.InvalidCommand)
      assert.isAtMost(huge.issues[0]!.message.length, 1000)
      assert.isAtLeast(huge.issues[0]!.message.length, 990)
      assert.match(huge.issues[0]!.message, /… \(\d+ more characters\)$/)

      // Keys of the input are quoted in a path: an excess one of any size is cut too.
      const keys = yield* Effect.flip(
        bus.dispatchUnknown({ _tag: "Ping", n: 1, ["k".repeat(1_000_000)]: 1, ["j".repeat(100_000)]: 2 })
      )
      assert.instanceOf(keys, CommandError.InvalidCommand)
      assert.strictEqual(keys.issues.length, 2)
      for (const issue of keys.issues) {
        assert.isAtMost(issue.path.length, 32)
        for (const segment of issue.path) assert.isAtMost(String(segment).length, 100)
        assert.isAtMost(issue.message.length, 1000)
      }
      assert.isBelow(JSON.stringify(keys).length, 5_000)

      // Counted in characters (code points), as every length here is, and never cut inside a surrogate pair.
      const lone = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/
      const emoji = yield* Effect.flip(
        bus.dispatchUnknown({ _tag: "Ping", n: "😀".repeat(5000), ["😀".repeat(150)]: 1, ["😀".repeat(60)]: 2 })
      )
      assert.instanceOf(emoji, CommandError.InvalidCommand)
      for (const issue of emoji.issues) {
        assert.isFalse(lone.test(issue.message), issue.message)
        assert.isAtMost([...issue.message].length, 1000)
        for (const segment of issue.path) {
          assert.isFalse(lone.test(String(segment)))
          assert.isAtMost([...String(segment)].length, 100)
        }
      }
      const cut = /… \((\d+) more characters\)$/
      const segment = String(emoji.issues.find((issue) => cut.test(String(issue.path[0])))!.path[0])
      const kept = [...segment.replace(cut, "")].length
      assert.strictEqual(kept + Number(cut.exec(segment)![1]), 150)
      // 60 of them are 120 UTF-16 units, and 60 characters: quoted whole.
      assert.isTrue(emoji.issues.some((issue) => issue.path[0] === "😀".repeat(60)))
      // A tag of 200 characters is quoted whole.
      const wide = yield* Effect.flip(bus.dispatchUnknown({ _tag: "😀".repeat(200) }))
      assert.instanceOf(wide, CommandError.UnknownCommand)
      assert.strictEqual(wide.commandType, "😀".repeat(200))

      // What a getter of the input throws is quoted within the bound, even a value with no string form.
      const thrown = yield* Effect.flip(bus.dispatchUnknown({
        get _tag(): string {
          throw new Error("x".repeat(1_000_000))
        }
      }))
      assert.instanceOf(thrown, CommandError.InvalidCommand)
      assert.isAtMost(thrown.issues[0]!.message.length, 1000)
      let opaque: Effect.Effect<unknown, unknown, unknown> | undefined
      assert.doesNotThrow(() => {
        opaque = bus.dispatchUnknown({
          get _tag(): string {
            throw Object.create(null)
          }
        })
      })
      const refused = yield* Effect.flip(opaque! as Effect.Effect<unknown, unknown, never>)
      assert.instanceOf(refused, CommandError.InvalidCommand)

      // So is a tag no command has.
      const unknown = yield* Effect.flip(bus.dispatchUnknown({ _tag: "t".repeat(5_000_000) }))
      assert.instanceOf(unknown, CommandError.UnknownCommand)
      assert.isAtMost(unknown.commandType.length, 255)
      assert.match(unknown.commandType, /^t+… \(\d+ more characters\)$/)
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("fingerprint of a payload nested too deep to hash is a defect that says so, not a throw", () =>
    Effect.gen(function*() {
      let deep: unknown = 0
      for (let i = 0; i < 20_000; i++) deep = [deep]
      const note = new Note({ meta: deep })
      let effect: Effect.Effect<string, unknown> | undefined
      assert.doesNotThrow(() => {
        effect = Command.fingerprint(Note, note)
      })
      const exit = yield* Effect.exit(effect!)
      assert.isTrue(Exit.isFailure(exit) && String(exit.cause).includes("the payload of Note cannot be hashed"))
    }))

  // 5. A bus without middleware throws synchronously when a handler returns no effect.
  it.effect("dispatch without middleware does not throw when a handler returns undefined", () =>
    Effect.gen(function*() {
      const bus = CommandBus.make([Ping], { Ping: (() => undefined) as any })
      let effect: Effect.Effect<unknown, unknown, unknown> | undefined
      assert.doesNotThrow(() => {
        effect = bus.dispatch(new Ping({ n: 1 }))
      })
      if (effect !== undefined) {
        const exit = yield* Effect.exit(effect as Effect.Effect<unknown, unknown, never>)
        assert.isTrue(Exit.isFailure(exit))
      }
    }).pipe(Effect.provide(InMemory.layer)))

  // 6. TextOfLength counts UTF-16 units for the minimum when the string is short.
  it("TextOfLength(2, 10) refuses one code point written as a surrogate pair", () => {
    assert.isFalse(Schema.is(Command.TextOfLength(2, 10))("\u{1F600}"))
  })

  // It inherited the ended transaction's pending events, and appended its
  // own there, where nothing would ever publish them.
  it.effect("a dispatch from a fiber forked in a handler, after that dispatch ended, publishes its events", () =>
    Effect.gen(function*() {
      const ended = yield* Deferred.make<void>()
      let forked: Fiber.RuntimeFiber<unknown> | undefined
      // Annotated: the handler dispatches on the bus it belongs to.
      const bus: { readonly dispatch: (jot: Jot) => Effect.Effect<void, unknown, any> } = CommandBus.make([Jot], {
        Jot: (command) =>
          Effect.gen(function*() {
            if (command.note === "outer") {
              forked = yield* Effect.forkDaemon(
                Effect.zipRight(Deferred.await(ended), Effect.orDie(bus.dispatch(new Jot({ note: "forked" }))))
              )
            }
            return jotted(command.note)
          })
      }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      yield* bus.dispatch(new Jot({ note: "outer" }))
      yield* Deferred.succeed(ended, undefined)
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(forked!)))
      assert.deepStrictEqual(yield* publishedNotes, ["outer", "forked"])
    }).pipe(Effect.provide(InMemory.layer)))

  // Begun while the outer was open, it ended after: its events were pushed
  // into the ended transaction's and never published, while it succeeded.
  it.effect("a dispatch a forked fiber began in a handler's transaction, ending after it, fails as on a database", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const ended = yield* Deferred.make<void>()
      let forked: Fiber.RuntimeFiber<unknown, unknown> | undefined
      const bus: { readonly dispatch: (jot: Jot) => Effect.Effect<void, unknown, any> } = CommandBus.make([Jot], {
        Jot: (command) =>
          Effect.gen(function*() {
            if (command.note === "outer") {
              forked = yield* Effect.forkDaemon(bus.dispatch(new Jot({ note: "forked" })))
              yield* Deferred.await(started)
            } else {
              yield* Deferred.succeed(started, undefined)
              yield* Deferred.await(ended)
            }
            return jotted(command.note)
          })
      }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
      yield* bus.dispatch(new Jot({ note: "outer" }))
      yield* Deferred.succeed(ended, undefined)
      const exit = yield* Fiber.await(forked!)
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(exit))
      assert.deepStrictEqual(yield* publishedNotes, ["outer"])
    }).pipe(Effect.provide(InMemory.layer)))
})
