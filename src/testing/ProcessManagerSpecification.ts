/**
 * Given/when/then specifications for process managers, in the manner of
 * Axon's saga test fixture: given prior events, when an event is committed,
 * then these commands are sent, these deadlines are pending, the process is
 * in this state, and done or not.
 *
 * ```ts
 * const spec = ProcessManagerSpecification.make({ manager: checkout })
 *
 * it.effect("ships an order paid for", () =>
 *   spec.given(new OrderPlaced({ orderId: "o-1", amount: 5 }))
 *     .when(new PaymentReceived({ orderId: "o-1" }))
 *     .then({ commands: [new ShipOrder({ orderId: "o-1" })], deadlines: [], done: true }))
 * ```
 *
 * It is a `ReactionSpecification` of the manager's reactions, over
 * in-memory processes and scheduled commands built fresh for each
 * scenario: the commands are recorded, not run, and succeed unless
 * `respond` answers them otherwise; events given are applied as they would
 * be, their commands not checked. The state, `done` and deadlines checked
 * are those of the process the last event `when` was keyed to.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Command from "../Command.js"
import * as CommandScheduler from "../CommandScheduler.js"
import * as ProcessManager from "../ProcessManager.js"
import type * as Reaction from "../Reaction.js"
import { describe, shown } from "./internal/shown.js"
import * as ReactionSpecification from "./ReactionSpecification.js"
import { SpecificationFailed } from "./Specification.js"

export {
  /**
   * A specification that did not hold; its message says what differed. The
   * same class as `Specification.SpecificationFailed`.
   *
   * @since 0.1.0
   * @category errors
   */
  SpecificationFailed
}

/**
 * A deadline expected pending: its name and command (compared by tag,
 * payload and `userId`, as commands are), and optionally when it is due,
 * `at` a time or `after` a delay from the test clock's now (when, under
 * `it.effect`, the scenario's events occurred).
 *
 * @since 0.1.0
 * @category models
 */
export type ExpectedDeadline<Cmd extends Command.Any> =
  & { readonly name: string; readonly command: Cmd }
  & ({ readonly after?: Duration.DurationInput } | { readonly at?: DateTime.DateTime })

/**
 * What a scenario ends with: the commands always (none, when left out: a
 * command nobody expected fails the scenario), each other part when given.
 *
 * @since 0.1.0
 * @category models
 */
