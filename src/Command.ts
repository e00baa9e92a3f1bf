/**
 * Commands: immutable `Schema.TaggedRequest` classes whose fields are the
 * payload plus the metadata every command carries.
 *
 * @since 0.1.0
 */
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { createHash, randomUUID } from "node:crypto"
import * as PlainSchema from "./internal/schema.js"
import { codePoints } from "./internal/text.js"

// A lone surrogate: a high one not followed by a low one, or a low one not
// preceded by a high one.
const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/**
 * Whether a string can be stored as text anywhere: well-formed Unicode (no
 * lone surrogates) and no NUL, which PostgreSQL refuses in text and jsonb.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isStorableText = (value: string): boolean => !value.includes("\u0000") && !loneSurrogate.test(value)

/**
 * A string that can be stored as text: see `isStorableText`. Use it for every
 * string a command carries to a database, so bad input is refused by the
 * schema, not by the database.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Text = Schema.String.pipe(
  Schema.filter(isStorableText, {
    message: () => "must be well-formed Unicode without NUL characters",
    identifier: "Text",
    // JSON Schema can say no NUL; not "no lone surrogate", which the description says.
    jsonSchema: { pattern: "^[^\\u0000]*$" },
    description: "Text without NUL characters or unpaired surrogates (\\uD800 to \\uDFFF alone)"
  })
)

/**
 * Storable text of `min` to `max` characters, counted as Unicode code points
 * (as JSON Schema's `minLength`/`maxLength` count them, and as people do), not
 * as UTF-16 units: an emoji is one character.
 *
 * @since 0.1.0
 * @category schemas
 */
export const TextOfLength = (min: number, max: number) =>
  Text.pipe(
    Schema.filter((value) => {
      // Cheap bounds first: code points ≤ UTF-16 units ≤ 2 × code points.
      if (value.length < min || value.length > 2 * max) return false
      if (value.length <= max && value.length >= 2 * min) return true
      const length = codePoints(value)
      return length >= min && length <= max
    }, {
      message: () => `must be ${min} to ${max} characters long`,
      jsonSchema: { minLength: min, maxLength: max }
    })
  )

/**
 * An idempotency key as the IETF draft allows it: 1 to 255 characters.
 *
 * @since 0.1.0
 * @category schemas
 */
export const IdempotencyKey = TextOfLength(1, 255).pipe(Schema.annotations({ identifier: "IdempotencyKey" }))

/**
 * The metadata fields shared by every command. Ids and the timestamp are
 * generated when absent, both by the constructor and by decoding, so a command
 * built from the wire and one built in code look alike.
 *
 * @since 0.1.0
 * @category schemas
 */
export const MetadataFields = {
  commandId: Schema.optionalWith(Schema.UUID, { default: () => randomUUID() }),
  correlationId: Schema.optionalWith(Schema.UUID, { default: () => randomUUID() }),
  causationId: Schema.optionalWith(Schema.UUID, { exact: true }),
  timestamp: Schema.optionalWith(Schema.DateTimeUtc, { default: () => DateTime.unsafeNow() }),
  userId: Schema.optionalWith(TextOfLength(1, 255), { exact: true }),
  idempotencyKey: Schema.optionalWith(IdempotencyKey, { exact: true })
}

/**
 * @since 0.1.0
 * @category models
 */
export type MetadataFields = typeof MetadataFields

/**
 * @since 0.1.0
 * @category models
 */
export interface Metadata {
  readonly commandId: string
  readonly correlationId: string
  readonly causationId?: string
  readonly timestamp: DateTime.Utc
  readonly userId?: string
  readonly idempotencyKey?: string
}

/**
 * The correlation of a command that follows from `cause`, a command or a
 * committed event: the same correlation id, and the cause's id (its
 * `commandId`, or its `eventId`) as causation id. Spread it into the new
 * command, so a chain of commands and events stays one correlated story.
 *
 * @since 0.1.0
 * @category constructors
 */
export const causedBy = (
  cause: Metadata | { readonly eventId: string; readonly correlationId: string }
): { readonly correlationId: string; readonly causationId: string } => ({
  correlationId: cause.correlationId,
  causationId: "eventId" in cause ? cause.eventId : cause.commandId
})

