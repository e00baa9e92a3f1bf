/**
 * The operations of an OpenAPI 3.1 document as things to fuzz: each
 * operation's inputs (path, query and header parameters, JSON body) as one
 * JSON Schema, a generated request as HTTP, and every response checked
 * against the document (status, content type, body schema with ajv's
 * 2020-12 dialect, which OpenAPI 3.1 uses).
 */
import SwaggerParser from "@apidevtools/swagger-parser"
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js"
import type { Hints, JsonSchema, Medium, Path } from "./JsonSchemaArbitrary.js"

export type Document = { readonly [key: string]: any }

export interface Parameter {
  readonly name: string
  readonly in: "path" | "query" | "header"
  readonly required: boolean
  readonly schema: JsonSchema
}

export interface Operation {
  readonly id: string
  readonly method: string
  /** The path template, e.g. `/api/v1/orders/{orderId}`. */
  readonly path: string
  /** Whether the operation asks for a credential (its `security`, or the document's). */
  readonly secured: boolean
  readonly parameters: ReadonlyArray<Parameter>
  readonly body: { readonly schema: JsonSchema; readonly required: boolean } | undefined
  /**
   * Every input as one schema: `{ path, query, header, body }`, so that the
   * same generator makes, bounds and breaks them all.
   */
  readonly input: JsonSchema
}

/** A generated request, in the shape of `Operation.input`. */
export interface Input {
  readonly path?: Record<string, unknown>
  readonly query?: Record<string, unknown>
  readonly header?: Record<string, unknown>
  readonly body?: unknown
}

const section = (parameters: ReadonlyArray<Parameter>, location: Parameter["in"]): JsonSchema => {
  const members = parameters.filter((parameter) => parameter.in === location)
  return {
    type: "object",
    properties: Object.fromEntries(members.map((parameter) => [parameter.name, parameter.schema])),
    required: members.filter((parameter) => parameter.required).map((parameter) => parameter.name)
  }
}

/** Every operation of a document whose `$ref`s are resolved (`SwaggerParser.dereference`). */
export const operationsOf = (dereferenced: Document): Array<Operation> =>
  Object.entries(dereferenced.paths as Record<string, Record<string, any>>).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => ["get", "put", "post", "delete", "patch"].includes(method))
      .map(([method, operation]): Operation => {
        const parameters: Array<Parameter> = [...(item.parameters ?? []), ...(operation.parameters ?? [])].map((
          parameter: any
        ) => ({
          name: parameter.name,
          in: parameter.in,
          required: parameter.required === true,
          schema: parameter.schema ?? {}
        }))
        const json = operation.requestBody?.content?.["application/json"]
        const body = json === undefined
          ? undefined
          : { schema: json.schema ?? {}, required: operation.requestBody.required === true }
        const security = operation.security ?? dereferenced.security ?? []
        return {
          id: operation.operationId ?? `${method} ${path}`,
          method: method.toUpperCase(),
          path,
          secured: security.length > 0,
          parameters,
          body,
          input: {
            type: "object",
            required: ["path", "query", "header", ...(body?.required === true ? ["body"] : [])],
            properties: {
              path: section(parameters, "path"),
              query: section(parameters, "query"),
              header: section(parameters, "header"),
              ...(body === undefined ? {} : { body: body.schema })
            }
          }
        }
      })
  )

/** Fetches `$ref`s out of a copy of the document. */
export const dereference = (document: Document): Promise<Document> =>
  SwaggerParser.dereference(structuredClone(document) as any) as Promise<Document>

/** How each part of an input travels. */
export const mediumOf = (path: Path): Medium => path[0] === "body" || path.length === 0 ? "json" : path[0] as Medium

/** The hints with the media of `Operation.input`. */
export const withMedia = (hints: Hints): Hints => ({ ...hints, medium: mediumOf })

// -----------------------------------------------------------------------------
// as HTTP
// -----------------------------------------------------------------------------

const hex = (byte: number) => `%${byte.toString(16).toUpperCase().padStart(2, "0")}`

/**
 * Percent-encodes any string, lone surrogates included (as their WTF-8
 * bytes), where `encodeURIComponent` throws; dots too, so that a segment of
 * dots is not taken for `.` or `..`.
 */
