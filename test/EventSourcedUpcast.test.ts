/**
 * A stream whose stored events an earlier schema wrote: without an upcast,
 * a field renamed or added without a default leaves every command of that
 * aggregate a defect, for good; `EventSourced.make`'s `upcast` rewrites the
 * stored payload before it is decoded, as `Reaction.make`'s does, and the
 * stream folds again. An upcast that throws is a defect naming the event.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware, Outbox } from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

// Version 1 of the event, as it was stored.
class NotedV1 extends DomainEvent.Class<NotedV1>()("Noted", { noteId: Schema.String, text: Schema.String }) {}
// Now: `text` renamed `body`, and `author` added without a default.
class Noted extends DomainEvent.Class<Noted>()("Noted", {
  noteId: Schema.String,
  body: Schema.String,
  author: Schema.String
}) {}

class Note extends Command.Class<Note>()("Note", {
  payload: { noteId: Schema.String, body: Schema.String },
  success: Schema.Array(Schema.String),
  failure: CommandError.ConcurrencyConflict
}) {}

const deciderWith = (upcast?: (payload: unknown, envelope: DomainEvent.Envelope) => unknown) =>
  EventSourced.make({
    aggregateType: "Note",
    commands: [Note],
    events: [Noted],
    initialState: [] as ReadonlyArray<string>,
    evolve: (bodies, event) => [...bodies, `${event.author}: ${event.body}`],
    decide: {
      Note: (command) => Effect.succeed([new Noted({ noteId: command.noteId, body: command.body, author: "me" })])
    },
    ...(upcast === undefined ? {} : { upcast })
  })

const busOf = (decider: ReturnType<typeof deciderWith>) =>
  CommandBus.make([Note], {
    Note: EventSourced.handler(Note, { decider, aggregateId: (command) => command.noteId, success: (bodies) => bodies })
  }).pipe(CommandBus.withMiddleware(Middleware.transaction))

const storedV1 = Effect.gen(function*() {
  const envelopes = yield* DomainEvent.stamp(
    { commandId: crypto.randomUUID(), correlationId: crypto.randomUUID(), timestamp: DateTime.unsafeNow() },
    [DomainEvent.draft(
      { aggregateType: "Note", aggregateId: "n", aggregateVersion: 1 },
      new NotedV1({ noteId: "n", text: "old" })
    )]
  )
  yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.append(envelopes))
})

const defectOf = (exit: Exit.Exit<unknown, unknown>): string => {
  assert(Exit.isFailure(exit))
  const defect = Cause.dieOption(exit.cause)
  assert(defect._tag === "Some")
  return String((defect.value as Error).message)
}

describe("EventSourced upcast", () => {
  it.effect("without one, a stored event of the old schema is a defect", () =>
    Effect.gen(function*() {
      yield* storedV1
      const exit = yield* Effect.exit(busOf(deciderWith()).dispatch(new Note({ noteId: "n", body: "new" })))
      expect(defectOf(exit)).toContain("its stored event Noted at version 1")
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("an upcast rewrites the stored payload before it decodes: the stream folds", () =>
    Effect.gen(function*() {
      yield* storedV1
      const seen: Array<unknown> = []
      const decider = deciderWith((payload, envelope) => {
        seen.push(payload)
        if (envelope.type !== "Noted" || !Predicate.isRecord(payload) || !("text" in payload)) return payload
        const { text, ...rest } = payload
        return { ...rest, body: text, author: "someone" }
      })
      expect(yield* busOf(decider).dispatch(new Note({ noteId: "n", body: "new" }))).toEqual([
        "someone: old",
        "me: new"
      ])
      expect(seen[0]).toMatchObject({ noteId: "n", text: "old" })
      // Events of the current schema go through it unchanged.
      expect(yield* busOf(decider).dispatch(new Note({ noteId: "n", body: "newer" }))).toEqual([
        "someone: old",
        "me: new",
        "me: newer"
      ])
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("an upcast that throws is a defect naming the event", () =>
    Effect.gen(function*() {
      yield* storedV1
      const decider = deciderWith(() => {
        throw new Error("unexpected shape")
      })
      const exit = yield* Effect.exit(busOf(decider).dispatch(new Note({ noteId: "n", body: "new" })))
      expect(defectOf(exit)).toContain("its stored event Noted at version 1")
      expect(defectOf(exit)).toContain("its upcast threw Error: unexpected shape")
    }).pipe(Effect.provide(InMemory.layer)))
})
