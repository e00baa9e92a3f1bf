/**
 * Bearer authentication with JWTs, verified by `jose`: HS256 with
 * `JWT_SECRET`, or an asymmetric public key (`JWT_PUBLIC_KEY_FILE`) or a JWKS
 * file (`JWT_JWKS_FILE`). Signature, `exp` and `nbf` are always checked,
 * `iss`/`aud` when configured. Only the algorithms of the configured key
 * type are accepted, which refuses `alg: none` and HS/RS confusion.
 *
 * Out of the box (no key configured, not production) the service creates a
 * development secret in its data directory; `npm run token` signs with it.
 *
 * @since 0.1.0
 */
import * as HttpApiMiddleware from "@effect/platform/HttpApiMiddleware"
import * as HttpApiSecurity from "@effect/platform/HttpApiSecurity"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Jose from "jose"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { Command, type CurrentUser } from "../index.js"
import { messageOf } from "../internal/cause.js"
import { notPrivate } from "../internal/ownership.js"
import * as Config from "./Config.js"
import * as DataDir from "./DataDir.js"
import { Unauthorized } from "./HttpErrors.js"
import * as Problem from "./Problem.js"

/**
 * The authenticated principal of the request.
 *
 * @since 0.1.0
 * @category tags
 */
export class CurrentPrincipal extends Context.Tag("server/CurrentPrincipal")<
  CurrentPrincipal,
  CurrentUser.Principal
>() {}

/**
 * The bearer authentication middleware of the API.
 *
 * @since 0.1.0
 * @category middleware
 */
