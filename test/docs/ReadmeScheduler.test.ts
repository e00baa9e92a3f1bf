// The README's typed scheduler example, verbatim between the markers, run as a test.
import { expect, it } from "@effect/vitest"
import * as TestClock from "effect/TestClock"
// README:begin
import { Effect, Schema } from "effect"
import { Command, CommandBus, CommandScheduler, Handler } from "effect-command-bus"

class Remind extends Command.Class<Remind>()("Remind", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

class Expire extends Command.Class<Expire>()("Expire", {
  payload: { orderId: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const ReminderCommands = [Remind, Expire] as const
// Of the classes, not of the bus: the handlers the bus is made of use it.
const reminders = CommandScheduler.make(ReminderCommands)

const bus = CommandBus.make(ReminderCommands, {
  Remind: (command) =>
    reminders.schedule(
      new Expire({ orderId: command.orderId, ...Command.causedBy(command) }),
      { after: "1 day" },
      { key: `expire:${command.orderId}` }
    ).pipe(Effect.orDie, Effect.as(Handler.result(undefined))),
  Expire: () => Effect.succeed(Handler.result(undefined))
})

// Runs `bus`; a bus that does not handle Remind and Expire does not compile here.
const runner = reminders.layer(bus, { pollInterval: "10 minutes" })
// README:end

import { Layer } from "effect"
import { InMemory } from "effect-command-bus/testing"

it.scoped("the README's typed scheduler schedules from a handler of its own bus, and runs on it", () =>
  Effect.gen(function*() {
    yield* bus.dispatch(new Remind({ orderId: "o-1" }))
    const store = yield* CommandScheduler.ScheduledCommands
    const [expire] = yield* store.list()
    expect([expire!.commandType, expire!.key]).toEqual(["Expire", "expire:o-1"])
    yield* Layer.build(runner)
    yield* TestClock.adjust("1 day")
    yield* Effect.repeatN(Effect.yieldNow(), 100)
    expect(yield* store.list()).toEqual([])
  }).pipe(Effect.provide(Layer.merge(InMemory.layer, CommandScheduler.layerMemory))))
