import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { DomainEvent } from "../src/index.js"

class Renamed extends DomainEvent.Class<Renamed>()("Renamed", {
  name: Schema.String,
  tags: Schema.Array(Schema.String),
  note: Schema.optionalWith(Schema.String, { exact: true })
}) {}

class Scheduled extends DomainEvent.Class<Scheduled>()("Scheduled", {
  at: Schema.DateTimeUtc,
  every: Schema.NumberFromString
}) {}

const command = {
  commandId: "0b9d7c52-5f0e-4c8a-9d7e-0a4c7f1e2d33",
  correlationId: "5d0e8f6c-2b8a-4b0e-8c57-3a7d9d2f6e11",
  timestamp: DateTime.unsafeMake("2024-05-01T11:00:00.000Z")
}

const aggregate = { aggregateType: "Account", aggregateId: "acc-1", aggregateVersion: 1 }

describe("DomainEvent", () => {
  describe("stamp", () => {
    it.effect("stores each payload as its schema encodes it", () =>
      Effect.gen(function*() {
        const at = DateTime.unsafeMake("2024-05-01T12:00:00.000Z")
        const events = [
          new Renamed({ name: "Savings", tags: ["a"] }),
          new Renamed({ name: "Checking", tags: [], note: "n" }),
          new Scheduled({ at, every: 5 })
        ]
        const stamped = yield* DomainEvent.stamp(command, events.map((event) => DomainEvent.draft(aggregate, event)))
        const encoded = yield* Effect.forEach(events, (event) =>
          Schema.encodeUnknown(event.constructor as unknown as Schema.Schema<unknown, unknown>)(event))
        assert.deepStrictEqual(
          stamped.map((envelope) =>
            envelope.payload
          ),
          encoded
        )
        assert.deepStrictEqual(stamped.map((envelope) => envelope.payload), [
          { _tag: "Renamed", name: "Savings", tags: ["a"] },
          { _tag: "Renamed", name: "Checking", tags: [], note: "n" },
          { _tag: "Scheduled", at: "2024-05-01T12:00:00.000Z", every: "5" }
        ])
        for (const envelope of stamped) {
          assert.strictEqual(envelope.correlationId, command.correlationId)
          assert.strictEqual(envelope.causationId, command.commandId)
        }
      }))

    it.effect("dies on an event that is a plain object, saying it must be a DomainEvent.Class", () =>
      Effect.gen(function*() {
        for (const event of [{ _tag: "Pinged" }, Object.assign(Object.create(null), { _tag: "Pinged" })]) {
          const exit = yield* Effect.exit(DomainEvent.stamp(command, [DomainEvent.draft(aggregate, event)]))
          assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
          if (Exit.isFailure(exit)) {
            assert.include(
              String(Cause.squash(exit.cause)),
              "Pinged: an event must be an instance of a DomainEvent.Class"
            )
          }
        }
      }))

    it.effect("dies on a payload that does not encode to JSON, naming the value", () =>
      Effect.gen(function*() {
        class Clocked extends DomainEvent.Class<Clocked>()("Clocked", {
          at: Schema.DateFromSelf,
          reading: Schema.Number
        }) {}
        const clocked = new Clocked({ at: new Date(0), reading: 1 })
        const exit = yield* Effect.exit(DomainEvent.stamp(command, [DomainEvent.draft(aggregate, clocked)]))
        const defect = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined
        assert.include((defect as Error | undefined)?.message, "Clocked: encoded, $.at is a Date")
        // JSON writes an array's undefined as null, which its schema may refuse (or read as another value).
        class Seated extends DomainEvent.Class<Seated>()("Seated", {
          seats: Schema.Array(Schema.UndefinedOr(Schema.String))
        }) {}
        const seated = yield* Effect.exit(DomainEvent.encode(new Seated({ seats: ["a", undefined] })))
        const seatedDefect = Exit.isFailure(seated) ? Option.getOrUndefined(Cause.dieOption(seated.cause)) : undefined
        assert.include((seatedDefect as Error | undefined)?.message, "Seated: encoded, $.seats[1] is undefined")
        class Measured extends DomainEvent.Class<Measured>()("Measured", { reading: Schema.Number }) {}
        for (const reading of [Number.NaN, Infinity]) {
          const exit = yield* Effect.exit(DomainEvent.encode(new Measured({ reading })))
          const defect = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined
          assert.include((defect as Error | undefined)?.message, `Measured: encoded, $.reading is ${reading}`)
        }
        // JSON holds these, PostgreSQL's jsonb does not: the in-memory outbox refuses them as the SQL one does.
        class Noted extends DomainEvent.Class<Noted>()("Noted", {
          text: Schema.String,
          by: Schema.Record({ key: Schema.String, value: Schema.String })
        }) {}
        for (
          const [noted, where] of [
            [new Noted({ text: "a\u0000b", by: {} }), "$.text"],
            [new Noted({ text: "\ud800", by: {} }), "$.text"],
            [new Noted({ text: "ok", by: { "k\u0000": "v" } }), "a key of $.by"]
          ] as const
        ) {
          const exit = yield* Effect.exit(DomainEvent.stamp(command, [DomainEvent.draft(aggregate, noted)]))
          const defect = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined
          assert.include(
            (defect as Error | undefined)?.message,
            `Noted: encoded, ${where} is a string with a NUL character or a lone surrogate`
          )
        }
      }))
  })
})
