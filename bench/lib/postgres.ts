/**
 * A throwaway PostgreSQL for benches: a fresh cluster in a temporary folder
 * on 127.0.0.1 and a free port, migrated with the project's own migrations,
 * stopped by its postmaster's pid when the bench is done, fails, or is
 * interrupted. `BENCH_DATABASE_URL` names an existing database to use
 * instead (migrated, never stopped, and emptied by the benches: give them
 * one of their own); `BENCH_PG_SETTINGS` adds server
 * settings to the throwaway one (`"synchronous_commit=off shared_buffers=256MB"`).
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { execFileSync, spawnSync } from "node:child_process"
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Migrations from "../../src/orders/Migrations.js"

export interface Database {
  /** A connection string for `pg`, `psql` and `pgbench`. */
  readonly url: string
  /** Stops the server (if this bench started it) and removes its files. */
  readonly stop: () => Promise<void>
}

export interface StartOptions {
  /** `max_connections`; the benches open up to 64 + two pools of 20. */
  readonly maxConnections?: number
  /** More server settings, as `-c name=value`. */
  readonly settings?: Readonly<Record<string, string>>
}

/** The folder of `initdb`, `pg_ctl` and `pgbench` (Debian keeps them off PATH). */
export const binDir = (): string => execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim()

/** A port nothing listens on now, as the kernel hands one out. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => typeof address === "object" && address !== null ? resolve(address.port) : reject(address))
    })
  })

// A postmaster that exited stays a zombie until init reaps it, which can
// take seconds in a container: a zombie counts as stopped.
const isAlive = (pid: number): boolean => {
  try {
    const state = /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1]
    return state !== undefined && state !== "Z" && state !== "X"
  } catch {
    return false
  }
}

const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

interface Cluster {
  readonly postmasterPid: number
  readonly root: string
}

// Clusters still running, stopped synchronously if the process exits
// without `stop()` (an error escaping, Ctrl-C).
const running = new Set<Cluster>()

const stopSync = (cluster: Cluster) => {
  running.delete(cluster)
  if (isAlive(cluster.postmasterPid)) {
    process.kill(cluster.postmasterPid, "SIGINT") // "fast" shutdown
    for (let waited = 0; isAlive(cluster.postmasterPid) && waited < 10_000; waited += 50) sleepSync(50)
    if (isAlive(cluster.postmasterPid)) process.kill(cluster.postmasterPid, "SIGKILL")
  }
  rmSync(cluster.root, { recursive: true, force: true })
}

let hooked = false
const stopAllOnExit = () => {
  if (hooked) return
  hooked = true
  process.on("exit", () => running.forEach(stopSync))
  // Without a listener these signals end the process without "exit"; with
  // one, they must end it themselves. A listener that stays (not "once") also
  // keeps a second signal, as a wrapper such as tsx forwards it, from cutting
  // the cleanup short.
  process.on("SIGINT", () => process.exit(130))
  process.on("SIGTERM", () => process.exit(143))
}

const migrate = (url: string): Promise<void> =>
  Effect.runPromise(
    Migrations.run.pipe(
      Effect.asVoid,
      Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
    )
  )

/**
 * Runs a PostgreSQL 15 of its own (or connects to `BENCH_DATABASE_URL`) and
 * creates the service's schema by running `src/orders/Migrations.ts`.
 */
export const start = async (options: StartOptions = {}): Promise<Database> => {
  const external = process.env["BENCH_DATABASE_URL"]
  if (external !== undefined && external !== "") {
    await migrate(external)
    return { url: external, stop: async () => {} }
  }

  const bin = binDir()
  const root = mkdtempSync(join(tmpdir(), "bench-pg-"))
  const dataDir = join(root, "data")
  const socketDir = join(root, "socket")
  mkdirSync(dataDir, { mode: 0o700 })
  mkdirSync(socketDir)
  // initdb refuses to run as root: run the server as the "postgres" user.
  const asPostgres = process.getuid?.() === 0
  const run = (command: string, args: ReadonlyArray<string>) => {
    const [file, argv] = asPostgres ? ["runuser", ["-u", "postgres", "--", command, ...args]] : [command, args]
    const result = spawnSync(file, argv, { encoding: "utf8" })
    if (result.status !== 0) {
      rmSync(root, { recursive: true, force: true })
      throw new Error(`${command} failed (${result.status}): ${result.stderr || result.stdout}`)
    }
  }
  if (asPostgres) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }))
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }))
    for (const dir of [root, dataDir, socketDir]) chownSync(dir, uid, gid)
  }

  const port = await freePort()
  run(join(bin, "initdb"), ["-D", dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
  stopAllOnExit()
  run(join(bin, "pg_ctl"), [
    "-D",
    dataDir,
    "-l",
    join(root, "server.log"),
    "-w",
    "-o",
    [
      `-p ${port} -c listen_addresses=127.0.0.1 -k ${socketDir} -c max_connections=${options.maxConnections ?? 300}`,
      ...Object.entries(options.settings ?? {}).map(([name, value]) => `-c ${name}=${value}`),
      ...(process.env["BENCH_PG_SETTINGS"] ?? "").split(/\s+/).filter((setting) => setting !== "").map((setting) =>
        `-c ${setting}`
      )
    ].join(" "),
    "start"
  ])
  const postmasterPid = Number(readFileSync(join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
  const cluster: Cluster = { postmasterPid, root }
  running.add(cluster)

  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  const stop = async () => {
    if (!running.has(cluster)) return
    running.delete(cluster)
    if (isAlive(postmasterPid)) process.kill(postmasterPid, "SIGINT")
    for (let waited = 0; isAlive(postmasterPid) && waited < 10_000; waited += 50) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    if (isAlive(postmasterPid)) process.kill(postmasterPid, "SIGKILL")
    rmSync(root, { recursive: true, force: true })
  }
  try {
    await migrate(url)
  } catch (error) {
    await stop()
    throw error
  }
  return { url, stop }
}
