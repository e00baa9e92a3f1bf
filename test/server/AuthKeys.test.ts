/**
 * The verifier's keys from configuration, without a service: the development
 * secret (created once, whole, whoever races for it), a JWKS file checked
 * at start, and the subject rule the command metadata uses.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import type * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { identity } from "effect/Function"
import * as Jose from "jose"
import { generateKeyPairSync, type KeyObject } from "node:crypto"
import Fs from "node:fs"
import { syncBuiltinESMExports } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Auth from "../../src/server/Auth.js"
import * as Config from "../../src/server/Config.js"

const existsSync = Fs.existsSync
afterEach(() => {
  Fs.existsSync = existsSync
  syncBuiltinESMExports()
})

const dirs: Array<string> = []
afterAll(() => {
  for (const dir of dirs) Fs.rmSync(dir, { recursive: true, force: true })
})

const freshDir = () => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ecb-auth-keys-"))
  dirs.push(dir)
  return dir
}

const reasonOf = Config.describeError

describe("the development secret", () => {
  it.effect("is created once, 0600, and read back the same", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const first = yield* Auth.devSecret(dir)
      expect(first.length).toBe(64)
      expect(Fs.statSync(Auth.devSecretPath(dir)).mode & 0o777).toBe(0o600)
      expect(yield* Auth.devSecret(dir)).toEqual(first)
      // Nothing left beside it.
      expect(Fs.readdirSync(dir)).toEqual([Path.basename(Auth.devSecretPath(dir))])
    }))

  it.effect("another process creating it between the check and the create: its secret is used", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const file = Auth.devSecretPath(dir)
      const theirs = "t".repeat(64)
      Fs.existsSync = (path: Fs.PathLike) => {
        if (String(path) === file) {
          Fs.writeFileSync(file, theirs, { mode: 0o600 })
          return false
        }
        return existsSync(path)
      }
      syncBuiltinESMExports()
      const secret = yield* Auth.devSecret(dir)
      expect(new TextDecoder().decode(secret)).toBe(theirs)
      expect(Fs.readdirSync(dir)).toEqual([Path.basename(file)])
    }))

  it.effect("an empty or cut-short file is refused, naming it, not used as a key", () =>
    Effect.gen(function*() {
      for (const content of ["", "   \n", "short"]) {
        const dir = freshDir()
        Fs.writeFileSync(Auth.devSecretPath(dir), content, { mode: 0o600 })
        const error = yield* Effect.flip(Auth.devSecret(dir))
        expect(reasonOf(error)).toContain(Auth.devSecretPath(dir))
        expect(reasonOf(error)).toContain("cut short")
        expect(reasonOf(error)).toContain("delete it")
      }
    }))
})

describe("the development secret someone else may know", () => {
  const forge = (secret: string) =>
    Effect.promise(() => Auth.sign({ secret: new TextEncoder().encode(secret), sub: "mallory", roles: ["admin"] }))

  it.effect("a file others can read or write is refused, not taken as the key", () =>
    Effect.gen(function*() {
      for (const mode of [0o666, 0o644, 0o640, 0o602]) {
        const dir = freshDir()
        const known = "k".repeat(64)
        Fs.writeFileSync(Auth.devSecretPath(dir), known)
        Fs.chmodSync(Auth.devSecretPath(dir), mode)
        const error = yield* Effect.flip(Auth.devSecret(dir))
        expect(reasonOf(error), mode.toString(8)).toContain(`mode ${mode.toString(8)}`)
        expect(reasonOf(error)).toContain("delete it")
      }
      // The same content, private, is the key: what was refused is the mode.
      const dir = freshDir()
      const known = "k".repeat(64)
      Fs.writeFileSync(Auth.devSecretPath(dir), known, { mode: 0o600 })
      const secret = yield* Auth.devSecret(dir)
      const verifier = Auth.makeVerifier({ key: { _tag: "Secret", secret, development: true } })
      expect((yield* verifier.verify(yield* forge(known))).userId).toBe("mallory")
    }))

  it.effect("a link is refused, whatever it points to", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const target = Path.join(dir, "public.txt")
      Fs.writeFileSync(target, "a public text of more than sixty-four characters, such as a licence", { mode: 0o600 })
      Fs.symlinkSync(target, Auth.devSecretPath(dir))
      const error = yield* Effect.flip(Auth.devSecret(dir))
      expect(reasonOf(error)).toContain("symbolic link")
      // Dangling: no secret is created through it.
      const dangling = freshDir()
      Fs.symlinkSync(Path.join(dangling, "elsewhere"), Auth.devSecretPath(dangling))
      expect(reasonOf(yield* Effect.flip(Auth.devSecret(dangling)))).toContain("symbolic link")
      expect(Fs.existsSync(Path.join(dangling, "elsewhere"))).toBe(false)
    }))

  it.effect("a new data directory is its owner's alone, whatever the umask", () =>
    Effect.gen(function*() {
      const fresh = Path.join(freshDir(), "a", "data")
      const umask = process.umask(0o000)
      try {
        yield* Auth.devSecret(fresh)
      } finally {
        process.umask(umask)
      }
      expect(Fs.statSync(fresh).mode & 0o777).toBe(0o700)
      expect(Fs.statSync(Auth.devSecretPath(fresh)).mode & 0o777).toBe(0o600)
    }))
})

describe("JWT_JWKS_FILE", () => {
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
  const publicJwk = rsa.publicKey.export({ format: "jwk" })
  const privateJwk = rsa.privateKey.export({ format: "jwk" })

  const withJwks = (content: string, env: Record<string, string> = {}) => {
    const dir = freshDir()
    const file = Path.join(dir, "jwks.json")
    Fs.writeFileSync(file, content)
    return Auth.keyFromConfig.pipe(
      Effect.either,
      Effect.withConfigProvider(ConfigProvider.fromJson({ DATA_DIR: dir, JWT_JWKS_FILE: file, ...env }))
    )
  }

  it.effect("a set with a public signing key is the verifier's key", () =>
    Effect.gen(function*() {
      const key = yield* withJwks(JSON.stringify({ keys: [{ ...publicJwk, kid: "k1", use: "sig" }] }))
      expect(Either.isRight(key) && key.right._tag).toBe("Jwks")
      // Without `alg`, the key's type says which algorithms it can verify.
      const untyped = yield* withJwks(JSON.stringify({ keys: [publicJwk] }), { JWT_ALGORITHM: "RS256" })
      expect(Either.isRight(untyped)).toBe(true)
    }))

  it.effect("refused at start, naming the setting: not a key set, no usable key, a private key", () =>
    Effect.gen(function*() {
      const refused: ReadonlyArray<readonly [string, string, string]> = [
        ["not JSON", "{", "cannot be read"],
        ["no keys array", JSON.stringify({ key: [] }), "is not a JSON Web Key Set"],
        ["an empty set", JSON.stringify({ keys: [] }), "no public key"],
        ["a broken RSA key", JSON.stringify({ keys: [{ kty: "RSA", n: "abc", e: "AQAB" }] }), "no public key"],
        ["an encryption key only", JSON.stringify({ keys: [{ ...publicJwk, use: "enc" }] }), "no public key"],
        [
          "a symmetric key only",
          JSON.stringify({ keys: [{ kty: "oct", k: "c2VjcmV0", alg: "HS256" }] }),
          "no public key"
        ],
        [
          "an RS256 key with JWT_ALGORITHM=ES256",
          JSON.stringify({ keys: [{ ...publicJwk, alg: "RS256" }] }),
          "no public key"
        ],
        ["a private key", JSON.stringify({ keys: [publicJwk, privateJwk] }), "private key"]
      ]
      for (const [name, content, reason] of refused) {
        const result = yield* withJwks(content, name.includes("ES256") ? { JWT_ALGORITHM: "ES256" } : {})
        expect(Either.isLeft(result), name).toBe(true)
        if (Either.isLeft(result)) {
          const text = reasonOf(result.left as ConfigError.ConfigError)
          expect(text, name).toContain("JWT_JWKS_FILE: ")
          expect(text, name).toContain(reason)
        }
      }
    }))
  // An issuer whose tokens carry no `kid` publishes the old and the new key
  // side by side while it rotates: each token is its signer's, not refused.
  it.effect("a token without kid is verified by whichever key of several signed it", () =>
    Effect.gen(function*() {
      const next = generateKeyPairSync("rsa", { modulusLength: 2048 })
      const other = generateKeyPairSync("rsa", { modulusLength: 2048 })
      const jwks = { keys: [publicJwk, next.publicKey.export({ format: "jwk" })] }
      const key = yield* withJwks(JSON.stringify(jwks)).pipe(Effect.flatMap(identity))
      const verifier = Auth.makeVerifier({ key })
      const signWith = (privateKey: KeyObject, expiresAt: number) =>
        Effect.promise(() =>
          new Jose.SignJWT({}).setProtectedHeader({ alg: "RS256" }).setSubject("alice").setExpirationTime(expiresAt)
            .sign(privateKey)
        )
      const hour = Math.floor(Date.now() / 1000) + 3600
      expect((yield* verifier.verify(yield* signWith(rsa.privateKey, hour))).userId).toBe("alice")
      expect((yield* verifier.verify(yield* signWith(next.privateKey, hour))).userId).toBe("alice")
      // A key not in the set is still refused; an expired token is refused as expired.
      const foreign = yield* Effect.flip(verifier.verify(yield* signWith(other.privateKey, hour)))
      expect(foreign.reason).toBe("Invalid token (ERR_JWS_SIGNATURE_VERIFICATION_FAILED)")
      const expired = yield* Effect.flip(verifier.verify(yield* signWith(next.privateKey, hour - 7200)))
      expect(expired.reason).toBe("The token has expired")
    }))
})

describe("JWT_PUBLIC_KEY_FILE", () => {
  const withKeyFile = (bits: number) => {
    const dir = freshDir()
    const file = Path.join(dir, "public.pem")
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: bits })
    Fs.writeFileSync(file, publicKey.export({ format: "pem", type: "spki" }))
    return Auth.keyFromConfig.pipe(
      Effect.either,
      Effect.withConfigProvider(ConfigProvider.fromJson({ DATA_DIR: dir, JWT_PUBLIC_KEY_FILE: file }))
    )
  }

  // jose verifies RSA signatures with keys of 2048 bits or more only: a
  // shorter one would start a service that refuses every token.
  it.effect("an RSA key under 2048 bits is refused at start, naming the setting; 2048 is the key", () =>
    Effect.gen(function*() {
      const weak = yield* withKeyFile(1024)
      expect(Either.isLeft(weak)).toBe(true)
      if (Either.isLeft(weak)) {
        const text = reasonOf(weak.left as ConfigError.ConfigError)
        expect(text).toContain("JWT_PUBLIC_KEY_FILE: ")
        expect(text).toContain("2048")
      }
      const strong = yield* withKeyFile(2048)
      expect(Either.isRight(strong) && strong.right._tag).toBe("PublicKey")
    }))
})

describe("the subject as a user id", () => {
  it("follows the command metadata's rule: 1 to 255 code points of storable text", () => {
    expect(Auth.isUserId("😀".repeat(200))).toBe(true)
    expect(Auth.isUserId("a".repeat(255))).toBe(true)
    expect(Auth.isUserId("a".repeat(256))).toBe(false)
    expect(Auth.isUserId("😀".repeat(256))).toBe(false)
    expect(Auth.isUserId("")).toBe(false)
    expect(Auth.isUserId("a\u0000b")).toBe(false)
    expect(Auth.isUserId("\ud800")).toBe(false)
    expect(Auth.isUserId(42)).toBe(false)
  })

  it.effect("a verified token with an astral-plane subject of 200 characters is accepted", () =>
    Effect.gen(function*() {
      const secret = new TextEncoder().encode("s".repeat(64))
      const verifier = Auth.makeVerifier({ key: { _tag: "Secret", secret, development: false } })
      const sub = "😀".repeat(200)
      const token = yield* Effect.promise(() => Auth.sign({ secret, sub }))
      expect((yield* verifier.verify(token)).userId).toBe(sub)
      const tooLong = yield* Effect.promise(() => Auth.sign({ secret, sub: "😀".repeat(256) }))
      expect((yield* Effect.flip(verifier.verify(tooLong)))._tag).toBe("Unauthorized")
    }))
})

describe("JWT_AUDIENCE", () => {
  const secret = "s".repeat(64)
  const verifierFor = (audience: string) =>
    Effect.map(Auth.TokenVerifier, identity).pipe(
      Effect.provide(Auth.layerVerifier),
      Effect.withConfigProvider(
        Config.environment({ DATA_DIR: freshDir(), JWT_SECRET: secret, JWT_AUDIENCE: audience })
      )
    )
  const forAudience = (audience: string | Array<string>) =>
    Effect.promise(() =>
      new Jose.SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("alice").setAudience(audience)
        .setExpirationTime("1h").sign(new TextEncoder().encode(secret))
    )

  // As an issuer serving several APIs is configured: a token for any one of
  // them is this service's, a token for none of them is not.
  it.effect("a comma-separated list accepts a token for any audience of it, and no other", () =>
    Effect.gen(function*() {
      const verifier = yield* verifierFor("orders-api, https://orders.example")
      for (const aud of ["orders-api", "https://orders.example", ["billing-api", "orders-api"]]) {
        expect((yield* verifier.verify(yield* forAudience(aud))).userId, String(aud)).toBe("alice")
      }
      for (const aud of ["billing-api", "orders-api, https://orders.example", "orders-api,https://orders.example"]) {
        const refused = yield* Effect.flip(verifier.verify(yield* forAudience(aud)))
        expect(refused.reason, aud).toBe("Invalid token (ERR_JWT_CLAIM_VALIDATION_FAILED: aud)")
      }
    }))

  it.effect("a list of no audience (\",\") is refused at start, naming it, not taken as no check", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(verifierFor(" , "))
      expect(reasonOf(error as ConfigError.ConfigError)).toContain("JWT_AUDIENCE: ")
    }))
})

describe("JWT_ISSUER", () => {
  // As a .env or env file may pad it: no issuer writes spaces around its iss.
  it.effect("padded with spaces, it is still the issuer the tokens name", () =>
    Effect.gen(function*() {
      const secret = "s".repeat(64)
      const verifier = yield* Effect.map(Auth.TokenVerifier, identity).pipe(
        Effect.provide(Auth.layerVerifier),
        Effect.withConfigProvider(
          Config.environment({ DATA_DIR: freshDir(), JWT_SECRET: secret, JWT_ISSUER: " https://issuer.test " })
        )
      )
      const token = yield* Effect.promise(() =>
        Auth.sign({ secret: new TextEncoder().encode(secret), sub: "alice", issuer: "https://issuer.test" })
      )
      expect((yield* verifier.verify(token)).userId).toBe("alice")
    }))
})