export class Authentication extends HttpApiMiddleware.Tag<Authentication>()("Authentication", {
  failure: Problem.schema(Unauthorized),
  provides: CurrentPrincipal,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

/**
 * The role that makes an admin.
 *
 * @since 0.1.0
 * @category constants
 */
export const adminRole = "admin"

/**
 * @since 0.1.0
 * @category models
 */
export interface Verifier {
  readonly verify: (token: string) => Effect.Effect<CurrentUser.Principal, Unauthorized>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class TokenVerifier extends Context.Tag("server/TokenVerifier")<TokenVerifier, Verifier>() {}

/**
 * How tokens are checked: a key and the algorithms it may sign with.
 *
 * @since 0.1.0
 * @category models
 */
export type KeyConfig =
  | { readonly _tag: "Secret"; readonly secret: Uint8Array; readonly development: boolean }
  | { readonly _tag: "PublicKey"; readonly key: Jose.CryptoKey; readonly algorithm: string }
  | { readonly _tag: "Jwks"; readonly keys: Jose.JWTVerifyGetKey; readonly algorithms: ReadonlyArray<string> }

/**
 * @since 0.1.0
 * @category models
 */
export interface VerifierOptions {
  readonly key: KeyConfig
  readonly issuer?: string | undefined
  /** A token for any one of them is taken. */
  readonly audience?: string | ReadonlyArray<string> | undefined
  /**
   * The oldest token taken, in seconds since its `iat` (which it must then
   * carry), whatever its `exp` says: a cap on a token's lifetime that its
   * issuer cannot lift.
   */
  readonly maxTokenAge?: number | undefined
  /** Verified tokens remembered (until their expiry, at most a minute). */
  readonly cacheSize?: number
}

const asymmetric = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

/**
 * Whether a token's `sub` can be a command's `userId`: the metadata's own
 * rule (1 to 255 code points of storable text).
 *
 * @since 0.1.0
 * @category utils
 */
export const isUserId: (sub: unknown) => sub is string = Schema.is(Command.TextOfLength(1, 255))

const principalOf = (payload: Jose.JWTPayload): Option.Option<CurrentUser.Principal> => {
  const sub = payload.sub
  if (!isUserId(sub)) return Option.none()
  const roles = Array.isArray(payload.roles) ? payload.roles.filter((role) => typeof role === "string") : []
  return Option.some({ userId: sub, roles })
}

/**
 * A verifier for the given key. Successful verifications are cached by
 * token (bounded, and never past the token's `exp`), since a client sends
 * the same token with every request.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeVerifier = (options: VerifierOptions): Verifier => {
  const { key } = options
  const verifyOptions: Jose.JWTVerifyOptions = {
    algorithms: key._tag === "Secret"
      ? ["HS256"]
      : key._tag === "PublicKey"
      ? [key.algorithm]
      : [...key.algorithms],
    clockTolerance: 5,
    // A token that never expires is a credential that cannot be taken back.
    requiredClaims: ["exp"],
    ...(options.issuer === undefined ? {} : { issuer: options.issuer }),
    ...(options.audience === undefined ? {} : { audience: [options.audience].flat() }),
    ...(options.maxTokenAge === undefined ? {} : { maxTokenAge: options.maxTokenAge })
  }
  const cacheSize = options.cacheSize ?? 10_000
  const cache = new Map<string, { readonly principal: CurrentUser.Principal; readonly until: number }>()
  const attempt = (verify: () => Promise<Jose.JWTVerifyResult>) =>
    Effect.tryPromise({ try: verify, catch: (error) => error })
  // The first of the keys that verifies the signature; a token it verifies
  // but refuses (expired) is refused for that.
  const verifyWithEach = (
    token: string,
    candidates: ReadonlyArray<Jose.CryptoKey>
  ): Effect.Effect<Jose.JWTVerifyResult, unknown> =>
    candidates.length === 0
      ? Effect.fail(new Jose.errors.JWSSignatureVerificationFailed())
      : attempt(() => Jose.jwtVerify(token, candidates[0]!, verifyOptions)).pipe(
        Effect.catchIf(
          (error) => error instanceof Jose.errors.JWSSignatureVerificationFailed,
          () => verifyWithEach(token, candidates.slice(1))
        )
      )
  const verifyJose = (token: string) =>
    key._tag === "Secret"
      ? attempt(() => Jose.jwtVerify(token, key.secret, verifyOptions))
      : key._tag === "PublicKey"
      ? attempt(() => Jose.jwtVerify(token, key.key, verifyOptions))
      : attempt(() => Jose.jwtVerify(token, key.keys, verifyOptions)).pipe(
        // A token without `kid` (an issuer that sets none, rotating with the
        // old and new keys published) matches several keys of the set.
        Effect.catchIf(
          (error) => error instanceof Jose.errors.JWKSMultipleMatchingKeys,
          (error) =>
            Effect.flatMap(
              Effect.promise(async () => {
                const candidates: Array<Jose.CryptoKey> = []
                for await (const candidate of error as Jose.errors.JWKSMultipleMatchingKeys) candidates.push(candidate)
                return candidates
              }),
              (candidates) => verifyWithEach(token, candidates)
            )
        )
      )
  return {
    verify: (token) =>
      Effect.suspend(() => {
        if (token.length === 0) return Effect.fail(new Unauthorized({ reason: "Missing bearer token" }))
        const cached = cache.get(token)
        if (cached !== undefined) {
          if (cached.until > Date.now()) return Effect.succeed(cached.principal)
          cache.delete(token)
        }
        return verifyJose(token).pipe(
          Effect.mapError((error) =>
            new Unauthorized({
              reason: error instanceof Jose.errors.JWTExpired
                ? error.claim === "iat" ? "The token is older than its maximum age" : "The token has expired"
                : error instanceof Jose.errors.JWTClaimValidationFailed
                ? `Invalid token (${error.code}: ${error.claim})`
                : error instanceof Jose.errors.JOSEError
                ? `Invalid token (${error.code})`
                : "Invalid token"
            })
          ),
          Effect.flatMap(({ payload }) =>
            Option.match(principalOf(payload), {
              onNone: () => Effect.fail(new Unauthorized({ reason: "The token has no valid subject" })),
              onSome: (principal) => {
                if (cache.size >= cacheSize) cache.delete(cache.keys().next().value!)
                const expiry = typeof payload.exp === "number" ? payload.exp * 1000 : Number.POSITIVE_INFINITY
                const aged = options.maxTokenAge !== undefined && typeof payload.iat === "number"
                  ? (payload.iat + options.maxTokenAge) * 1000
                  : Number.POSITIVE_INFINITY
                cache.set(token, { principal, until: Math.min(expiry, aged, Date.now() + 60_000) })
                return Effect.succeed(principal)
              }
            })
          )
        )
      })
  }
}

/**
 * The development secret's file in a data directory.
 *
 * @since 0.1.0
 * @category utils
 */
export const devSecretPath = (dataDir: string): string => Path.join(Path.resolve(dataDir), "jwt-dev-secret")

// What `randomBytes(48)` gives in base64url; a shorter file is not one this
// module wrote in full.
const devSecretLength = 64

/**
 * Reads the development secret, creating it on first use (mode 0600). The
 * file appears whole or not at all (written aside, then linked into place),
 * so processes that start together on a fresh data directory (the service
 * and `npm run token`, or two instances) all read the one secret. The data
 * directory is its owner's alone (`DataDir.ensure`). A file that is empty
 * or cut short is refused, naming it, rather than used as a key every token
 * would fail against; so is one this user did not write for itself (a link,
 * another user's file, one others may read or write), whose content someone
 * else may know and sign admin tokens with.
 *
 * @since 0.1.0
 * @category utils
 */
export const devSecret = (dataDir: string): Effect.Effect<Uint8Array, ConfigError.ConfigError> =>
  Effect.flatMap(DataDir.ensure(dataDir), (dir) => {
    const file = devSecretPath(dir)
    const failed = (message: string) =>
      Effect.fail(ConfigError.InvalidData(["DATA_DIR"], `the development JWT secret ${file} ${message}`))
    try {
      if (!Fs.existsSync(file)) {
        const aside = `${file}.${process.pid}.${randomBytes(6).toString("hex")}`
        Fs.writeFileSync(aside, randomBytes(48).toString("base64url"), { mode: 0o600, flag: "wx" })
        let linkError: unknown = undefined
        try {
          Fs.linkSync(aside, file)
        } catch (error) {
          linkError = error
        } finally {
          Fs.rmSync(aside, { force: true })
        }
        // EEXIST: another process linked its secret first, and that one is the secret.
        if (linkError !== undefined && !(Predicate.hasProperty(linkError, "code") && linkError.code === "EEXIST")) {
          return failed(`cannot be created: ${messageOf(linkError)}`)
        }
      }
      const fd = Fs.openSync(file, Fs.constants.O_RDONLY | (Fs.constants.O_NOFOLLOW ?? 0))
      let secret: string
      try {
        const stat = Fs.fstatSync(fd)
        if (!stat.isFile()) return failed("is not a regular file; delete it to make a new one")
        const refused = notPrivate(stat)
        if (refused?._tag === "AnotherUser") {
          return failed(`belongs to another user (uid ${refused.uid}); delete it to make a new one`)
        }
        if (refused?._tag === "Open") {
          return failed(
            `can be read or written by other users (mode ${refused.mode}), who may know it; ` +
              "delete it to make a new one"
          )
        }
        secret = Fs.readFileSync(fd, "utf8").trim()
      } finally {
        Fs.closeSync(fd)
      }
      if (secret.length < devSecretLength) {
        return failed(`is empty or cut short (${secret.length} characters); delete it to make a new one`)
      }
      return Effect.succeed(new TextEncoder().encode(secret))
    } catch (error) {
      return Predicate.hasProperty(error, "code") && error.code === "ELOOP"
        ? failed("is a symbolic link; delete it to make a new one")
        : failed(`cannot be read or created: ${messageOf(error)}`)
    }
  })

// The algorithms a key of each type signs with.
const algorithmsOfType: Record<string, RegExp> = { RSA: /^(RS|PS)/, EC: /^ES/, OKP: /^EdDSA$/ }

// Whether a JWK is a public key that can verify one of `algorithms`: meant
// for signatures (`use`, `key_ops`) and importable for its own `alg`, or for
// one of them its type signs with.
const verifiesWith = (key: unknown, algorithms: ReadonlyArray<string>): Effect.Effect<boolean> => {
  if (!Predicate.isRecord(key) || typeof key.kty !== "string") return Effect.succeed(false)
  if (key.use !== undefined && key.use !== "sig") return Effect.succeed(false)
  if (key.key_ops !== undefined && !(Array.isArray(key.key_ops) && key.key_ops.includes("verify"))) {
    return Effect.succeed(false)
  }
  const type = algorithmsOfType[key.kty]
  const candidates = typeof key.alg === "string"
    ? algorithms.filter((alg) => alg === key.alg)
    : algorithms.filter((alg) => type?.test(alg) === true)
  return Effect.promise(async () => {
    for (const alg of candidates) {
      const imported = await Jose.importJWK(key as Jose.JWK, alg).then((key) => key, () => undefined)
      if (imported !== undefined && !tooShortForJose(imported)) return true
    }
    return false
  })
}

// jose verifies RSA signatures with moduli of 2048 bits or more only.
const minRsaBits = 2048

/** The modulus of an imported RSA key shorter than jose verifies with, if it is one. */
const tooShortForJose = (imported: unknown): number | undefined => {
  const modulus = Predicate.hasProperty(imported, "algorithm") &&
      Predicate.hasProperty(imported.algorithm, "modulusLength")
    ? imported.algorithm.modulusLength
    : undefined
  return typeof modulus === "number" && modulus < minRsaBits ? modulus : undefined
}

/**
 * The key from configuration. Production refuses to start without one.
 *
 * @since 0.1.0
 * @category constructors
 */
export const keyFromConfig = Effect.gen(function*() {
  const jwt = yield* Config.jwt
  const { production } = yield* Config.server
  const { dataDir } = yield* Config.database
  const algorithm = yield* Config.jwtAlgorithm
  if (Option.isSome(jwt.jwksFile)) {
    const file = jwt.jwksFile.value
    const invalid = (message: string) => ConfigError.InvalidData(["JWT_JWKS_FILE"], `${file} ${message}`)
    const algorithms = Option.match(algorithm, { onNone: () => asymmetric, onSome: (alg): Array<string> => [alg] })
    const jwks = yield* Effect.try({
      try: (): unknown => JSON.parse(Fs.readFileSync(file, "utf8")),
      catch: (cause) => invalid(`cannot be read: ${messageOf(cause)}`)
    })
    const keys: ReadonlyArray<unknown> | undefined = Predicate.hasProperty(jwks, "keys") && Array.isArray(jwks.keys)
      ? jwks.keys
      : undefined
    if (keys === undefined) {
      return yield* Effect.fail(invalid("is not a JSON Web Key Set (an object with a \"keys\" array)"))
    }
    // A verifier needs public keys only: a private key here is one handed to
    // the wrong party. (A symmetric key is ignored: it never enables HS256.)
    if (keys.some((key) => Predicate.hasProperty(key, "d"))) {
      return yield* Effect.fail(invalid("holds a private key; give it the public keys only"))
    }
    // A set no token could be verified with starts a service that refuses
    // every request: refused here instead.
    const usable = yield* Effect.filter(keys, (key) => verifiesWith(key, algorithms))
    if (usable.length === 0) {
      return yield* Effect.fail(invalid(`holds no public key that verifies ${algorithms.join(", ")} signatures`))
    }
    const getKey = yield* Effect.try({
      try: () => Jose.createLocalJWKSet(jwks as Jose.JSONWebKeySet),
      catch: (cause) => invalid(`is not a valid JSON Web Key Set: ${messageOf(cause)}`)
    })
    return { _tag: "Jwks", keys: getKey, algorithms } satisfies KeyConfig as KeyConfig
  }
  if (Option.isSome(jwt.publicKeyFile)) {
    const file = jwt.publicKeyFile.value
    const alg = Option.getOrElse(algorithm, (): string => "RS256")
    const key = yield* Effect.tryPromise({
      try: () => Jose.importSPKI(Fs.readFileSync(file, "utf8"), alg),
      catch: (cause) => ConfigError.InvalidData(["JWT_PUBLIC_KEY_FILE"], `cannot import ${file}: ${messageOf(cause)}`)
    })
    // Imported, it would start a service that refuses every token.
    const short = tooShortForJose(key)
    if (short !== undefined) {
      return yield* Effect.fail(ConfigError.InvalidData(
        ["JWT_PUBLIC_KEY_FILE"],
        `${file} is an RSA key of ${short} bits; ${alg} needs ${minRsaBits} bits or more`
      ))
    }
    return { _tag: "PublicKey", key, algorithm: alg } satisfies KeyConfig as KeyConfig
  }
  if (Option.isSome(jwt.secret)) {
    const secret = Redacted.value(jwt.secret.value)
    if (secret.length < 32) {
      if (production) {
        return yield* Effect.fail(
          ConfigError.InvalidData(["JWT_SECRET"], "must be at least 32 characters in production")
        )
      }
      yield* Effect.logWarning("auth.weak-secret").pipe(
        Effect.annotateLogs({ note: "JWT_SECRET is shorter than 32 characters" })
      )
    }
    return {
      _tag: "Secret",
      secret: new TextEncoder().encode(secret),
      development: false
    } satisfies KeyConfig as KeyConfig
  }
  if (production) {
    return yield* Effect.fail(ConfigError.MissingData(
      ["JWT_SECRET"],
      "NODE_ENV=production requires JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE"
    ))
  }
  const secret = yield* devSecret(dataDir)
  yield* Effect.logWarning("auth.development-secret").pipe(Effect.annotateLogs({
    file: devSecretPath(dataDir),
    note:
      "No JWT_SECRET configured: using a development secret. Get a token with `npm run token -- --sub <user> [--admin]`"
  }))
  return { _tag: "Secret", secret, development: true } satisfies KeyConfig as KeyConfig
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layerVerifier: Layer.Layer<TokenVerifier, unknown> = Layer.effect(
  TokenVerifier,
  Effect.gen(function*() {
    const key = yield* keyFromConfig
    const jwt = yield* Config.jwt
    return makeVerifier({
      key,
      issuer: Option.getOrUndefined(jwt.issuer),
      audience: Option.getOrUndefined(jwt.audience),
      maxTokenAge: Option.getOrUndefined(Option.map(jwt.maxAge, (age) => Duration.toSeconds(age)))
    })
  })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Authentication, never, TokenVerifier> = Layer.effect(
  Authentication,
  Effect.map(TokenVerifier, (verifier) => ({
    // The security decoder strips the first seven characters whatever they
    // are; the scheme, and the token after one or more spaces (RFC 6750's
    // `"Bearer" 1*SP b64token`), are read here.
    bearer: () =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        const header = request.headers.authorization
        if (header === undefined || header.trim() === "") {
          return Effect.fail(new Unauthorized({ reason: "Missing bearer token" }))
        }
        const scheme = /^bearer +/i.exec(header)
        if (scheme === null) {
          return Effect.fail(new Unauthorized({ reason: "Expected the Bearer authorization scheme" }))
        }
        return verifier.verify(header.slice(scheme[0].length))
      })
  }))
)

/**
 * Signs a token with a secret, for development and tests.
 *
 * @since 0.1.0
 * @category utils
 */
export const sign = (options: {
  readonly secret: Uint8Array
  readonly sub: string
  readonly roles?: ReadonlyArray<string>
  readonly expiresIn?: string
  readonly issuer?: string | undefined
  readonly audience?: string | ReadonlyArray<string> | undefined
}): Promise<string> => {
  let jwt = new Jose.SignJWT({ roles: [...(options.roles ?? [])] })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(options.sub)
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? "1h")
  if (options.issuer !== undefined) jwt = jwt.setIssuer(options.issuer)
  if (options.audience !== undefined) {
    const audiences = [options.audience].flat()
    // One audience as a string, as issuers write it.
    jwt = jwt.setAudience(audiences.length === 1 ? audiences[0]! : audiences)
  }
  return jwt.sign(options.secret)
}