export interface Expected<S, Cmd extends Command.Any> {
  /** Exactly these commands sent, in order, by the events of `when`. Default: none. */
  readonly commands?: ReadonlyArray<Cmd> | undefined
  /** Exactly these deadlines pending for the process, in any order. */
  readonly deadlines?: ReadonlyArray<ExpectedDeadline<Cmd>> | undefined
  /** The process's state (compared as canonical JSON). */
  readonly state?: S | undefined
  readonly done?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Then<S, Cmd extends Command.Any, E> {
  /** No reaction fails, and the scenario ends as `expected` says. */
  readonly then: (expected: Expected<S, Cmd>) => Effect.Effect<void, SpecificationFailed>
  /** The manager fails with exactly these errors, in order (see `ReactionSpecification`). */
  readonly thenFails: ReactionSpecification.Then<Cmd, E, never>["thenFails"]
}

/**
 * @since 0.1.0
 * @category models
 */
export interface When<S, Cmd extends Command.Any, E> {
  readonly when: (
    events: ReactionSpecification.Event | ReadonlyArray<ReactionSpecification.Event>
  ) => Then<S, Cmd, E>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ProcessManagerSpecification<S, Cmd extends Command.Any, E> extends When<S, Cmd, E> {
  readonly given: (...events: ReadonlyArray<ReactionSpecification.Event>) => When<S, Cmd, E>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<S, Cmd extends Command.Any, E, R> {
  readonly manager: ProcessManager.ProcessManager<S, Cmd, E, R>
  /** Answers to the commands of these tags, as `ReactionSpecification.Options.respond`. */
  readonly respond?: ReactionSpecification.Responses<Cmd> | undefined
}

// The key of the process a scenario's last event loaded, recorded by the
// scenario's store.
class LastKey extends Context.Tag("effect-command-bus/testing/ProcessManagerSpecification/LastKey")<
  LastKey,
  { key: string | undefined }
>() {}

const stores = Layer.effect(
  ProcessManager.Processes,
  Effect.zipWith(ProcessManager.Processes, LastKey, (inner, last): ProcessManager.ProcessStore => ({
    ...inner,
    load: (manager, key, eventId) =>
      Effect.zipRight(Effect.sync(() => void (last.key = key)), inner.load(manager, key, eventId))
  }))
).pipe(
  Layer.provideMerge(Layer.sync(LastKey, () => ({ key: undefined }))),
  Layer.provide(ProcessManager.layerMemory),
  Layer.merge(CommandScheduler.layerMemory)
)

/**
 * A specification of `manager`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <S, Cmd extends Command.Any, E, R>(
  options: Options<S, Cmd, E, R>
): ProcessManagerSpecification<S, Cmd, E | Reaction.Undecodable> => {
  const { manager } = options
  const reactions = (ReactionSpecification.make as (options: unknown) => ReactionSpecification.ReactionSpecification<
    Cmd,
    E | Reaction.Undecodable,
    LastKey | ProcessManager.Processes | CommandScheduler.ScheduledCommands
  >)({ reactions: manager.reactions, respond: options.respond, layer: stores })
  const given = (...events: ReadonlyArray<ReactionSpecification.Event>): When<S, Cmd, E | Reaction.Undecodable> => ({
    when: (when) => {
      // The process checked is the one an event of `when` loaded, not one a given event left.
      const forgetGiven = Effect.map(LastKey, (last) => void (last.key = undefined))
      const then = reactions.given(...events, forgetGiven).when(when)
      return {
        then: (expected) =>
          then.then(
            ...(expected.commands ?? []),
            checked(manager, expected) as Effect.Effect<unknown, unknown, ProcessManager.Processes>
          ),
        thenFails: then.thenFails as Then<S, Cmd, E | Reaction.Undecodable>["thenFails"]
      }
    }
  })
  return { given, when: given().when }
}

const metadataKeys = new Set(["commandId", "correlationId", "causationId", "timestamp", "userId", "idempotencyKey"])

// A command's tag and payload, encoded, and the user it acts for (as
// `ReactionSpecification` compares commands), without its other metadata.
const payloadOf = (type: string, encoded: unknown, userId: unknown) => ({
  type,
  payload: Object.fromEntries(
    Object.entries(encoded as Record<string, unknown>).filter(([key]) => key !== "_tag" && !metadataKeys.has(key))
  ),
  ...(userId === undefined ? {} : { userId })
})

const checked = <S, Cmd extends Command.Any>(
  manager: ProcessManager.ProcessManager<S, Cmd, any, any>,
  expected: Expected<S, Cmd>
) =>
  Effect.gen(function*() {
    const { key } = yield* LastKey
    if (key === undefined) return yield* fail(`no event of the scenario belongs to a process of "${manager.name}"`)
    const found = yield* Effect.mapError(
      manager.process(key),
      (error) => new SpecificationFailed({ message: `reading process ${key} failed: ${describe(error)}` })
    )
    if (Option.isNone(found)) {
      return yield* fail(`process ${key} of "${manager.name}" was not started`)
    }
    const process = found.value
    if (
      expected.state !== undefined && Command.canonicalJson(process.state) !== Command.canonicalJson(expected.state)
    ) {
      return yield* fail(
        `expected process ${key} in state ${shown(expected.state)}\n     but it is in ${shown(process.state)}`
      )
    }
    if (expected.done !== undefined && process.done !== expected.done) {
      return yield* fail(
        `expected process ${key} ${expected.done ? "done" : "not done"}, but it is ${
          process.done ? "done" : "not done"
        }`
      )
    }
    if (expected.deadlines === undefined) return
    const scheduled = yield* Effect.orDie(
      Effect.flatMap(CommandScheduler.ScheduledCommands, (store) => store.list({ state: "pending" }))
    )
    const now = yield* DateTime.now
    const actual = process.deadlines.flatMap((name) => {
      const entry = scheduled.find((command) => command.key === manager.deadlineKey(key, name))
      return entry === undefined ? [] : [{ name, entry }]
    })
    const wanted = yield* Effect.forEach(expected.deadlines, (deadline) =>
      Effect.map(
        Effect.orDie(Command.encodePayload(deadline.command.constructor as Command.AnyClass, deadline.command)),
        (encoded) => ({
          name: deadline.name,
          command: payloadOf(deadline.command._tag, encoded, deadline.command.userId)
        })
      ))
    const shownActual = actual
      .map(({ entry, name }) => ({
        name,
        command: payloadOf(entry.commandType, entry.command, (entry.command as { readonly userId?: unknown }).userId)
      }))
      .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
    const shownWanted = [...wanted].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
    if (Command.canonicalJson(shownActual) !== Command.canonicalJson(shownWanted)) {
      return yield* fail(`expected deadlines ${shown(shownWanted)}\n     but got ${shown(shownActual)}`)
    }
    for (const deadline of expected.deadlines) {
      const due = "at" in deadline && deadline.at !== undefined
        ? DateTime.toEpochMillis(deadline.at)
        : "after" in deadline && deadline.after !== undefined
        ? DateTime.toEpochMillis(now) + Duration.toMillis(deadline.after)
        : undefined
      const entry = actual.find((found) => found.name === deadline.name)!.entry
      if (due !== undefined && DateTime.toEpochMillis(entry.dueAt) !== due) {
        return yield* fail(
          `expected deadline "${deadline.name}" due at ${new Date(due).toISOString()}\n     but it is due at ${
            DateTime.formatIso(entry.dueAt)
          }`
        )
      }
    }
  })

const fail = (message: string) => Effect.fail(new SpecificationFailed({ message }))
