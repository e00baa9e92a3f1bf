/**
 * Domain events: what a handler says happened, and the envelope the bus
 * wraps around it with ids, versions and the command's correlation.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"
import { randomUUID } from "node:crypto"
import type * as Command from "./Command.js"
import * as JsonValue from "./internal/json.js"
import * as PlainSchema from "./internal/schema.js"

/**
 * Any domain event: an instance of a `Schema.TaggedClass` (see `Class`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Any {
  readonly _tag: string
}

/**
 * Declares a domain event type; instances encode with their own schema.
 *
 * @since 0.1.0
 * @category constructors
 */
export const Class: typeof Schema.TaggedClass = Schema.TaggedClass

/**
 * An event raised by an aggregate, before the bus stamps it: which aggregate,
 * at which version, and what happened.
 *
 * @since 0.1.0
 * @category models
 */
export interface Draft {
  readonly aggregateType: string
  readonly aggregateId: string
  readonly aggregateVersion: number
  readonly event: Any
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const draft = (
  aggregate: { readonly aggregateType: string; readonly aggregateId: string; readonly aggregateVersion: number },
  event: Any
): Draft => ({ ...aggregate, event })

/**
 * A stamped event as stored in the outbox and published: the payload is the
 * event encoded with its schema (plain JSON), so in-memory and SQL paths
 * publish the same thing.
 *
 * @since 0.1.0
 * @category models
 */
export class Envelope extends Schema.Class<Envelope>("EventEnvelope")({
  eventId: Schema.UUID,
  type: Schema.String,
  aggregateType: Schema.String,
  aggregateId: Schema.String,
  aggregateVersion: Schema.Int,
  occurredAt: Schema.DateTimeUtc,
  correlationId: Schema.String,
  causationId: Schema.String,
  payload: Schema.Unknown
}) {}

const encoders = new WeakMap<object, (event: unknown) => Effect.Effect<unknown, unknown>>()

const encoderOf = (event: Any) => {
  const schema = (event as object).constructor
  let encode = encoders.get(schema)
  if (encode === undefined && !Schema.isSchema(schema)) {
    // A plain object with a `_tag` fits `Any`, and has no schema to encode with.
    encode = (event) =>
      Effect.die(
        new Cause.RuntimeException(
          `${(event as Any)._tag}: an event must be an instance of a DomainEvent.Class, not ${
            schema === Object || schema === undefined
              ? "a plain object"
              : `a ${String((schema as { readonly name?: unknown }).name)}`
          }`
        )
      )
    encoders.set(schema ?? Object, encode)
  }
  if (encode === undefined) {
    const keys = fieldKeys(schema)
    // Fields that encode to themselves are copied, not run through the
    // schema again: the event was built from checked values.
    encode = keys === null
      ? Schema.encodeUnknown(schema as unknown as Schema.Schema<unknown, unknown>)
      : (event) => Either.right(PlainSchema.pick(event as object, keys, {}))
    encoders.set(schema, encode)
  }
  return encode
}

const fieldKeys = PlainSchema.plainKeys(() => false)

/**
 * Encodes an event with the schema it was built from.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encode = (event: Any): Effect.Effect<unknown> =>
  Effect.flatMap(Effect.orDie(encoderOf(event)(event)), (payload) => asPayload(event, payload))

// The outbox keeps payloads as JSON (jsonb), and the in-memory one must
// publish what it would: one that is not JSON (a `Date`, NaN) would read
// back as another value, so the dispatch dies instead, and rolls back.
const asPayload = (event: Any, payload: unknown): Effect.Effect<unknown> => {
  const found = JsonValue.incompatibility(payload)
  return found === undefined ? Effect.succeed(payload) : Effect.die(notJson(event, found))
}

const notJson = (event: Any, found: string) =>
  new Cause.RuntimeException(`${event._tag}: ${JsonValue.refusal(found, "the event")}`)

/**
 * Stamps drafts with fresh event ids, the time, and the command's
 * correlation: `correlationId` is the command's, `causationId` is the
 * command's id. Handlers never write these by hand.
 *
 * @since 0.1.0
 * @category constructors
 */
export const stamp = (
  command: Command.Metadata,
  drafts: ReadonlyArray<Draft>
): Effect.Effect<ReadonlyArray<Envelope>> =>
  Effect.flatMap(DateTime.now, (occurredAt) => {
    // An event schema without asynchronous parts encodes to an `Either` at
    // once; then every envelope is built here, without a fiber step per event.
    const payloads: Array<unknown> = []
    for (const draft of drafts) {
      const encoded = encoderOf(draft.event)(draft.event)
      if (!Either.isEither(encoded)) return stampEach(command, drafts, occurredAt)
      if (Either.isLeft(encoded)) return Effect.die(encoded.left)
      const found = JsonValue.incompatibility(encoded.right)
      if (found !== undefined) return Effect.die(notJson(draft.event, found))
      payloads.push(encoded.right)
    }
    return Effect.succeed(drafts.map((draft, i) => envelope(command, draft, occurredAt, payloads[i])))
  })

const stampEach = (
  command: Command.Metadata,
  drafts: ReadonlyArray<Draft>,
  occurredAt: DateTime.Utc
): Effect.Effect<ReadonlyArray<Envelope>> =>
  Effect.forEach(
    drafts,
    (draft) => Effect.map(encode(draft.event), (payload) => envelope(command, draft, occurredAt, payload))
  )

const envelope = (command: Command.Metadata, draft: Draft, occurredAt: DateTime.Utc, payload: unknown): Envelope =>
  new Envelope({
    eventId: randomUUID(),
    type: draft.event._tag,
    aggregateType: draft.aggregateType,
    aggregateId: draft.aggregateId,
    aggregateVersion: draft.aggregateVersion,
    occurredAt,
    correlationId: command.correlationId,
    causationId: command.commandId,
    payload
  }, { disableValidation: true })
