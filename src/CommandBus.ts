/**
 * The bus: dispatches a command to its handler through middleware. Its type
 * carries the union of commands it accepts and, per command, the success,
 * error and requirement types, so the compiler refuses a command without a
 * handler and a bus that misses one.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as ParseResult from "effect/ParseResult"
import { type Pipeable, pipeArguments } from "effect/Pipeable"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import type * as Command from "./Command.js"
import { ValidationIssue } from "./Command.js"
import { InvalidCommand, type StoreUnavailable, UnknownCommand } from "./CommandError.js"
import * as DomainEvent from "./DomainEvent.js"
import type * as Handler from "./Handler.js"
import * as Idempotency from "./Idempotency.js"
import { clipped } from "./internal/text.js"
import type * as Middleware from "./Middleware.js"
import * as MiddlewareModule from "./Middleware.js"
import { Outbox } from "./Outbox.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-command-bus/CommandBus")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * One handler per command of the union `C`, keyed by tag, requiring at most
 * the services `R`. A record annotated with this type keeps `R` as its
 * handlers' requirement, which the bus's `dispatch` then requires (and the
 * test kit's layer must provide): name them, `HandlersFor<C, Stock>`.
 *
 * @since 0.1.0
 * @category models
 */
export type HandlersFor<C extends Command.Any, R = never> = {
  readonly [K in C["_tag"]]: Handler.Handler<Extract<C, { readonly _tag: K }>, R>
}

/**
 * The services dispatching `Cmd` requires: its handler's, the middleware's,
 * and the outbox its events go to.
 *
 * @since 0.1.0
 * @category models
 */
export type Requirements<H, Tag, R> = Handler.Context<H[Tag & keyof H]> | R | Outbox

/**
 * @since 0.1.0
 * @category models
 */
export interface CommandBus<C extends Command.Any, H, E = never, R = never> extends Pipeable {
  readonly [TypeId]: TypeId
  /** The command classes this bus handles, by tag. */
  readonly definitions: ReadonlyMap<string, Command.AnyClass>
  /** Its middleware, outermost first. */
  readonly middleware: ReadonlyArray<Middleware.Any>
  /**
   * Dispatches a command this bus handles. A command it does not handle is
   * a compile error.
   */
  readonly dispatch: <Cmd extends C>(
    command: Cmd
  ) => Effect.Effect<Command.Success<Cmd>, Command.Failure<Cmd> | E | StoreUnavailable, Requirements<H, Cmd["_tag"], R>>
  /**
   * Decodes untyped input (from the wire: `{ _tag, ...fields }`) with the
   * registered schemas, refusing unknown fields, and dispatches it.
   */
  readonly dispatchUnknown: (
    input: unknown
  ) => Effect.Effect<
    Command.Success<C>,
    Command.Failure<C> | E | StoreUnavailable | UnknownCommand | InvalidCommand,
    Requirements<H, keyof H, R>
  >
}

/**
 * @since 0.1.0
 * @category models
 */
export type Any = CommandBus<any, any, any, any>

/**
 * The commands a bus accepts.
 *
 * @since 0.1.0
 * @category models
 */
export type Commands<B> = B extends CommandBus<infer C, infer _H, infer _E, infer _R> ? C : never

/**
 * What dispatching `Cmd` on the bus `B` may fail with: the command's own
 * failures, its middleware's, and `StoreUnavailable`.
 *
 * @since 0.1.0
 * @category models
 */
export type DispatchError<B, Cmd extends Command.Any> = B extends CommandBus<infer _C, infer _H, infer E, infer _R>
  ? Command.Failure<Cmd> | E | StoreUnavailable
  : never

const Proto = {
  [TypeId]: TypeId,
  pipe() {
    // eslint-disable-next-line prefer-rest-params -- the Pipeable protocol, as Effect's own data types implement it
    return pipeArguments(this, arguments)
  }
}