const metadataKeys: ReadonlySet<string> = new Set(Object.keys(MetadataFields))

/**
 * One problem found by a command's business-rule validation.
 *
 * @since 0.1.0
 * @category schemas
 */
export class ValidationIssue extends Schema.Class<ValidationIssue>("ValidationIssue")({
  path: Schema.Array(Schema.Union(Schema.String, Schema.Number)),
  message: Schema.String
}) {}

/**
 * Any command instance.
 *
 * @since 0.1.0
 * @category models
 */
export interface Any extends Metadata {
  readonly _tag: string
}

/**
 * The success type of a command.
 *
 * @since 0.1.0
 * @category models
 */
export type Success<C> = Schema.WithResult.Success<C>

/**
 * The failure type a command declares: its domain errors.
 *
 * @since 0.1.0
 * @category models
 */
export type Failure<C> = Schema.WithResult.Failure<C>

/**
 * A command class, as middleware and the bus see it: the schema of its
 * instances, its result schemas, and the policies middleware read from it.
 *
 * @since 0.1.0
 * @category models
 */
export interface AnyClass extends Schema.Schema.AnyNoContext {
  new(...args: ReadonlyArray<any>): Any
  readonly _tag: string
  readonly success: Schema.Schema.All
  readonly failure: Schema.Schema.All
  /** Error tags that the retry middleware may retry; they are transient. */
  readonly retryable: ReadonlyArray<string>
  /** A role the current user must have; checked by the authorization middleware. */
  readonly requiredRole: string | undefined
  /** Business-rule checks beyond the schema, run by the validation middleware. */
  readonly validate: ((command: any) => ReadonlyArray<ValidationIssue>) | undefined
}

/**
 * The tags of the errors in a failure schema, for declaring which are retryable.
 *
 * @since 0.1.0
 * @category models
 */
export type ErrorTags<Failure extends Schema.Schema.All> = Schema.Schema.Type<Failure> extends infer E ?
  E extends { readonly _tag: infer T extends string } ? T : never
  : never

/**
 * A command class as `Command.Class` builds it.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandClass<
  Self,
  Tag extends string,
  Payload extends Schema.Struct.Fields,
  Success extends Schema.Schema.All,
  Failure extends Schema.Schema.All
> extends
  Schema.TaggedRequestClass<Self, Tag, { readonly _tag: Schema.tag<Tag> } & MetadataFields & Payload, Success, Failure>
{
  readonly retryable: ReadonlyArray<ErrorTags<Failure>>
  readonly requiredRole: string | undefined
  readonly validate: ((command: Self) => ReadonlyArray<ValidationIssue>) | undefined
}

/**
 * A command's own fields: any but the metadata's names. Checked in the
 * constraint, not where the option is given, so that `payload: {}` (a
 * command with nothing to carry) still infers as no fields.
 *
 * @since 0.1.0
 * @category models
 */
export type PayloadFields = Schema.Struct.Fields & { readonly [K in keyof MetadataFields]?: never }

/**
 * Options of a command declaration.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options<
  Payload extends PayloadFields,
  Success extends Schema.Schema.All,
  Failure extends Schema.Schema.All
> {
  readonly payload: Payload
  readonly success: Success
  readonly failure: Failure
  readonly retryable?: ReadonlyArray<ErrorTags<Failure>>
  readonly requiredRole?: string
  /**
   * Business rules beyond the schema. Receives the decoded payload; returns
   * every problem found (an empty array when valid).
   */
  readonly validate?: (payload: Schema.Struct.Type<Payload>) => ReadonlyArray<ValidationIssue>
}

