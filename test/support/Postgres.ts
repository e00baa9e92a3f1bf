/**
 * A throwaway PostgreSQL cluster: `initdb` in a temporary folder, a server on
 * 127.0.0.1 and a free port, trust authentication for `postgres`. It can be
 * stopped and started again on the same port and data (for outage tests),
 * and is stopped (and its folder removed) by `destroy`, by the scope of
 * `scoped`, or when the process exits without either. As root, the server
 * runs as the `postgres` user, since `initdb` refuses to run as root.
 *
 * Used by the fault tests (`test/faults/`) and the benches (`bench/lib/postgres.ts`).
 */
import * as Effect from "effect/Effect"
import { execFile, execFileSync, spawnSync } from "node:child_process"
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Process from "./Process.js"

/** The folder of `initdb`, `pg_ctl` and `pgbench` (Debian keeps them off PATH), if PostgreSQL is installed. */
export const findBinDir = (): string | undefined => {
  const result = spawnSync("pg_config", ["--bindir"], { encoding: "utf8" })
  if (result.status !== 0) return undefined
  const dir = result.stdout.trim()
  return existsSync(join(dir, "initdb")) && existsSync(join(dir, "pg_ctl")) ? dir : undefined
}

/** The folder of `initdb`, `pg_ctl` and `pgbench`; throws when PostgreSQL is not installed. */
export const binDir = (): string => execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim()

const runsAsRoot = () => process.getuid?.() === 0

/** Why a cluster cannot be started here, or `undefined` when it can. */
export const unavailableReason = (): string | undefined => {
  if (findBinDir() === undefined) {
    return "PostgreSQL binaries not found (no `pg_config --bindir` folder with initdb and pg_ctl)"
  }
  if (runsAsRoot()) {
    if (spawnSync("id", ["-u", "postgres"], { stdio: "ignore" }).status !== 0) {
      return "running as root, and there is no `postgres` user to run the server as"
    }
    if (spawnSync("runuser", ["--help"], { stdio: "ignore" }).status !== 0) {
      return "running as root, and `runuser` is missing"
    }
  }
  return undefined
}

/** A port nothing listens on now, as the kernel hands one out. */
export const freePort = Process.freePort

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

export interface Options {
  /** `max_connections`. Default 300. */
  readonly maxConnections?: number
  /** More server settings, passed as `-c name=value`. */
  readonly settings?: Readonly<Record<string, string>>
}

export interface Cluster {
  readonly port: number
  /** A connection string for `pg`, `psql`, `pgbench` and the service's `DATABASE_URL`. */
  readonly url: string
  /** The temporary folder holding the data directory and the server log. */
  readonly root: string
  /** The postmaster's pid while the server runs. */
  readonly pid: () => number | undefined
  /** The server log so far. */
  readonly log: () => string
  /**
   * Stops the server, keeping its data: "fast" (`pg_ctl stop -m fast`: sessions
   * are ended, the shutdown is clean) or "immediate" (as after a crash). Waits
   * until the postmaster is gone (bounded; SIGKILL after 10 s).
   */
  readonly stop: (mode?: "fast" | "immediate") => Promise<void>
  /** Starts the stopped server again, on the same port and data; resolves once it accepts connections. */
  readonly start: () => Promise<void>
  /** Stops the server for good and removes its folder. */
  readonly destroy: () => Promise<void>
}

interface Running {
  readonly root: string
  pid: number | undefined
}

// Clusters not yet destroyed, stopped synchronously if the process exits
// without `destroy()` (an error escaping, Ctrl-C).
const running = new Set<Running>()

const killSync = (pid: number) => {
  try {
    process.kill(pid, "SIGINT") // "fast" shutdown
  } catch {
    return
  }
  for (let waited = 0; Process.isAlive(pid) && waited < 10_000; waited += 50) sleepSync(50)
  if (Process.isAlive(pid)) process.kill(pid, "SIGKILL")
}

