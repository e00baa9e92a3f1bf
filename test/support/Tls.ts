/**
 * A PostgreSQL server that takes TLS connections only, for the tests of
 * connecting over TLS: `TEST_PG_TLS_URL` names it, with
 * `sslmode=verify-full&sslrootcert=<its CA file>` (`.ci/run` makes one).
 * Unset: those tests are skipped.
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Tls from "node:tls"
import Pg from "pg"

/** The TLS-only server's URL, when the suite has one (set to nothing: none). */
export const url: string | undefined = (process.env.TEST_PG_TLS_URL ?? "").trim() === ""
  ? undefined
  : process.env.TEST_PG_TLS_URL

/** Why the TLS tests did not run, for their names. */
export const skipReason = "TEST_PG_TLS_URL (a TLS-only server, sslmode=verify-full&sslrootcert=...)"

/** `url` with its query parameters changed: `undefined` removes one. */
export const withParams = (base: string, params: Record<string, string | undefined>) => {
  const parsed = new URL(base)
  for (const [name, value] of Object.entries(params)) {
    if (value === undefined) parsed.searchParams.delete(name)
    else parsed.searchParams.set(name, value)
  }
  return parsed.toString()
}

/** A password in the URL (`trust` ignores it), so a test can check no message quotes it. */
export const password = `pw-${randomBytes(6).toString("hex")}`

export const withPassword = (base: string) => {
  const parsed = new URL(base)
  parsed.password = password
  return parsed.toString()
}

/** A CA file in `dir` that did not sign the server's certificate: a public root of Node's own list. */
export const wrongCa = (dir: string) => {
  const file = Path.join(dir, "wrong-ca.crt")
  Fs.writeFileSync(file, Tls.rootCertificates[0]!)
  return file
}

/** The CA that signed the server's certificate, as text (the URL's `sslrootcert`). */
export const caText = () => Fs.readFileSync(new URL(url!).searchParams.get("sslrootcert")!, "utf8")

/** A statement on a connection of its own, over the TLS URL. */
export const admin = <A extends Record<string, unknown>>(statement: string, values: Array<unknown> = []) =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      const client = new Pg.Client({ connectionString: url })
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.query<A>(statement, values)).pipe(Effect.map((result) => result.rows)),
    (client) => Effect.promise(() => client.end())
  )

/** A schema of its own on the TLS server for the rest of the scope, dropped with what it holds. */
export const scopedSchema = () => {
  const name = `t_tls_${randomBytes(6).toString("hex")}`
  return Effect.as(
    Effect.acquireRelease(admin(`CREATE SCHEMA ${name}`), () => admin(`DROP SCHEMA ${name} CASCADE`)),
    name
  )
}

/** The connections of `applicationName` on the server: whether each is encrypted, its state and last statement. */
export const connectionsOf = (applicationName: string) =>
  admin<{ readonly ssl: boolean; readonly state: string | null; readonly query: string }>(
    `SELECT s.ssl, a.state, a.query FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
     WHERE a.application_name = $1`,
    [applicationName]
  )

/** Waits (bounded, 15 s) until `self` succeeds with a value `ok` accepts. */
export const eventually = <A, E, R>(self: Effect.Effect<A, E, R>, ok: (value: A) => boolean) =>
  self.pipe(
    Effect.filterOrFail(ok, (value) => new Error(`not yet: ${JSON.stringify(value)}`)),
    Effect.retry({ times: 150, schedule: Schedule.spaced("100 millis") })
  )
