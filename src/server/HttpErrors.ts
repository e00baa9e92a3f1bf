/**
 * Refusals of the HTTP edge itself, before any command runs. Each carries
 * its status beside its definition, like the domain's errors.
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as Schema from "effect/Schema"

/**
 * Missing, malformed, expired or otherwise invalid bearer token. Served with
 * `WWW-Authenticate: Bearer` (`error="invalid_token"` when a bearer token was sent).
 *
 * @since 0.1.0
 * @category errors
 */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()(
  "Unauthorized",
  { reason: Schema.String },
  HttpApiSchema.annotations({ status: 401, title: "Unauthorized" })
) {
  override get message() {
    return this.reason
  }
}

/**
 * The body is not valid JSON.
 *
 * @since 0.1.0
 * @category errors
 */
export class MalformedJson extends Schema.TaggedError<MalformedJson>()(
  "MalformedJson",
  { reason: Schema.String },
  HttpApiSchema.annotations({ status: 400, title: "Malformed JSON" })
) {
  override get message() {
    return `The request body is not valid JSON: ${this.reason}`
  }
}

/**
 * The body is larger than the configured limit (`BODY_LIMIT`).
 *
 * @since 0.1.0
 * @category errors
 */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()(
  "PayloadTooLarge",
  { limitBytes: Schema.Int },
  HttpApiSchema.annotations({ status: 413, title: "Payload too large" })
) {
  override get message() {
    return `The request body exceeds ${this.limitBytes} bytes`
  }
}

/**
 * A header that names one value sent on more than one line: Node would join
 * the lines into one value (`a, b`), which is neither of the keys the client
 * meant.
 *
 * @since 0.1.0
 * @category errors
 */
export class RepeatedHeader extends Schema.TaggedError<RepeatedHeader>()(
  "RepeatedHeader",
  { header: Schema.String },
  HttpApiSchema.annotations({ status: 400, title: "Header repeated" })
) {
  override get message() {
    return `The ${this.header} header appears more than once; send it once`
  }
}

/**
 * A body that is not `application/json`.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnsupportedMediaType extends Schema.TaggedError<UnsupportedMediaType>()(
  "UnsupportedMediaType",
  {
    contentType: Schema.String,
    /** Set when the media type is fine but the body is compressed (`gzip`, ...). */
    contentEncoding: Schema.optional(Schema.String)
  },
  HttpApiSchema.annotations({ status: 415, title: "Unsupported media type" })
) {
  override get message() {
    if (this.contentEncoding !== undefined) {
      return `Content-Encoding ${this.contentEncoding} is not supported; send the body uncompressed`
    }
    return `Expected application/json, got ${this.contentType === "" ? "no content type" : this.contentType}`
  }
}

/**
 * No route matches the request.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouteNotFound extends Schema.TaggedError<RouteNotFound>()(
  "RouteNotFound",
  { method: Schema.String, path: Schema.String },
  HttpApiSchema.annotations({ status: 404, title: "Not found" })
) {
  override get message() {
    return `No route for ${this.method} ${this.path}`
  }
}

/**
 * The service is starting (the port is open, the API not yet serving) or
 * stopping (the API no longer serving, the port not yet closed).
 *
 * @since 0.1.0
 * @category errors
 */
export class ServiceUnavailable extends Schema.TaggedError<ServiceUnavailable>()(
  "ServiceUnavailable",
  { phase: Schema.Literal("starting", "stopping") },
  HttpApiSchema.annotations({ status: 503, title: "Service unavailable" })
) {
  override get message() {
    return `The service is ${this.phase}; retry shortly`
  }
}

/**
 * The path exists, but not for this method. `allowed` is what the `Allow`
 * header of the response says.
 *
 * @since 0.1.0
 * @category errors
 */
export class MethodNotAllowed extends Schema.TaggedError<MethodNotAllowed>()(
  "MethodNotAllowed",
  { method: Schema.String, path: Schema.String, allowed: Schema.Array(Schema.String) },
  HttpApiSchema.annotations({ status: 405, title: "Method not allowed" })
) {
  override get message() {
    return `${this.path} does not answer ${this.method}; it answers ${this.allowed.join(", ")}`
  }
}

/**
 * A bug or an unexpected failure. Its details go to the log, never to the
 * client.
 *
 * @since 0.1.0
 * @category errors
 */
export class InternalError extends Schema.TaggedError<InternalError>()(
  "InternalError",
  {},
  HttpApiSchema.annotations({ status: 500, title: "Internal server error" })
) {
  override get message() {
    return "The server failed to process the request; it has been logged"
  }
}

/**
 * A request Node's HTTP parser refused before any route saw it: a broken
 * request line or header, a bad `Content-Length`, headers over Node's limit
 * (431), a request that took too long to arrive (408). Answered on the
 * socket, which then closes.
 *
 * @since 0.1.0
 * @category errors
 */
export class MalformedRequest extends Schema.TaggedError<MalformedRequest>()(
  "MalformedRequest",
  {
    /** Node's parser error code, e.g. `HPE_INVALID_METHOD`. */
    reason: Schema.String
  },
  HttpApiSchema.annotations({ status: 400, title: "Malformed request" })
) {
  override get message() {
    return `The request is not well-formed HTTP (${this.reason})`
  }
}
