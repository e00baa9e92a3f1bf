/**
 * The cancel request of a statement on a TLS connection goes over TLS too,
 * with the connection's settings, as libpq 17's does: sent in the clear, as
 * it was, the backend's process id and secret key crossed the network
 * readable, and whoever read them could cancel that backend's statements for
 * as long as it lived. Seen through a relay that records the first message
 * of every connection made through it.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PgPool } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { randomBytes } from "node:crypto"
import * as Net from "node:net"
import * as TlsServer from "../support/Tls.js"

const sslRequest = 80877103
const cancelRequest = 80877102

/** A TCP relay on 127.0.0.1 to `target` that records the code of each connection's first message. */
const recordingRelay = (target: URL) =>
  Effect.acquireRelease(
    Effect.async<{ readonly port: number; readonly codes: Array<number>; readonly server: Net.Server }>((resume) => {
      const codes: Array<number> = []
      const server = Net.createServer((inbound) => {
        const outbound = Net.connect(Number(target.port || 5432), target.hostname)
        let head = Buffer.alloc(0)
        const record = (chunk: Buffer) => {
          head = Buffer.concat([head, chunk])
          if (head.length < 8) return
          codes.push(head.readInt32BE(4))
          inbound.off("data", record)
        }
        inbound.on("data", record)
        inbound.pipe(outbound).pipe(inbound)
        inbound.on("error", () => outbound.destroy())
        outbound.on("error", () => inbound.destroy())
      })
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({ port: (server.address() as Net.AddressInfo).port, codes, server })))
    }),
    ({ server }) =>
      Effect.sync(() =>
        server.close()
      )
  )

const modes = (url: string) => ({
  "verify-full": url,
  "libpq require": TlsServer.withParams(url, { sslmode: "require", uselibpqcompat: "true", sslrootcert: undefined })
})

describe.skipIf(TlsServer.url === undefined)(`a cancel request over TLS, with ${TlsServer.skipReason}`, () => {
  for (const [mode, url] of Object.entries(TlsServer.url === undefined ? {} : modes(TlsServer.url))) {
    it.scopedLive(
      `${mode}: the cancel of an interrupted statement is encrypted, and it still cancels`,
      () =>
        Effect.gen(function*() {
          const relay = yield* recordingRelay(new URL(url))
          const through = new URL(url)
          through.port = String(relay.port)
          const applicationName = `tls-cancel-relay-${randomBytes(4).toString("hex")}`
          const context = yield* Layer.build(PgPool.layer({ url: through.toString(), poolSize: 1, applicationName }))
          const sql = Context.get(context, SqlClient.SqlClient)
          const sleeping = yield* Effect.fork(sql`SELECT pg_sleep(30)`)
          yield* TlsServer.eventually(
            TlsServer.connectionsOf(applicationName),
            (rows) => rows.some((row) => row.state === "active")
          )
          yield* Fiber.interrupt(sleeping)
          // The server ended the statement: a cancel that did not arrive leaves it 30 s.
          yield* TlsServer.eventually(
            TlsServer.connectionsOf(applicationName),
            (rows) => rows.length === 1 && rows.every((row) => row.state !== "active")
          )
          // The pool's connection, then the cancel's: both began with an SSLRequest.
          yield* TlsServer.eventually(Effect.sync(() => relay.codes.length), (n) => n >= 2)
          expect(relay.codes).not.toContain(cancelRequest)
          expect(relay.codes).toEqual(relay.codes.map(() => sslRequest))
          expect(yield* sql`SELECT 1 AS one`.pipe(Effect.timeout("10 seconds"))).toEqual([{ one: 1 }])
        }),
      60_000
    )
  }
})
