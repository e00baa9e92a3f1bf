/**
 * States of several kinds, snapshotted every dispatch, decide as
 * their whole fold does, in memory and on a database.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Command, CommandBus, CommandError, DomainEvent, EventSourced, Middleware } from "../../src/index.js"
import { SqlStores } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"

class Added extends DomainEvent.Class<Added>()("Added", { id: Schema.String, n: Schema.Int }) {}

class Add extends Command.Class<Add>()("Add", {
  payload: { id: Schema.String, n: Schema.Int },
  success: Schema.Unknown,
  failure: CommandError.ConcurrencyConflict
}) {}

class Acc extends Schema.Class<Acc>("Acc")({ total: Schema.Int, at: Schema.Date }) {}

const Cents = Schema.Int.pipe(Schema.brand("Cents"))

const cases = {
  class: {
    state: Acc,
    initial: new Acc({ total: 0, at: new Date(0) }),
    evolve: (s: Acc, n: number) => new Acc({ total: s.total + n, at: new Date(n * 1000) })
  },
  option: {
    state: Schema.Option(Schema.Int),
    initial: Option.none<number>(),
    evolve: (s: Option.Option<number>, n: number) => Option.some(Option.getOrElse(s, () => 0) + n)
  },
  map: {
    state: Schema.ReadonlyMap({ key: Schema.String, value: Schema.Int }),
    initial: new Map<string, number>() as ReadonlyMap<string, number>,
    evolve: (s: ReadonlyMap<string, number>, n: number) => new Map([...s, [`k${n}`, n]])
  },
  branded: { state: Cents, initial: Cents.make(0), evolve: (s: typeof Cents.Type, n: number) => Cents.make(s + n) },
  date: { state: Schema.Date, initial: new Date(0), evolve: (s: Date, n: number) => new Date(s.getTime() + n) },
  status: {
    state: Schema.Literal("open", "closed"),
    initial: "open" as "open" | "closed",
    evolve: (_: "open" | "closed", n: number) => (n % 2 === 0 ? "open" : "closed") as "open" | "closed"
  }
} as const

const busOf = (
  name: string,
  c: { state: Schema.Schema<any, any>; initial: unknown; evolve: (s: any, n: number) => unknown }
) => {
  const decider = EventSourced.make({
    aggregateType: `S-${name}`,
    commands: [Add],
    events: [Added],
    initialState: c.initial as any,
    evolve: (s: any, e: Added) => c.evolve(s, e.n),
    decide: { Add: (command) => Effect.succeed([new Added({ id: command.id, n: command.n })]) },
    snapshot: { state: c.state, every: 1 }
  })
  return CommandBus.make([Add], {
    Add: EventSourced.handler(Add, { decider, aggregateId: (c) => c.id, success: (state) => state })
  }).pipe(CommandBus.withMiddleware(Middleware.transaction))
}

const scenario = Effect.gen(function*() {
  const failed: Array<string> = []
  for (const [name, c] of Object.entries(cases)) {
    const bus = busOf(name, c as any)
    let expected: unknown = c.initial
    const got = yield* Effect.exit(Effect.gen(function*() {
      let last: unknown
      for (const n of [1, 2, 3]) {
        expected = (c.evolve as any)(expected, n)
        last = yield* bus.dispatch(new Add({ id: "x", n }))
      }
      return last
    }))
    if (got._tag === "Failure") failed.push(`${name}: ${String(got.cause).split("\n")[0]}`)
    else if (
      JSON.stringify(got.value) !== JSON.stringify(expected) ||
      !(got.value instanceof Object === expected instanceof Object)
    ) {
      failed.push(`${name}: ${JSON.stringify(got.value)} <> ${JSON.stringify(expected)}`)
    }
  }
  expect(failed).toEqual([])
})

layer(InMemory.layer)("in memory", (it) => {
  it.effect("each state decides as its fold", () => scenario)
})

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), {
  excludeTestServices: true,
  timeout: "60 seconds"
})(`on ${TestDatabase.kind}`, (it) => {
  it.effect("each state decides as its fold", () => scenario)
})