/**
 * Builds a bus from the command classes it handles and one handler per
 * command, keyed by tag. A missing handler, an extra one, or a handler whose
 * result or errors do not match its command, does not compile.
 *
 * ```ts
 * const bus = CommandBus.make([PlaceOrder, CancelOrder], {
 *   PlaceOrder: placeOrder,
 *   CancelOrder: (command) => ...
 * }).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware()))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <
  const Cs extends ReadonlyArray<Command.AnyClass>,
  H extends HandlersFor<InstanceType<Cs[number]>, any>
>(
  commands: Cs & UniqueTags<Cs>,
  handlers: H & { readonly [K in Exclude<keyof H, InstanceType<Cs[number]>["_tag"]>]: never }
): CommandBus<InstanceType<Cs[number]>, H> => {
  const definitions = new Map<string, Command.AnyClass>()
  const shared = new Set<string>()
  for (const definition of commands as ReadonlyArray<Command.AnyClass>) {
    // The same class twice (lists of commands put together) is one command.
    const seen = definitions.get(definition._tag)
    if (seen !== undefined && seen !== definition) shared.add(definition._tag)
    definitions.set(definition._tag, definition)
  }
  return build(definitions, handlers as unknown as Readonly<Record<string, Handler.Handler<any, any>>>, [], shared)
}

/**
 * The tag of the first command class in `Cs` whose tag another, earlier
 * class has. The same class twice is one command; a class whose tag is just
 * `string` (typed `Command.AnyClass`) is not judged. For a list typed as an
 * array rather than a tuple, a tag of more than one class in its element
 * type (classes that differ in nothing but their names are one type there,
 * and their dispatch dies instead).
 *
 * @since 0.1.0
 * @category models
 */
export type SharedTag<Cs extends ReadonlyArray<Command.AnyClass>, Tags = never, Classes = never> = number extends
  Cs["length"] ? SharedTagOfUnion<Cs[number]>
  : SharedTagOfTuple<Cs, Tags, Classes>

type SharedTagOfUnion<U extends Command.AnyClass> = {
  readonly [T in InstanceType<U>["_tag"]]: IsUnion<Extract<U, { readonly _tag: T }>> extends true ? T : never
}[InstanceType<U>["_tag"]]

type IsUnion<X> = [X] extends [UnionToIntersection<X>] ? false : true

type UnionToIntersection<U> = (U extends unknown ? (k: U) => void : never) extends (k: infer I) => void ? I : never

type SharedTagOfTuple<Cs extends ReadonlyArray<Command.AnyClass>, Tags, Classes> = Cs extends
  readonly [infer Head extends Command.AnyClass, ...infer Rest extends ReadonlyArray<Command.AnyClass>]
  ? [SameAsOneOf<Head, Classes>] extends [never] ?
    (string extends InstanceType<Head>["_tag"] ? SharedTagOfTuple<Rest, Tags, Classes>
      : InstanceType<Head>["_tag"] extends Tags ? InstanceType<Head>["_tag"]
      : SharedTagOfTuple<Rest, Tags | InstanceType<Head>["_tag"], Classes | Head>)
  : SharedTagOfTuple<Rest, Tags, Classes>
  : never

// `true` when `A` is one of the union `Classes`: the same type, not merely
// assignable (two classes of one tag may be assignable to each other).
type SameAsOneOf<A, Classes> = Classes extends unknown ? Same<A, Classes> extends true ? true : never : never

type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false

// Two classes with one tag would share a handler, and the bus would check,
// authorize and decode both as the last: refused where it is written. So is
// a class typed only `Command.AnyClass`: its tag is any string, so the bus's
// type could not ask for its handler, and its dispatch would die.
type UniqueTags<Cs extends ReadonlyArray<Command.AnyClass>> = string extends InstanceType<Cs[number]>["_tag"]
  ? { readonly "command classes typed only Command.AnyClass: give the bus each class's own type": never }
  : [SharedTag<Cs>] extends [never] ? unknown
  : { readonly "two command classes share a tag": SharedTag<Cs> }