/**
 * Declares a command in one declaration:
 *
 * ```ts
 * class PlaceOrder extends Command.Class<PlaceOrder>()("PlaceOrder", {
 *   payload: { sku: Schema.String, quantity: Schema.Int },
 *   success: Schema.Struct({ orderId: Schema.UUID }),
 *   failure: Schema.Union(OutOfStock, ConcurrencyConflict),
 *   retryable: ["ConcurrencyConflict"]
 * }) {}
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const Class = <Self = never>() =>
<
  const Tag extends string,
  Payload extends PayloadFields,
  Success extends Schema.Schema.All,
  Failure extends Schema.Schema.All
>(
  tag: Tag,
  options: Options<Payload, Success, Failure>
): CommandClass<Self, Tag, Payload, Success, Failure> => {
  const Base = Schema.TaggedRequest<Self>()(tag, {
    payload: { ...MetadataFields, ...options.payload } as MetadataFields & Payload,
    success: options.success,
    failure: options.failure
  }) as any
  return class extends Base {
    constructor(props: unknown, options?: unknown) {
      super(withoutUndefinedMetadata(props), options)
    }
    static readonly retryable = options.retryable ?? []
    static readonly requiredRole = options.requiredRole
    static readonly validate = options.validate
  } as any
}

// Optional metadata given as `undefined` (`userId: request.user?.id`) is
// left out, as the compiler of an application without
// `exactOptionalPropertyTypes` lets it be written; the exact schema would
// refuse it.
const exactMetadataKeys = ["causationId", "userId", "idempotencyKey"] as const

const withoutUndefinedMetadata = (props: unknown): unknown => {
  if (typeof props !== "object" || props === null) return props
  let copy: Record<string, unknown> | undefined
  for (const key of exactMetadataKeys) {
    if (key in props && (props as Record<string, unknown>)[key] === undefined) {
      copy ??= { ...props }
      delete copy[key]
    }
  }
  return copy ?? props
}

const failureChecks = new WeakMap<AnyClass, (error: unknown) => boolean>()

/**
 * Whether `error` is a failure `definition` declares and does not mark
 * retryable: the command's outcome (stock too low, a card declined), which
 * running it again would not change. Anything else (a timeout, an outage, a
 * conflict) may pass on a retry.
 *
 * @since 0.1.0
 * @category guards
 */
export const isOutcome = (definition: AnyClass, error: unknown): boolean => {
  let check = failureChecks.get(definition)
  if (check === undefined) {
    const declared = Schema.is(definition.failure as Schema.Schema<unknown>)
    const retryable = new Set<unknown>(definition.retryable)
    check = (error) => declared(error) && !retryable.has((error as { readonly _tag?: unknown } | null)?._tag)
    failureChecks.set(definition, check)
  }
  return check(error)
}

/**
 * Builds a command without throwing: invalid fields fail with a
 * `ParseError` in the error channel (the class constructor would throw).
 * Metadata left out is generated, as with the constructor.
 *
 * @since 0.1.0
 * @category constructors
 */
export const construct = <C extends AnyClass>(
  definition: C,
  fields: ConstructorParameters<C>[0]
): Effect.Effect<InstanceType<C>, ParseResult.ParseError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(new definition(fields) as InstanceType<C>)
    } catch (error) {
      return ParseResult.isParseError(error) ? Effect.fail(error) : Effect.die(error)
    }
  })

/**
 * The payload of a command, encoded, without its metadata.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodePayload = (
  definition: AnyClass,
  command: Any
): Effect.Effect<Record<string, unknown>, ParseResult.ParseError> =>
  Effect.map(Schema.encode(definition)(command), (encoded: Record<string, unknown>) => {
    const payload: Record<string, unknown> = {}
    for (const key of Object.keys(encoded)) {
      if (!metadataKeys.has(key)) payload[key] = encoded[key]
    }
    return payload
  })

/**
 * A stable fingerprint of a command's tag and payload (not its metadata):
 * SHA-256 over canonical JSON with sorted keys. Two commands with the same
 * fingerprint ask for the same thing.
 *
 * @since 0.1.0
 * @category encoding
 */
export const fingerprint = (definition: AnyClass, command: Any): Effect.Effect<string, ParseResult.ParseError> => {
  const keys = payloadKeys(definition)
  if (keys === null) return Effect.flatMap(encodePayload(definition, command), digested(command))
  // A payload whose schema has no transformation encodes to itself, and a
  // constructed command already passed its checks: its fields are the
  // encoded payload, with no second pass through the schema (most of what a
  // fingerprint cost).
  return Effect.suspend(() => digested(command)(PlainSchema.pick(command, keys, { _tag: command._tag })))
}

const payloadKeys = PlainSchema.plainKeys((key) => key === "_tag" || metadataKeys.has(key))

