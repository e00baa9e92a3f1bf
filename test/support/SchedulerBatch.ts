/**
 * A scheduler's runner claiming a batch of commands, one of which holds its
 * run while the rest wait their turn: the commands, their stores and a bus
 * whose slow command is held, for the tests of what happens to a command
 * claimed in a batch before its turn comes.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandScheduler, Handler } from "../../src/index.js"
import { SqlScheduledCommands } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "./Database.js"

export class Slow extends Command.Class<Slow>()("Slow", {
  payload: { name: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

export class Remind extends Command.Class<Remind>()("Remind", {
  payload: { name: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

/** The in-memory unit of work and schedule. */
export const memoryStores = Layer.merge(InMemory.layer, CommandScheduler.layerMemory)

/** The SQL schedule on the test database (PGlite, or the server in `DATABASE_URL`), errors only logged. */
export const sqlStores = SqlScheduledCommands.layer.pipe(
  Layer.provideMerge(InMemory.layer),
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

/** The names of the scheduled commands `listed`, in order. */
export const names = (listed: ReadonlyArray<CommandScheduler.ScheduledCommand>) =>
  listed.map((scheduled) => (scheduled.command as { readonly name: string }).name)

/**
 * A bus for `Slow` and `Remind` whose handlers push the command's name to
 * `runs`. `Slow` completes `started`, then holds its run on `hold` (by
 * default, until `release` completes); a `Remind` named "last" completes
 * `last`.
 */
export const heldBatch = (options: { readonly hold?: Effect.Effect<void> } = {}) =>
  Effect.gen(function*() {
    const runs: Array<string> = []
    const started = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const last = yield* Deferred.make<void>()
    const bus = CommandBus.make([Slow, Remind], {
      Slow: (command) =>
        Effect.sync(() => runs.push(command.name)).pipe(
          Effect.zipRight(Deferred.succeed(started, undefined)),
          Effect.zipRight(options.hold ?? Deferred.await(release)),
          Effect.as(Handler.result(undefined))
        ),
      Remind: (command) =>
        Effect.sync(() => runs.push(command.name)).pipe(
          Effect.zipRight(command.name === "last" ? Deferred.succeed(last, undefined) : Effect.void),
          Effect.as(Handler.result(undefined))
        )
    })
    return { runs, started, release, last, bus }
  })