let hooked = false
const stopAllOnExit = () => {
  if (hooked) return
  hooked = true
  process.on("exit", () =>
    running.forEach((cluster) => {
      if (cluster.pid !== undefined) killSync(cluster.pid)
      rmSync(cluster.root, { recursive: true, force: true })
    }))
  // Without a listener these signals end the process without "exit"; with
  // one, they must end it themselves. A listener that stays (not "once") also
  // keeps a second signal, as a wrapper such as tsx forwards it, from cutting
  // the cleanup short.
  process.on("SIGINT", () => process.exit(130))
  process.on("SIGTERM", () => process.exit(143))
}

const run = (file: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    const [command, argv] = runsAsRoot() ? ["runuser", ["-u", "postgres", "--", file, ...args]] : [file, [...args]]
    execFile(command, argv, { encoding: "utf8", timeout: 60_000 }, (error, stdout, stderr) => {
      if (error === null) resolve(stdout)
      else reject(new Error(`${file} failed (${error.code ?? error.signal}): ${stderr || stdout}`))
    })
  })

const readPid = (dataDir: string): number | undefined => {
  try {
    const pid = Number(readFileSync(join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** Creates a cluster and starts its server. */
export const create = async (options: Options = {}): Promise<Cluster> => {
  const bin = findBinDir()
  if (bin === undefined) throw new Error(unavailableReason())
  const root = mkdtempSync(join(tmpdir(), "ecb-pg-"))
  const dataDir = join(root, "data")
  const socketDir = join(root, "socket")
  const logFile = join(root, "server.log")
  mkdirSync(dataDir, { mode: 0o700 })
  mkdirSync(socketDir)
  if (runsAsRoot()) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }))
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }))
    for (const dir of [root, dataDir, socketDir]) chownSync(dir, uid, gid)
  }
  const state: Running = { root, pid: undefined }
  running.add(state)
  stopAllOnExit()

  const port = await freePort()
  const serverOptions = [
    `-p ${port} -c listen_addresses=127.0.0.1 -k ${socketDir}`,
    `-c max_connections=${options.maxConnections ?? 300}`,
    ...Object.entries(options.settings ?? {}).map(([name, value]) => `-c ${name}=${value}`)
  ].join(" ")

  const start = async () => {
    if (state.pid !== undefined && Process.isAlive(state.pid)) return
    await run(join(bin, "pg_ctl"), ["-D", dataDir, "-l", logFile, "-w", "-t", "60", "-o", serverOptions, "start"])
    state.pid = readPid(dataDir)
  }

  const stop = async (mode: "fast" | "immediate" = "fast") => {
    const pid = state.pid
    if (pid === undefined) return
    if (Process.isAlive(pid)) process.kill(pid, mode === "fast" ? "SIGINT" : "SIGQUIT")
    for (let waited = 0; Process.isAlive(pid) && waited < 10_000; waited += 50) await sleep(50)
    if (Process.isAlive(pid)) process.kill(pid, "SIGKILL")
    // An immediate stop leaves postmaster.pid behind; pg_ctl start copes
    // with a stale one, since its pid no longer runs.
    state.pid = undefined
  }

  const destroy = async () => {
    if (!running.has(state)) return
    await stop("fast")
    running.delete(state)
    rmSync(root, { recursive: true, force: true })
  }

  try {
    await run(join(bin, "initdb"), ["-D", dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
    await start()
  } catch (error) {
    await destroy()
    throw error
  }

  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    root,
    pid: () => state.pid,
    log: () => {
      try {
        return readFileSync(logFile, "utf8")
      } catch {
        return ""
      }
    },
    stop,
    start,
    destroy
  }
}

/** A cluster for the surrounding scope: destroyed when the scope closes, whatever the outcome. */
export const scoped = (options: Options = {}) =>
  Effect.acquireRelease(
    Effect.promise(() => create(options)),
    (cluster) => Effect.promise(() => cluster.destroy())
  )
