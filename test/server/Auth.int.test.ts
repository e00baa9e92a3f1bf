/**
 * Bearer authentication over HTTP: every way a token can be missing or
 * wrong is 401 with `WWW-Authenticate: Bearer` (`error="invalid_token"` when a
 * bearer token was sent) and a problem body, on every
 * authenticated endpoint; roles come from the verified token only.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { kind } from "../support/Database.js"
import {
  expectJson,
  expectProblem,
  layer,
  layerOptions,
  orderBody,
  type Reply,
  request,
  serviceSecret,
  setStock,
  signToken,
  stockOf,
  token,
  unknownOrderId,
  unsecuredToken
} from "./Http.js"

const now = () => Math.floor(Date.now() / 1000)

// RFC 6750 §3: `error="invalid_token"` when a bearer token was sent and
// failed; the bare challenge when no bearer credentials were.
const expectUnauthorized = (reply: Reply, authorization?: string) => {
  expectProblem(reply, 401, "Unauthorized")
  expect(reply.headers.get("www-authenticate"), authorization?.slice(0, 40)).toBe(
    authorization !== undefined && /^bearer +\S/i.test(authorization.trim())
      ? "Bearer error=\"invalid_token\""
      : "Bearer"
  )
}

/** Every authenticated endpoint, each with a request that would succeed with a valid admin token. */
const endpoints: ReadonlyArray<{
  readonly name: string
  readonly send: (authorization: string | undefined) => ReturnType<typeof request>
}> = [
  {
    name: "POST /api/v1/orders",
    send: (authorization) =>
      request("POST", "/api/v1/orders", {
        json: orderBody([{ product_id: "auth-none", quantity: 1 }]),
        headers: authorization === undefined ? {} : { authorization }
      })
  },
  {
    name: "POST /api/v1/orders/{id}/cancel",
    send: (authorization) =>
      request("POST", `/api/v1/orders/${unknownOrderId}/cancel`, {
        json: { reason: "x" },
        headers: authorization === undefined ? {} : { authorization }
      })
  },
  {
    name: "GET /api/v1/orders/{id}",
    send: (authorization) =>
      request("GET", `/api/v1/orders/${unknownOrderId}`, {
        headers: authorization === undefined ? {} : { authorization }
      })
  },
  {
    name: "PUT /api/v1/products/{id}/stock",
    send: (authorization) =>
      request("PUT", "/api/v1/products/auth-stock/stock", {
        json: { available: 999 },
        headers: authorization === undefined ? {} : { authorization }
      })
  },
  {
    name: "GET /api/v1/products/{id}/stock",
    send: (authorization) =>
      request("GET", "/api/v1/products/auth-stock/stock", {
        headers: authorization === undefined ? {} : { authorization }
      })
  },
  {
    name: "GET /api/v1/events",
    send: (authorization) =>
      request("GET", "/api/v1/events", { headers: authorization === undefined ? {} : { authorization } })
  }
]

/** Bad credentials, each built from the service's secret and a valid admin token where it helps. */
const badCredentials = Effect.gen(function*() {
  const secret = yield* serviceSecret
  const valid = yield* token("root", { admin: true })
  const [header, payload, signature] = valid.split(".") as [string, string, string]
  const claims = { sub: "root", roles: ["admin"] }
  const flipped = `${signature[0] === "A" ? "B" : "A"}${signature.slice(1)}`
  const tamperedPayload = Buffer.from(JSON.stringify({ ...claims, sub: "someone-else", exp: now() + 3600 }))
    .toString("base64url")
  return [
    ["no Authorization header", undefined],
    ["an empty Authorization header", ""],
    ["the scheme alone", "Bearer"],
    ["the scheme and a space", "Bearer "],
    ["Basic credentials", "Basic cm9vdDpzZWNyZXQ="],
    ["a token without its scheme", valid],
    ["a token that is not a JWT", "Bearer not-a-jwt"],
    ["a token of two segments", `Bearer ${header}.${payload}`],
    ["a token of random base64url", `Bearer ${Buffer.from("garbage".repeat(20)).toString("base64url")}`],
    ["an expired token", `Bearer ${yield* signToken(secret, claims, { expiresAt: now() - 3600 })}`],
    ["a token that never expires (no exp)", `Bearer ${yield* signToken(secret, claims, { expiresAt: null })}`],
    [
      "a token not valid before an hour from now",
      `Bearer ${yield* signToken(secret, claims, { notBefore: now() + 3600 })}`
    ],
    ["a token with a wrong signature", `Bearer ${header}.${payload}.${flipped}`],
    ["a token with its signature removed", `Bearer ${header}.${payload}.`],
    ["a token whose payload was changed", `Bearer ${header}.${tamperedPayload}.${signature}`],
    ["alg: none, crafted by hand", `Bearer ${unsecuredToken({ ...claims, exp: now() + 3600 })}`],
    [
      "alg: none with the valid token's signature",
      `Bearer ${unsecuredToken({ ...claims, exp: now() + 3600 }, signature)}`
    ],
    [
      "HS256 signed with another secret",
      `Bearer ${yield* signToken("another-secret-another-secret-0123456789", claims)}`
    ],
    ["HS512 signed with the service's secret", `Bearer ${yield* signToken(secret, claims, { alg: "HS512" })}`],
    ["a token without a subject", `Bearer ${yield* signToken(secret, { roles: ["admin"] })}`],
    ["a token with an empty subject", `Bearer ${yield* signToken(secret, { sub: "", roles: ["admin"] })}`],
    ["a token with a 256-character subject", `Bearer ${yield* signToken(secret, { sub: "s".repeat(256) })}`],
    ["a token of 8 KB", `Bearer ${"a".repeat(8 * 1024)}`]
  ] as const
})

