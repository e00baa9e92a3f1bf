/**
 * The answer timeout (`PgPool`'s `statementTimeout` + `answerMargin`) on a
 * connection over TLS or a Unix socket, when the server stops answering (a
 * partition, a frozen server): the statement fails with the timeout's error
 * and the pool goes on when the server answers again. Only a TCP socket can
 * be reset; setting the reset flag on a TLS or a Unix socket made its close
 * throw "this._handle.reset is not a function" (a defect, 500), left the
 * connection open, and the bytes that came on it later crashed the process
 * (`RangeError [ERR_OUT_OF_RANGE]` in `onStreamRead`): managed PostgreSQL is
 * reached over TLS, a proxy such as Cloud SQL's over a Unix socket.
 */
import { SqlClient } from "@effect/sql"
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { PgPool, SqlFailure } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { frozenProxy } from "../faults/Harness.js"
import * as TestDatabase from "../support/Database.js"
import * as TlsServer from "../support/Tls.js"

/** A statement while the proxy is frozen, then one after it thaws, on a pool of one connection through it. */
const stallAndHeal = (proxy: Effect.Effect.Success<ReturnType<typeof frozenProxy>>) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      PgPool.layer({ url: proxy.url, poolSize: 1, statementTimeout: "300 millis", answerMargin: "300 millis" })
    )
    const sql = Context.get(context, SqlClient.SqlClient)
    expect(yield* sql`SELECT ${1}::int AS one`).toEqual([{ one: 1 }])
    proxy.freeze()
    const stalled = yield* Effect.flip(sql`SELECT ${2}::int AS two`.pipe(Effect.timeout("15 seconds")))
    expect(stalled).toBeInstanceOf(SqlError)
    expect(String((stalled as SqlError).cause)).toContain("PostgreSQL did not answer within 600 ms")
    expect(SqlFailure.isUnavailable(stalled)).toBe(true)
    // The server's bytes held meanwhile arrive: nothing listens on the closed
    // connection any more, and the process goes on.
    proxy.unfreeze()
    yield* Effect.sleep("300 millis")
    expect(yield* sql`SELECT ${3}::int AS three`.pipe(Effect.timeout("15 seconds"))).toEqual([{ three: 3 }])
  })

describe("the answer timeout on a socket that cannot be reset", () => {
  it.scopedLive.skipIf(TlsServer.url === undefined)(
    `over TLS: the timeout's error, then the pool goes on (with ${TlsServer.skipReason})`,
    () => Effect.flatMap(frozenProxy(TlsServer.url!), stallAndHeal),
    60_000
  )

  it.scopedLive.skipIf(TestDatabase.serverUrl === undefined)(
    "over a Unix socket: the timeout's error, then the pool goes on (server only)",
    () =>
      Effect.gen(function*() {
        const dir = yield* TestDatabase.tempDir("ecb-socket")
        yield* stallAndHeal(yield* frozenProxy(TestDatabase.serverUrl!, { socketDir: dir }))
      }),
    60_000
  )
})