// A payload JSON.stringify cannot write (nested thousands deep: it
// recurses) is a defect that says so, not an exception out of the call.
const digested = (command: Any) => (payload: Record<string, unknown>): Effect.Effect<string> => {
  try {
    return Effect.succeed(createHash("sha256").update(canonicalJson(payload)).digest("hex"))
  } catch (error) {
    return Effect.dieMessage(`Command.fingerprint: the payload of ${command._tag} cannot be hashed (${String(error)})`)
  }
}

/**
 * JSON with object keys sorted, so equal values give equal strings. Values
 * JSON has no form for are written so that unequal ones stay apart: a `Map`
 * as its entries and a `Set` as its values (each sorted, so their order does
 * not count), a `Redacted` as the value it hides, a bigint, `NaN` and
 * ±Infinity as themselves, `undefined` in an array apart from `null`, an
 * `Error` as its name, message, cause and own fields.
 *
 * @since 0.1.0
 * @category encoding
 */
export const canonicalJson = (value: unknown): string => {
  calls++
  try {
    return JSON.stringify(value, sortKeys)
  } finally {
    if (--calls === 0) sortKeysOf = undefined
  }
}

// The canonical form of each Map key and Set value sorted during one call
// (made when the first is), written once: sorted by it and written again,
// each level of nesting would double the work.
let calls = 0
let sortKeysOf: WeakMap<object, string> | undefined

const sortKeyOf = (value: unknown): string => {
  // `undefined` (and what JSON has no form for) writes nothing on its own;
  // in an array, it writes itself.
  if (typeof value !== "object" || value === null) return canonicalJson(value) ?? canonicalJson([value])
  sortKeysOf ??= new WeakMap()
  let key = sortKeysOf.get(value)
  if (key === undefined) {
    key = canonicalJson(value)
    sortKeysOf.set(value, key)
  }
  return key
}

// Equal keys are ordered by `then`: two Map keys alike (distinct objects of
// one form) by their values, so that insertion order never counts.
const sortedBy = <A>(values: Iterable<A>, key: (value: A) => string, then?: (value: A) => string): Array<A> =>
  Array.from(values, (value) => [key(value), value] as const)
    .sort(([a, x], [b, y]) => order(a, b) || (then === undefined ? 0 : order(then(x), then(y))))
    .map(([, value]) => value)

const order = (a: string, b: string): number => a < b ? -1 : a > b ? 1 : 0

const errorFields = (error: Error): Record<string, unknown> => {
  const fields: Record<string, unknown> = Object.create(null)
  fields.name = error.name
  fields.message = error.message
  if ("cause" in error) fields.cause = error.cause
  for (const key of Object.keys(error)) fields[key] = (error as unknown as Record<string, unknown>)[key]
  return fields
}

// Called with the holder as `this`: its own value, before `toJSON` (a
// `Redacted`'s writes "<redacted>" whatever it hides).
function sortKeys(this: unknown, key: string, value: unknown): unknown {
  const own = (this as Record<string, unknown>)[key]
  if (Redacted.isRedacted(own)) return { "\u0000redacted": Redacted.value(own) }
  if (own === undefined && Array.isArray(this)) return { "\u0000undefined": true }
  switch (typeof value) {
    case "number":
      return Number.isFinite(value) ? value : { "\u0000number": String(value) }
    case "bigint":
      return { "\u0000bigint": value.toString() }
    case "object": {
      if (value === null || Array.isArray(value)) return value
      if (value instanceof Map) {
        return {
          "\u0000map": sortedBy(value.entries(), ([entryKey]) => sortKeyOf(entryKey), ([, entry]) => sortKeyOf(entry))
        }
      }
      if (value instanceof Set) return { "\u0000set": sortedBy(value.values(), sortKeyOf) }
      // JSON writes `{}` for any `Error`: its name, message and cause are not enumerable.
      if (value instanceof Error) return { "\u0000error": errorFields(value) }
      // No prototype: an own `__proto__` key is a key like any other here,
      // where `{}` would take it as its prototype and leave it out.
      const sorted: Record<string, unknown> = Object.create(null)
      for (const key of Object.keys(value).sort()) sorted[key] = (value as Record<string, unknown>)[key]
      return sorted
    }
    default:
      return value
  }
}