describe(`authentication over HTTP (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect(
      "every bad credential is 401 with WWW-Authenticate: Bearer on every authenticated endpoint",
      () =>
        Effect.gen(function*() {
          const admin = yield* token("root", { admin: true })
          yield* setStock("auth-stock", 5, admin)
          for (const [name, authorization] of yield* badCredentials) {
            for (const endpoint of endpoints) {
              const reply = yield* endpoint.send(authorization)
              expect(reply.status, `${endpoint.name} with ${name}`).toBe(401)
              expectUnauthorized(reply, authorization)
            }
          }
          // Nothing ran: the stock is as set, and no event was written.
          expect(yield* stockOf("auth-stock", admin)).toBe(5)
          const feed = yield* request("GET", "/api/v1/events", { token: admin })
          expect(feed.body.events).toEqual([])
        }),
      60_000
    )

    it.effect("the problem names the reason without echoing the token", () =>
      Effect.gen(function*() {
        const secret = yield* serviceSecret
        const expired = yield* signToken(secret, { sub: "root" }, { expiresAt: now() - 3600 })
        const reply = yield* request("GET", "/api/v1/products/auth-stock/stock", { token: expired })
        expectUnauthorized(reply, `Bearer ${expired}`)
        expect(reply.body.detail).toBe("The token has expired")
        expect(reply.text).not.toContain(expired)
        expect(reply.text).not.toContain(secret)
        const missing = yield* request("GET", "/api/v1/products/auth-stock/stock")
        expect(missing.body.detail).toBe("Missing bearer token")
        expectUnauthorized(missing)
        expect(missing.headers.get("www-authenticate")).toBe("Bearer")
        expect(reply.headers.get("www-authenticate")).toBe("Bearer error=\"invalid_token\"")
      }))

    it.effect("a valid token is accepted; the scheme is case-insensitive, the spaces after it one or more; expiry within the 5 s tolerance passes", () =>
      Effect.gen(function*() {
        const secret = yield* serviceSecret
        const alice = yield* token("alice")
        expectJson(yield* request("GET", "/api/v1/products/auth-stock/stock", { token: alice }), 200)
        const lower = yield* request("GET", "/api/v1/products/auth-stock/stock", {
          headers: { authorization: `bearer ${alice}` }
        })
        expectJson(lower, 200)
        // RFC 6750: `"Bearer" 1*SP b64token`.
        const spaced = yield* request("GET", "/api/v1/products/auth-stock/stock", {
          headers: { authorization: `Bearer   ${alice}` }
        })
        expectJson(spaced, 200)
        const justExpired = yield* signToken(secret, { sub: "alice" }, { expiresAt: now() - 1 })
        expectJson(yield* request("GET", "/api/v1/products/auth-stock/stock", { token: justExpired }), 200)
      }))

    it.effect("roles come from the verified token: a user token is 403 on admin endpoints, a signed admin role is not", () =>
      Effect.gen(function*() {
        const secret = yield* serviceSecret
        const alice = yield* token("alice")
        expectProblem(yield* request("GET", "/api/v1/events", { token: alice }), 403, "Forbidden")
        expectProblem(
          yield* request("PUT", "/api/v1/products/auth-stock/stock", { token: alice, json: { available: 1 } }),
          403,
          "Forbidden"
        )
        const nonStringRoles = yield* signToken(secret, { sub: "mallory", roles: [{ name: "admin" }, 1, null] })
        expectProblem(yield* request("GET", "/api/v1/events", { token: nonStringRoles }), 403, "Forbidden")
        const roleAsString = yield* signToken(secret, { sub: "mallory", roles: "admin" })
        expectProblem(yield* request("GET", "/api/v1/events", { token: roleAsString }), 403, "Forbidden")
        const signedAdmin = yield* signToken(secret, { sub: "ops", roles: ["admin"] })
        expectJson(yield* request("GET", "/api/v1/events", { token: signedAdmin }), 200)
      }))

    it.effect("a token in the query string is not a credential", () =>
      Effect.gen(function*() {
        const admin = yield* token("root", { admin: true })
        const reply = yield* request("GET", `/api/v1/events?access_token=${admin}`)
        expectUnauthorized(reply)
      }))

    // @effect/platform's bearer decoder drops the first seven characters of
    // `Authorization` whatever they are; src/server/Auth.ts checks the scheme.
    it.effect("another scheme with a valid token (Digest <jwt>) is 401", () =>
      Effect.gen(function*() {
        const admin = yield* token("root", { admin: true })
        const reply = yield* request("GET", "/api/v1/events", { headers: { authorization: `Digest ${admin}` } })
        expectUnauthorized(reply, `Digest ${admin}`)
      }))

    // A subject the database could not store (NUL) is refused at verification.
    it.effect("a signed token whose subject holds NUL is refused with a 4xx, not 500", () =>
      Effect.gen(function*() {
        const admin = yield* token("root", { admin: true })
        const secret = yield* serviceSecret
        yield* setStock("auth-nul", 1, admin)
        const nul = yield* signToken(secret, { sub: "eve\u0000" })
        const reply = yield* request("POST", "/api/v1/orders", {
          token: nul,
          json: orderBody([{ product_id: "auth-nul", quantity: 1 }])
        })
        expect(reply.status).toBeGreaterThanOrEqual(400)
        expect(reply.status).toBeLessThan(500)
        expectProblem(reply, reply.status)
      }))
  })
})
