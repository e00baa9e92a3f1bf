/**
 * Errors on the wire as RFC 9457 problem details (`application/problem+json`):
 * `type`, `title`, `status`, `detail` and a stable `code` (the error's tag),
 * plus the error's own fields as extension members. The status and title
 * come from the annotations beside each error's definition, so each error is
 * mapped once, there.
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as AST from "effect/SchemaAST"

/**
 * @since 0.1.0
 * @category constants
 */
export const contentType = "application/problem+json"

/**
 * The problem `type` of an error code: a URN, stable and resolvable only by
 * reading this service's documentation.
 *
 * @since 0.1.0
 * @category utils
 */
export const typeOf = (code: string): string => `urn:effect-command-bus:problem:${code}`

/**
 * The members every problem document has.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ProblemFields = {
  type: Schema.String,
  title: Schema.String,
  status: Schema.Int,
  detail: Schema.String,
  code: Schema.String
}

/**
 * A problem document as a plain value, for responses built by hand.
 *
 * @since 0.1.0
 * @category models
 */
export interface Document {
  readonly type: string
  readonly title: string
  readonly status: number
  readonly detail: string
  readonly code: string
  readonly [extension: string]: unknown
}

/**
 * A problem response built by hand, for refusals before the API runs
 * (body too large, wrong content type, malformed JSON).
 *
 * @since 0.1.0
 * @category constructors
 */
export const response = (
  document: Document,
  headers?: Readonly<Record<string, string>>
): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.unsafeJson(document, {
    status: document.status,
    contentType,
    ...(headers === undefined ? {} : { headers })
  })

/**
 * Any error class made with `Schema.TaggedError`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ErrorClass<E extends { readonly _tag: string; readonly message: string }>
  extends Schema.Schema<E, any, never>
{
  readonly _tag: string
  readonly fields: Schema.Struct.Fields
}

/**
 * The problem+json schema of an error class: its type side is the error
 * itself, so handlers fail with the domain error; its encoded side is the
 * problem document. Status and title come from the class's annotations.
 *
 * @since 0.1.0
 * @category constructors
 */
export const schema = <E extends { readonly _tag: string; readonly message: string }>(
  error: ErrorClass<E>,
  options?: { readonly title?: string }
): Schema.Schema<E, Document, never> => {
  const status = HttpApiSchema.getStatusError(error)
  // A class's own annotations sit on its surrogate (the struct it wraps).
  const title = options?.title ?? AST.getSurrogateAnnotation(error.ast).pipe(
    Option.flatMap(AST.getTitleAnnotation),
    Option.orElse(() => AST.getTitleAnnotation(error.ast)),
    Option.getOrElse(() => error._tag)
  )
  const { _tag: _, ...extensions } = error.fields
  const extensionKeys = Object.keys(extensions)
  const wire = Schema.Struct({ ...ProblemFields, ...extensions })
  const transformed: Schema.Schema<E, any> = Schema.transform(wire, Schema.typeSchema(error), {
    strict: false,
    decode: ({ code: _code, detail: _detail, status: _status, title: _title, type: _type, ...fields }) =>
      new (error as any)(fields),
    encode: (value: any) => {
      // Read fields by name: `message`, for one, is not enumerable on errors.
      const fields: Record<string, unknown> = {}
      for (const key of extensionKeys) fields[key] = clipped(value[key])
      return { type: typeOf(value._tag), title, status, detail: clipped(value.message), code: value._tag, ...fields }
    }
  })
  return transformed.pipe(
    Schema.annotations({ identifier: `${error._tag}Problem`, description: title }),
    Schema.annotations(HttpApiSchema.annotations({ status })),
    HttpApiSchema.withEncoding({ kind: "Json", contentType })
  ) as any
}

// Longer than any field a problem means to carry; a schema failure quotes
// the value it refused, in its detail and in each issue, and a body of a
// megabyte must not come back as three.
const maxText = 1024

const isHighSurrogate = (code: number): boolean => code >= 0xd800 && code <= 0xdbff

const clipped = (value: unknown): any => {
  if (typeof value === "string") {
    if (value.length <= maxText) return value
    // Not between the halves of a surrogate pair: a lone half is no text.
    const end = isHighSurrogate(value.charCodeAt(maxText - 1)) ? maxText - 1 : maxText
    return `${value.slice(0, end)}… (${value.length - end} more characters)`
  }
  if (Array.isArray(value)) return value.map(clipped)
  if (value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const fields: Record<string, unknown> = {}
    for (const key of Object.keys(value)) fields[key] = clipped((value as Record<string, unknown>)[key])
    return fields
  }
  return value
}

const encoders = new WeakMap<object, (error: unknown) => Document>()

/**
 * The problem response of an error, encoded with `schema(errorClass)`: the
 * same document the API sends for it, for refusals made outside the API.
 *
 * @since 0.1.0
 * @category constructors
 */
export const responseFor = <E extends { readonly _tag: string; readonly message: string }>(
  errorClass: ErrorClass<E>,
  error: E,
  headers?: Readonly<Record<string, string>>
): HttpServerResponse.HttpServerResponse => {
  let encode = encoders.get(errorClass)
  if (encode === undefined) {
    encode = Schema.encodeSync(schema(errorClass)) as (error: unknown) => Document
    encoders.set(errorClass, encode)
  }
  return response(encode(error), headers)
}
