/**
 * PgPool's urlSettings rewrites the URL's query by hand. For URLs
 * pg-connection-string accepts, the pool must connect where pg would have
 * connected with the original URL, with the same credentials, and send the
 * URL's options (pg's: the last one given) with the pool's search_path.
 * No server needed: the pool's options are read back through pg's own
 * ConnectionParameters.
 */
import { describe, expect, it } from "@effect/vitest"
import { SqlUnitOfWork } from "effect-command-bus/sql"
import { PgPool } from "effect-command-bus/sql"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import Pg from "pg"

interface Seen {
  readonly host: unknown
  readonly port: unknown
  readonly user: unknown
  readonly password: unknown
  readonly database: unknown
  readonly ssl: unknown
  readonly client_encoding: unknown
  readonly application_name: unknown
  readonly options: unknown
}

const seen = (config: Pg.ClientConfig): Seen => {
  // What a client of the pool would connect with (pg's ConnectionParameters); no connection is opened.
  const p = (new Pg.Client(config) as unknown as { readonly connectionParameters: Record<string, unknown> })
    .connectionParameters
  return {
    host: p.host,
    port: p.port,
    user: p.user,
    password: p.password,
    database: p.database,
    ssl: p.ssl,
    client_encoding: p.client_encoding,
    application_name: p.application_name,
    options: p.options
  }
}

const poolParams = (url: string, schema?: string) =>
  Effect.scoped(
    Effect.map(
      Layer.build(PgPool.layer({ url, schema, poolSize: 1 })),
      (context) => seen(Context.get(context, SqlUnitOfWork.PgPool).pool.options)
    )
  )

// What pg would have used, from the original URL alone (before the pool's own options).
const original = (url: string) => seen({ connectionString: url })

const where = ({ client_encoding, database, host, password, port, ssl, user }: Seen) => ({
  host,
  port,
  user,
  password,
  database,
  ssl,
  client_encoding
})

const cases: ReadonlyArray<readonly [string, string, string | undefined]> = [
  // [label, url, the options pg reads from the original URL]
  [
    "postgresql://",
    "postgresql://postgres@127.0.0.1:55433/db?options=-c%20lock_timeout%3D1234",
    "-c lock_timeout=1234"
  ],
  ["socket:", "socket:/var/run/postgresql?db=x&options=-c%20lock_timeout%3D5", "-c lock_timeout=5"],
  ["IPv6", "postgres://u:p@[::1]:5432/db?options=-c%20lock_timeout%3D5", "-c lock_timeout=5"],
  ["password %3F", "postgres://u:pa%3Fss@h:5432/db?options=-c%20lock_timeout%3D5&sslmode=disable", "-c lock_timeout=5"],
  ["password %23 %40 %2F", "postgres://u:p%23a%40b%2Fc@h/db?options=-c%20x%3Dy", "-c x=y"],
  ["+ in options", "postgres://u@h/db?options=-c+lock_timeout%3D5", "-c lock_timeout=5"],
  ["raw space in options", "postgres://u@h/db?options=-c lock_timeout=5&application_name=a b", "-c lock_timeout=5"],
  ["empty query", "postgres://u@h/db?", undefined],
  ["fragment", "postgres://u@h/db?options=-c%20x%3Dy&sslmode=require#frag", "-c x=y"],
  ["host in query", "postgres:///db?host=%2Fvar%2Frun%2Fpostgresql&options=-c%20x%3Dy", "-c x=y"],
  ["empty host with credentials", "postgres://u:p@/db?host=/tmp&options=-c%20x%3Dy", "-c x=y"],
  ["# before ?", "postgres://u@h/db#x?options=-c%20x%3Dy", undefined],
  [
    "options twice",
    "postgres://u@h/db?options=-c%20lock_timeout%3D1&options=-c%20lock_timeout%3D2",
    "-c lock_timeout=2"
  ]
]

describe("PgPool: the rewritten URL", () => {
  for (const [label, url, urlOptions] of cases) {
    it.effect(`${label}: same place, same credentials, the URL's options sent`, () =>
      Effect.gen(function*() {
        const before = original(url)
        expect(before.options).toBe(urlOptions)
        const after = yield* poolParams(url)
        expect(where(after)).toEqual(where(before))
        expect(after.options).toBe(
          urlOptions === undefined ? "-c search_path=public" : `-c search_path=public ${urlOptions}`
        )
      }))
  }
})
