/**
 * A database the service cannot open a TLS connection to is unavailable,
 * as one that refuses the connection is: a command fails with
 * `StoreUnavailable` (503), not a defect (500), which is what the readiness
 * check says too. A server whose certificate was rotated to a CA the client
 * does not know yet, or expired, failed every command with a defect.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Command, CommandBus, Handler } from "effect-command-bus"
import { PgPool, SqlFailure, SqlStores } from "effect-command-bus/sql"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"
import * as Net from "node:net"
import * as TestDatabase from "../support/Database.js"
import * as TlsServer from "../support/Tls.js"

class Touch extends Command.Class<Touch>()("Touch", {
  payload: {},
  success: Schema.Void,
  failure: Schema.Never
}) {}

const bus = CommandBus.make([Touch], {
  Touch: () =>
    Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`).pipe(Effect.orDie, Effect.as(Handler.result(undefined)))
}).pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware({ timeout: "10 seconds" })))

/** The outcome of one command on a pool over `url`: its typed failure, or "defect". */
const outcomeOn = (url: string) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      SqlStores.layer({ relay: false }).pipe(
        Layer.provideMerge(PgPool.layer({ url })),
        Layer.provide(Logger.minimumLogLevel(LogLevel.None))
      )
    )
    const exit = yield* Effect.exit(Effect.provide(bus.dispatch(new Touch({})), context))
    if (Exit.isSuccess(exit)) return "succeeded"
    if (Cause.isDie(exit.cause)) return "defect"
    return Cause.failureOption(exit.cause).pipe((failure) => failure._tag === "Some" ? failure.value : "none")
  })

describe("a TLS connection that cannot be set up", () => {
  it.scopedLive(
    "a server that takes no TLS (it answers the SSLRequest N): StoreUnavailable",
    () =>
      Effect.gen(function*() {
        const server = yield* Effect.acquireRelease(
          Effect.async<Net.Server>((resume) => {
            const listening = Net.createServer((socket) => socket.once("data", () => socket.end("N")))
            listening.listen(0, "127.0.0.1", () => resume(Effect.succeed(listening)))
          }),
          (server) => Effect.sync(() => server.close())
        )
        const port = (server.address() as Net.AddressInfo).port
        const outcome = yield* outcomeOn(`postgres://postgres@127.0.0.1:${port}/postgres?sslmode=no-verify`)
        expect(outcome).toMatchObject({ _tag: "StoreUnavailable", store: "database" })
        expect(SqlFailure.isUnavailable(new Error("The server does not support SSL connections"))).toBe(true)
      }),
    30_000
  )

  it.scopedLive.skipIf(TlsServer.url === undefined)(
    `a certificate a CA the client has did not sign: StoreUnavailable (with ${TlsServer.skipReason})`,
    () =>
      Effect.gen(function*() {
        const dir = yield* TestDatabase.tempDir("ecb-tls")
        const outcome = yield* outcomeOn(
          TlsServer.withParams(TlsServer.url!, { sslrootcert: TlsServer.wrongCa(dir) })
        )
        expect(outcome).toMatchObject({ _tag: "StoreUnavailable", store: "database" })
      }),
    30_000
  )
})
