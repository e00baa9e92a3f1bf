/**
 * A throwaway `redis-server` for tests: a child process on 127.0.0.1 and a
 * free port, no persistence, in a temporary folder; stopped (and its folder
 * removed) by `stop`, or when the test process exits.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createConnection } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort, isAlive } from "../support/Process.js"

export interface RedisServer {
  readonly url: string
  readonly port: number
  /** Stops the server and waits until it is gone. Its folder stays, for `start`. */
  readonly kill: () => Promise<void>
  /** Starts it again on the same port (unless it runs), and waits until it answers. */
  readonly start: () => Promise<void>
  /** Freezes it (`SIGSTOP`): connections stay open, nothing is answered. */
  readonly pause: () => void
  readonly resume: () => void
  /** Stops it for good and removes its folder. */
  readonly stop: () => Promise<void>
}

/** Whether `redis-server` is on PATH. */
export const available = (): boolean => spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const answersPing = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port })
    let reply = ""
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.on("data", (chunk) => {
      reply += chunk.toString()
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"))
    })
  })

const running = new Set<() => void>()
let hooked = false

/** Starts a `redis-server` of its own. */
export const start = async (): Promise<RedisServer> => {
  const dir = mkdtempSync(join(tmpdir(), "ecb-redis-"))
  const port = await freePort()
  // A child of this process, not a daemon: its pid is known from the start,
  // and its exit is seen, so it can neither be lost nor outlive the tests.
  let child: ChildProcess | undefined
  const pidOf = () =>
    child !== undefined && child.exitCode === null && child.signalCode === null ? child.pid : undefined

  const launch = async () => {
    if (isAlive(pidOf())) return
    const server = spawn("redis-server", [
      "--bind",
      "127.0.0.1",
      "--port",
      String(port),
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      "--logfile",
      join(dir, "redis.log")
    ], { stdio: "ignore" })
    child = server
    // The exit hook stops it; it must not keep a finished test process alive.
    server.unref()
    let failed: Error | undefined
    server.once("error", (error) => failed = error)
    for (let waited = 0; waited < 10_000; waited += 50) {
      if (failed !== undefined) throw new Error(`redis-server failed to start: ${failed.message}`)
      if (server.exitCode !== null || server.signalCode !== null) break
      if (await answersPing(port)) return
      await sleep(50)
    }
    const ended = server.exitCode !== null || server.signalCode !== null
    if (!ended) server.kill("SIGKILL")
    let log = ""
    try {
      log = readFileSync(join(dir, "redis.log"), "utf8").trim().split("\n").slice(-5).join("\n")
    } catch {
      // no log written
    }
    throw new Error(
      `redis-server on port ${port} ${
        ended ? `exited (${server.exitCode ?? server.signalCode})` : "did not answer within 10 s"
      }; ` +
        `its log ends:\n${log}`
    )
  }

  const killSync = () => {
    const pid = pidOf()
    if (isAlive(pid)) process.kill(pid!, "SIGKILL")
    rmSync(dir, { recursive: true, force: true })
  }

  const kill = async () => {
    const current = pidOf()
    if (current === undefined) return
    if (isAlive(current)) {
      process.kill(current, "SIGCONT")
      process.kill(current, "SIGTERM")
    }
    for (let waited = 0; isAlive(current) && waited < 10_000; waited += 50) await sleep(50)
    if (isAlive(current)) process.kill(current, "SIGKILL")
    for (let waited = 0; isAlive(current) && waited < 5_000; waited += 50) await sleep(50)
  }

  if (!hooked) {
    hooked = true
    process.on("exit", () => running.forEach((stop) => stop()))
    // Vitest ends a worker with SIGTERM; without a listener the signal ends
    // the process without "exit", and the server outlived it (a file whose
    // tests were all filtered out never reached its afterAll). With one, the
    // listener must end the process itself.
    process.on("SIGINT", () => process.exit(130))
    process.on("SIGTERM", () => process.exit(143))
  }
  running.add(killSync)
  try {
    await launch()
  } catch (error) {
    running.delete(killSync)
    killSync()
    throw error
  }

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill,
    start: launch,
    pause: () => {
      const pid = pidOf()
      if (pid !== undefined) process.kill(pid, "SIGSTOP")
    },
    resume: () => {
      const pid = pidOf()
      if (pid !== undefined) process.kill(pid, "SIGCONT")
    },
    stop: async () => {
      await kill()
      running.delete(killSync)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
