// The README's middleware example, verbatim between the markers, run as a test.
import { expect, it } from "@effect/vitest"
import * as Ref from "effect/Ref"
// README:begin
import { Context, Effect } from "effect"
import { Middleware } from "effect-command-bus"

class AuditLog extends Context.Tag("AuditLog")<AuditLog, {
  readonly record: (entry: { readonly command: string; readonly userId: string | undefined }) => Effect.Effect<void>
}>() {}

// Who ran what, written in the dispatch's transaction: with an AuditLog on
// the same database, it commits with the command's writes or not at all.
const audit = Middleware.make<never, AuditLog>("audit", (self, dispatch) =>
  Effect.flatMap(AuditLog, (log) => {
    dispatch.beforeCommit.push(() => log.record({ command: dispatch.command._tag, userId: dispatch.command.userId }))
    return self
  }))
// README:end

import { Layer, Schema } from "effect"
import { Command, CommandBus, Handler } from "effect-command-bus"
import { InMemory } from "effect-command-bus/testing"

class Refused extends Schema.TaggedError<Refused>()("Refused", {}) {}

class Ship extends Command.Class<Ship>()("Ship", {
  payload: { parcel: Schema.String },
  success: Schema.Void,
  failure: Refused
}) {}

it.effect("the README middleware records a committed dispatch, and nothing of a failed one", () =>
  Effect.gen(function*() {
    const entries = yield* Ref.make<ReadonlyArray<string>>([])
    const log = Layer.succeed(AuditLog, {
      record: ({ command, userId }) => Ref.update(entries, (all) => [...all, `${command} by ${userId}`])
    })
    const bus = CommandBus.make([Ship], {
      Ship: (command) =>
        command.parcel === "bomb" ? Effect.fail(new Refused()) : Effect.succeed(Handler.result(undefined))
    }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware(), audit))
    const ship = (parcel: string) =>
      bus.dispatch(new Ship({ parcel, userId: "alice" })).pipe(Effect.provide([log, InMemory.layer]))
    yield* ship("books")
    expect(yield* Effect.flip(ship("bomb"))).toEqual(new Refused())
    expect(yield* Ref.get(entries)).toEqual(["Ship by alice"])
  }))
