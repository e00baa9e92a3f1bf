/**
 * The order service as a child process, for tests that kill, restart or
 * signal it: its sources under tsx by default, or `npm start` (built, as a
 * user runs it).
 */
import * as Effect from "effect/Effect"
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"

export const root = Path.resolve(import.meta.dirname, "../..")

export interface ServiceProcess {
  readonly child: ChildProcess
  readonly baseUrl: string
  /** Everything the process wrote so far. */
  readonly output: () => string
  /** Resolves with the exit code (or signal) when the process ends. */
  readonly exited: Promise<number | NodeJS.Signals | null>
}

/** The test's environment with `env` applied; `undefined` removes a variable. */
export const environment = (env: Record<string, string | undefined>): NodeJS.ProcessEnv => {
  const result: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: "test" }
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) delete result[key]
    else result[key] = value
  }
  return result
}

/**
 * Whether a process runs. A daemon that exited stays a zombie until init
 * reaps it, which can take seconds in a container: a zombie counts as gone.
 */
export const isAlive = (pid: number | undefined): boolean => {
  if (pid === undefined) return false
  try {
    const state = /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1]
    return state !== undefined && state !== "Z" && state !== "X"
  } catch {
    return false
  }
}

const listenOn = (port: number): Promise<number | undefined> =>
  new Promise((resolve) => {
    const server = Net.createServer()
    server.once("error", () => resolve(undefined))
    server.listen(port, "127.0.0.1", () => {
      const bound = (server.address() as Net.AddressInfo).port
      server.close(() => resolve(bound))
    })
  })

// The lowest port the kernel hands out for `listen(0)` and outgoing
// connections.
const ephemeralLow = (): number => {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0])
    return Number.isInteger(low) && low > 2048 ? low : 32768
  } catch {
    return 32768
  }
}

/**
 * A port that was free a moment ago, below the ephemeral range. A server a
 * test stops and starts again on its port (Redis, PostgreSQL, the service)
 * must find the port still free. An ephemeral port could be handed to any
 * `listen(0)` or outgoing connection of a parallel test in between.
 */
export const freePort = async (): Promise<number> => {
  const high = ephemeralLow()
  const low = Math.min(15_000, high - 1_000)
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await listenOn(low + Math.floor(Math.random() * (high - low)))
    if (port !== undefined) return port
  }
  const port = await listenOn(0)
  if (port === undefined) throw new Error("no free port on 127.0.0.1")
  return port
}

const ready = async (baseUrl: string) => {
  try {
    const response = await fetch(`${baseUrl}/health/ready`, { signal: AbortSignal.timeout(2_000) })
    return response.status === 200
  } catch {
    return false
  }
}

/**
 * Spawns the service on a free port and waits until it is ready (bounded).
 * The caller stops it with `stop` (or the scope does, with `spawnScoped`).
 */
export const spawnService = (
  env: Record<string, string | undefined>,
  options: {
    readonly timeoutMs?: number
    /** The command; default the sources under tsx. `["npm", "start"]` runs it as a user does. */
    readonly command?: readonly [string, ...Array<string>]
  } = {}
) =>
  Effect.promise(async (): Promise<ServiceProcess> => {
    const port = env.PORT !== undefined && env.PORT !== "0" ? Number(env.PORT) : await freePort()
    const [file, ...args] = options.command ?? [process.execPath, "--import", "tsx", "src/server/main.ts"]
    // Its own process group, so a signal reaches the server behind a wrapper (npm).
    const child = spawn(file, args, {
      cwd: root,
      env: environment({ ...env, PORT: String(port) }),
      stdio: ["ignore", "pipe", "pipe"],
      detached: true
    })
    let output = ""
    child.stdout!.on("data", (chunk: Buffer) => output += chunk.toString())
    child.stderr!.on("data", (chunk: Buffer) => output += chunk.toString())
    const exited = new Promise<number | NodeJS.Signals | null>((resolve) =>
      child.once("exit", (code, signal) => resolve(code ?? signal))
    )
    const service: ServiceProcess = { child, baseUrl: `http://127.0.0.1:${port}`, output: () => output, exited }
    const deadline = Date.now() + (options.timeoutMs ?? 60_000)
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        return Promise.reject(
          new Error(`service exited (${child.exitCode ?? child.signalCode}) before ready:\n${output}`)
        )
      }
      if (await ready(service.baseUrl)) return service
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      child.kill("SIGKILL")
    }
    return Promise.reject(new Error(`service not ready within ${options.timeoutMs ?? 60_000} ms:\n${output}`))
  })

const signalGroup = (service: ServiceProcess, signal: NodeJS.Signals) => {
  try {
    process.kill(-service.child.pid!, signal)
  } catch {
    service.child.kill(signal)
  }
}

/** Sends `signal` and waits (bounded) for the exit; SIGKILL after the bound. */
export const stop = (service: ServiceProcess, signal: NodeJS.Signals = "SIGTERM", timeoutMs = 20_000) =>
  Effect.promise(async () => {
    if (service.child.exitCode !== null || service.child.signalCode !== null) return service.exited
    signalGroup(service, signal)
    const timeout = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), timeoutMs).unref())
    const result = await Promise.race([service.exited, timeout])
    if (result === "timeout") {
      signalGroup(service, "SIGKILL")
      return service.exited
    }
    return result
  })

/** `spawnService`, stopped when the scope closes. */
export const spawnScoped = (
  env: Record<string, string | undefined>,
  options?: Parameters<typeof spawnService>[1]
) => Effect.acquireRelease(spawnService(env, options), (service) => stop(service, "SIGKILL"))
