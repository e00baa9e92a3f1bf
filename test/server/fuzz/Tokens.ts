/**
 * JWTs built by hand with `node:crypto`, for tokens a well-behaved library
 * refuses to make: HMAC signed with a public key's text, an embedded key in
 * the header, `alg` spelled oddly, `crit` extensions.
 */
import * as Crypto from "node:crypto"

const segment = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

export type Signer = (input: string) => Buffer

/** A compact JWS of `header` and `claims`, signed by `sign` over `header.claims`. */
export const jwt = (header: Record<string, unknown>, claims: Record<string, unknown>, sign: Signer): string => {
  const input = `${segment(header)}.${segment(claims)}`
  return `${input}.${sign(input).toString("base64url")}`
}

export const hmac = (secret: string | Uint8Array, hash = "sha256"): Signer => (input) =>
  Crypto.createHmac(hash, secret).update(input).digest()

export const rsa = (privateKey: Crypto.KeyObject, hash = "sha256"): Signer => (input) =>
  Crypto.sign(hash, Buffer.from(input), privateKey)

export const rsaPss = (privateKey: Crypto.KeyObject, hash = "sha256"): Signer => (input) =>
  Crypto.sign(hash, Buffer.from(input), {
    key: privateKey,
    padding: Crypto.constants.RSA_PKCS1_PSS_PADDING,
    saltLength: Crypto.constants.RSA_PSS_SALTLEN_DIGEST
  })

export const ecdsa = (privateKey: Crypto.KeyObject, hash = "sha256"): Signer => (input) =>
  Crypto.sign(hash, Buffer.from(input), { key: privateKey, dsaEncoding: "ieee-p1363" })

export const unsigned: Signer = () => Buffer.alloc(0)

/** Standard claims for `sub`, valid for an hour (or as given). */
export const claimsFor = (sub: string, extra: Record<string, unknown> = {}) => {
  const now = Math.floor(Date.now() / 1000)
  return { sub, iat: now, exp: now + 3600, ...extra }
}

export interface KeyPair {
  readonly privateKey: Crypto.KeyObject
  readonly publicKey: Crypto.KeyObject
  readonly publicPem: string
  readonly publicJwk: Crypto.JsonWebKey
}

const pair = (keys: { privateKey: Crypto.KeyObject; publicKey: Crypto.KeyObject }): KeyPair => ({
  ...keys,
  publicPem: keys.publicKey.export({ type: "spki", format: "pem" }).toString(),
  publicJwk: keys.publicKey.export({ format: "jwk" })
})

export const rsaKeyPair = (): KeyPair => pair(Crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }))

export const ecKeyPair = (): KeyPair => pair(Crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }))