export const percentEncode = (text: string): string => {
  let encoded = ""
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i)
    const next = text.charCodeAt(i + 1)
    if (unit >= 0xd800 && unit <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      encoded += encodeURIComponent(text.slice(i, i + 2))
      i++
    } else if (unit >= 0xd800 && unit <= 0xdfff) {
      encoded += [0xe0 | (unit >> 12), 0x80 | ((unit >> 6) & 0x3f), 0x80 | (unit & 0x3f)].map(hex).join("")
    } else {
      encoded += encodeURIComponent(text[i]!).replace(/[.!'()*]/g, (c) => hex(c.charCodeAt(0)))
    }
  }
  return encoded
}

export interface HttpRequest {
  readonly method: string
  /** Path and query. */
  readonly target: string
  readonly headers: Record<string, string>
  readonly body: string | undefined
}

const text = (value: unknown) => typeof value === "string" ? value : JSON.stringify(value)

/** A generated input as an HTTP request (without credentials). */
export const toHttp = (operation: Operation, input: Input): HttpRequest => {
  const path = operation.path.replace(/\{([^}]+)\}/g, (_, name: string) => {
    const value = input.path?.[name]
    return value === undefined ? "" : percentEncode(text(value))
  })
  const query = Object.entries(input.query ?? {})
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${percentEncode(name)}=${percentEncode(text(value))}`)
    .join("&")
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(input.header ?? {})) {
    if (value !== undefined) headers[name] = text(value)
  }
  const body = "body" in input && input.body !== undefined ? JSON.stringify(input.body) : undefined
  if (body !== undefined) headers["content-type"] = "application/json"
  return { method: operation.method, target: query === "" ? path : `${path}?${query}`, headers, body }
}

// -----------------------------------------------------------------------------
// responses against the document
// -----------------------------------------------------------------------------

/** A JSON pointer segment, as it appears in a URI fragment. */
const pointer = (segment: string) => encodeURIComponent(segment.replace(/~/g, "~0").replace(/\//g, "~1"))

const mediaTypeOf = (contentType: string) => contentType.split(";")[0]!.trim().toLowerCase()

const isJson = (mediaType: string) => mediaType === "application/json" || mediaType.endsWith("+json")

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * Checks responses against the document: the whole document is registered
 * with ajv (so `#/components/schemas/...` resolve), and each response schema
 * is compiled once, by its JSON pointer.
 */
export const responseChecker = (document: Document) => {
  const base = "https://fuzz.test/openapi.json"
  // Not strict: the document's own keywords (openapi, paths, ...) are not JSON Schema.
  const ajv = new Ajv2020({ strict: false, allErrors: true })
  ajv.addFormat("uuid", uuid)
  ajv.addSchema({ ...document, $id: base })
  const compiled = new Map<string, ValidateFunction>()
  /**
   * What is wrong with a response, if anything. A JSON body is checked
   * parsed; any other (text) body as the string it is.
   */
  return (operation: Operation, status: number, contentType: string | null, text: string): Array<string> => {
    const responses = document.paths[operation.path][operation.method.toLowerCase()].responses
    const key = String(status) in responses ? String(status) : "default" in responses ? "default" : undefined
    if (key === undefined) return [`status ${status} is not documented for ${operation.id}`]
    const mediaType = mediaTypeOf(contentType ?? "")
    const content = (responses[key].content ?? {}) as Record<string, unknown>
    if (Object.keys(content).length === 0) return []
    // The document may name a media type with its parameters (text/plain; version=0.0.4).
    const documented = Object.keys(content).find((name) => mediaTypeOf(name) === mediaType)
    if (documented === undefined) {
      return [`${status} with content type ${contentType} is not documented (${Object.keys(content).join(", ")})`]
    }
    let body: unknown = text
    if (isJson(mediaType)) {
      try {
        body = JSON.parse(text)
      } catch {
        return [`${status} ${mediaType} body is not JSON: ${text.slice(0, 200)}`]
      }
    }
    const ref = `${base}#/paths/${pointer(operation.path)}/${operation.method.toLowerCase()}/responses/${key}/content/${
      pointer(documented)
    }/schema`
    let validate = compiled.get(ref)
    if (validate === undefined) {
      validate = ajv.compile({ $ref: ref })
      compiled.set(ref, validate)
    }
    const problems: Array<string> = []
    if (!validate(body)) {
      problems.push(`${status} ${mediaType} body does not match the document: ${ajv.errorsText(validate.errors)}`)
    }
    if (mediaType === "application/problem+json" && (body as any)?.status !== status) {
      problems.push(`the problem's status ${(body as any)?.status} is not the response's ${status}`)
    }
    return problems
  }
}