/**
 * Wraps the bus in middleware, the first listed outermost. A later call
 * wraps the bus as it stands, so its middleware runs outside earlier ones.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withMiddleware =
  <const M extends ReadonlyArray<Middleware.Any>>(...middleware: M) =>
  <C extends Command.Any, H, E, R>(
    bus: CommandBus<C, H, E, R>
  ): CommandBus<C, H, E | Middleware.Error<M[number]>, R | Middleware.Context<M[number]>> =>
    build(
      bus.definitions,
      (bus as unknown as Internal).handlers,
      [...middleware, ...bus.middleware],
      (bus as unknown as Internal).shared
    )

interface Internal extends Any {
  readonly handlers: Readonly<Record<string, Handler.Handler<any, any>>>
  readonly shared: ReadonlySet<string>
}

const build = (
  definitions: ReadonlyMap<string, Command.AnyClass>,
  handlers: Readonly<Record<string, Handler.Handler<any, any>>>,
  middleware: ReadonlyArray<Middleware.Any>,
  shared: ReadonlySet<string>
): any => {
  // One lookup per dispatch: each tag's definition with its handler. A tag
  // two classes share (only from untyped code) has no route: its dispatch
  // dies, rather than run one command as the other.
  const routes = new Map<
    string,
    { readonly definition: Command.AnyClass; readonly handler: Handler.Handler<any, any> }
  >()
  for (const [tag, definition] of definitions) {
    if (!shared.has(tag)) routes.set(tag, { definition, handler: handlers[tag]! })
  }
  // Unreachable from typed code, but for a subclass: `dispatch` only
  // accepts the bus's commands, and a subclass of one is one of them to the
  // compiler. Its instance would run under its parent's role, rules and
  // schema, never its own: it dies, saying so.
  const noRoute = (command: Command.Any) =>
    Effect.dieMessage(
      shared.has(command._tag)
        ? `Two command classes share the tag ${command._tag}: a bus takes one class per tag`
        : routes.has(command._tag)
        ? `${nameOf(command)} is not the class this bus has for the tag ${command._tag} ` +
          `(${routes.get(command._tag)!.definition.name}): a subclass of a command needs a tag of its own`
        : `No handler for ${command._tag}`
    )
  // Two functions, not one with a branch: each keeps type feedback of its
  // own, so a bus with no middleware stays as cheap beside buses with some.
  const dispatch = middleware.length === 0 ?
    // The handler, then its events to the outbox. There is no unit of work,
    // so no before-commit hooks (middleware registers them), and no retry,
    // so the handler is called now rather than in a suspended step: a
    // handler that is done already costs the bus no fiber step at all.
    (command: Command.Any): Effect.Effect<any, any, any> => {
      const route = routes.get(command._tag)
      if (route === undefined || command.constructor !== route.definition) return noRoute(command)
      let effect: Effect.Effect<Handler.Result<unknown>, unknown, unknown>
      try {
        effect = route.handler(command)
      } catch (defect) {
        return Effect.die(defect)
      }
      // As `execute` does, but written out here: one helper for both paths
      // made its call of the continuation polymorphic, about 8% of this path.
      const op = opOf(effect)
      if (op === "Success") return withEvents(command, (effect as Exit.Success<Handler.Result<unknown>, unknown>).value)
      return op === "Failure" ? effect : Effect.flatMap(effect, (result) => withEvents(command, result))
    } :
    // The middleware applies each time the dispatch runs, with state of that
    // run only: an effect may run twice, and a dispatch made inside a
    // handler must not see (or run) the hooks of the one around it.
    (command: Command.Any): Effect.Effect<any, any, any> => {
      const route = routes.get(command._tag)
      if (route === undefined || command.constructor !== route.definition) return noRoute(command)
      return Effect.suspend(() => {
        const current: Middleware.Dispatch = {
          command,
          definition: route.definition,
          events: 0,
          attempts: 0,
          replayed: false,
          beforeCommit: [],
          committing: false,
          overdue: undefined
        }
        let effect = execute(route.handler, current)
        for (let i = middleware.length - 1; i >= 0; i--) effect = middleware[i]!.apply(effect, current)
        return effect
      })
    }

  const decoders = new Map<string, (input: unknown) => Effect.Effect<Command.Any, ParseResult.ParseError>>()
  const decoderFor = (definition: Command.AnyClass) => {
    let decode = decoders.get(definition._tag)
    if (decode === undefined) {
      decode = Schema.decodeUnknown(definition, { errors: "all", onExcessProperty: "error" })
      decoders.set(definition._tag, decode)
    }
    return decode
  }

  // Input that cannot even be read (a getter or proxy trap that throws) is
  // invalid, as a failure: nothing here throws, not even what it threw
  // (a value with no string form).
  const unreadable = (commandType: string, error: unknown) => {
    let reason: string
    try {
      reason = String(error)
    } catch {
      reason = "a value with no string form was thrown"
    }
    return Effect.fail(
      new InvalidCommand({
        commandType,
        issues: [
          new ValidationIssue({ path: [], message: clipped(`the input cannot be read: ${reason}`, maxIssueMessage) })
        ]
      })
    )
  }

  const dispatchUnknown = (input: unknown): Effect.Effect<any, any, any> => {
    let tag: string | undefined
    try {
      tag = Predicate.hasProperty(input, "_tag") && typeof input._tag === "string" ? input._tag : undefined
    } catch (error) {
      return unreadable("", error)
    }
    const definition = tag === undefined ? undefined : definitions.get(tag)
    // The tag is the input's, of any size: quoted as long as a tag may sensibly be.
    if (definition === undefined) return Effect.fail(new UnknownCommand({ commandType: clipped(tag ?? "", 255) }))
    let decoded: Effect.Effect<Command.Any, ParseResult.ParseError>
    try {
      decoded = decoderFor(definition)(input)
    } catch (error) {
      return unreadable(definition._tag, error)
    }
    return decoded.pipe(
      Effect.mapError((error) => new InvalidCommand({ commandType: definition._tag, issues: issuesOf(error) })),
      Effect.flatMap(dispatch)
    )
  }

  const bus = Object.create(Proto)
  bus.definitions = definitions
  bus.middleware = middleware
  bus.handlers = handlers
  bus.shared = shared
  bus.dispatch = dispatch
  bus.dispatchUnknown = dispatchUnknown
  return bus
}

const nameOf = (command: Command.Any): string => {
  const name: unknown = (command as { readonly constructor?: { readonly name?: unknown } }).constructor?.name
  return typeof name === "string" && name.length > 0 ? name : "The command"
}

// "Success" or "Failure" for an exit, as `Exit.Success` and `Exit.Failure`
// declare it; no other effect has either. One property read, where
// `Exit.isExit` is two `in` checks and a getter: a fifth of what dispatching
// a finished handler costs.
const opOf = (effect: Effect.Effect<unknown, unknown, unknown>): unknown =>
  // `?.`: a handler that broke its type and returned nothing dies when run, not here.
  (effect as { readonly _op?: unknown } | undefined)?._op

const withEvents = (command: Command.Any, result: Handler.Result<unknown>): Effect.Effect<unknown, unknown, Outbox> =>
  result.events.length === 0 ? Exit.succeed(result.value) : Effect.as(appended(command, result.events), result.value)

const appended = (
  command: Command.Any,
  events: ReadonlyArray<DomainEvent.Draft>
): Effect.Effect<void, unknown, Outbox> =>
  Effect.flatMap(
    DomainEvent.stamp(command, events),
    (envelopes) => Effect.flatMap(Outbox, (outbox) => outbox.append(envelopes))
  )

// Runs the handler, each time the effect runs (a retry runs it again), and
// goes on with its result at once when it is done already (`Effect.succeed`,
// as a pure or in-memory handler returns): one fiber step fewer than
// `flatMap`.
const execute = (
  handler: Handler.Handler<any, any>,
  dispatch: Middleware.Dispatch
): Effect.Effect<unknown, unknown, any> =>
  Effect.suspend(() => {
    dispatch.attempts++
    const effect: Effect.Effect<Handler.Result<unknown>, unknown, unknown> = handler(dispatch.command)
    const op = opOf(effect)
    if (op === "Success") {
      return afterHandler(dispatch, (effect as Exit.Success<Handler.Result<unknown>, unknown>).value)
    }
    return op === "Failure" ? effect : Effect.flatMap(effect, (result) => afterHandler(dispatch, result))
  })

// After the handler succeeds, still inside the unit of work: stamp and append
// its events, then run the dispatch's before-commit hooks (the idempotency
// record).
const afterHandler = (
  dispatch: Middleware.Dispatch,
  result: Handler.Result<unknown>
): Effect.Effect<unknown, unknown, Outbox> => {
  const { command } = dispatch
  const hooks = dispatch.beforeCommit
  const events = result.events
  dispatch.events = events.length
  if (hooks.length === 0) return withEvents(command, result)
  let effect: Effect.Effect<unknown, unknown, Outbox> = events.length === 0 ? Effect.void : appended(command, events)
  for (const hook of hooks) effect = Effect.zipRight(effect, hook(result.value))
  return Effect.as(effect, result.value)
}

const maxIssues = 100
const maxIssueMessage = 1000
// A path's segments come from the schema, except the keys of the input it
// refuses (an excess property), which may be of any size or number.
const maxPathSegments = 32
const maxPathSegment = 100

/**
 * The issues of a parse error, as `ValidationIssue`s: at most 100 (the last
 * one saying how many more when there were more), each message at most 1000
 * characters (a message quotes the value it refuses, which may be of any
 * size), each path at most 32 segments of at most 100 characters. Input
 * nested too deep for Effect's formatter, which recurses, is one issue
 * saying so.
 *
 * @since 0.1.0
 * @category utils
 */
