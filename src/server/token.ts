/**
 * `npm run token -- --sub <user> [--admin] [--roles a,b] [--expires 1h]`:
 * prints a bearer token signed with `JWT_SECRET`, or with the development
 * secret the service keeps in `DATA_DIR` when none is configured.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { parseArgs } from "node:util"
import * as Auth from "./Auth.js"
import * as Config from "./Config.js"

const usage = "usage: npm run token -- --sub <user id> [--admin] [--roles role1,role2] [--expires 1h]"

const program = Effect.gen(function*() {
  const { values } = yield* Effect.try({
    try: () =>
      parseArgs({
        options: {
          sub: { type: "string" },
          admin: { type: "boolean", default: false },
          roles: { type: "string", default: "" },
          expires: { type: "string", default: "1h" }
        }
      }),
    catch: (error) => new Error(`${(error as Error).message}\n${usage}`)
  })
  const sub = values.sub
  if (!Auth.isUserId(sub)) {
    return yield* Effect.fail(new Error(usage))
  }
  const jwt = yield* Config.jwt
  if (Option.isSome(jwt.publicKeyFile) || Option.isSome(jwt.jwksFile)) {
    return yield* Effect.fail(
      new Error("The service verifies with a public key: get tokens from your identity provider")
    )
  }
  const { dataDir } = yield* Config.database
  // As the service, which refuses to start so: a development secret made
  // here would sign tokens nothing in production verifies.
  if (Option.isNone(jwt.secret) && (yield* Config.server).production) {
    return yield* Effect.fail(
      new Error("NODE_ENV=production requires JWT_SECRET: there is no development secret in production")
    )
  }
  const secret = Option.isSome(jwt.secret)
    ? new TextEncoder().encode(Redacted.value(jwt.secret.value))
    : yield* Auth.devSecret(dataDir)
  const roles = [
    ...values.roles.split(",").map((role) => role.trim()).filter((role) => role.length > 0),
    ...(values.admin ? [Auth.adminRole] : [])
  ]
  const token = yield* Effect.tryPromise({
    // A bad `--expires` ("bogus") is refused by the signer: the usage, not a stack.
    catch: (error) => new Error(`${error instanceof Error ? error.message : String(error)}\n${usage}`),
    try: () =>
      Auth.sign({
        secret,
        sub,
        roles,
        expiresIn: values.expires,
        issuer: Option.getOrUndefined(jwt.issuer),
        audience: Option.getOrUndefined(jwt.audience)
      })
  })
  yield* Console.log(token)
})

NodeRuntime.runMain(
  program.pipe(
    Effect.catchAll((error) => Effect.zipRight(Console.error(String(error)), Effect.sync(() => process.exit(2)))),
    Effect.withConfigProvider(Config.environment())
  ),
  { disablePrettyLogger: true }
)