export const issuesOf = (error: ParseResult.ParseError): Array<ValidationIssue> => {
  let formatted: ReadonlyArray<ParseResult.ArrayFormatterIssue>
  try {
    formatted = ParseResult.ArrayFormatter.formatErrorSync(error)
  } catch {
    return [new ValidationIssue({ path: [], message: "the input is invalid, and nested too deep to say where" })]
  }
  const shown = formatted.length <= maxIssues ? formatted.length : maxIssues - 1
  const issues = formatted.slice(0, shown).map((issue) =>
    new ValidationIssue({
      path: issue.path.slice(0, maxPathSegments).map((segment) =>
        typeof segment === "number" ? segment : clipped(String(segment), maxPathSegment)
      ),
      message: clipped(issue.message, maxIssueMessage)
    })
  )
  return shown === formatted.length ? issues : [
    ...issues,
    new ValidationIssue({ path: [], message: `and ${formatted.length - shown} more issues` })
  ]
}

/**
 * @since 0.1.0
 * @category models
 */
export interface DefaultMiddlewareOptions {
  /** Deadline of a dispatch, all attempts included. Default 10 seconds. */
  readonly timeout?: Duration.DurationInput
  /** Deadlines by command tag, overriding `timeout`. */
  readonly timeoutPerCommand?: Readonly<Record<string, Duration.DurationInput>>
  readonly retry?: Middleware.RetryOptions
  readonly logging?: Middleware.LoggingOptions
  readonly idempotency?: Idempotency.Options
}

/**
 * The full stack, in the order that keeps each guarantee: tracing and
 * logging see everything; authorization and validation refuse before an
 * idempotency key is claimed (so a refusal is not recorded); one claim covers
 * every retry; the deadline covers every attempt; each attempt runs in a
 * fresh transaction.
 *
 * @since 0.1.0
 * @category middleware
 */
export const defaultMiddleware = (options: DefaultMiddlewareOptions = {}) =>
  [
    MiddlewareModule.tracing,
    MiddlewareModule.logging(options.logging),
    MiddlewareModule.metrics,
    MiddlewareModule.authorization,
    MiddlewareModule.validation,
    Idempotency.middleware(options.idempotency),
    MiddlewareModule.timeout(options.timeout ?? "10 seconds", options.timeoutPerCommand),
    MiddlewareModule.retry(options.retry),
    MiddlewareModule.transaction
  ] as const
