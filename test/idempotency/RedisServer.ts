/**
 * A throwaway `redis-server` for tests: on 127.0.0.1 and a free port, with a
 * pid file, no persistence, in a temporary folder; stopped (and its folder
 * removed) by `stop`, or when the test process exits.
 */
import { spawnSync } from "node:child_process"
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
  const pidFile = join(dir, "redis.pid")
  const port = await freePort()
  let pid: number | undefined

  const launch = async () => {
    if (pid !== undefined && isAlive(pid)) return
    pid = undefined
    rmSync(pidFile, { force: true })
    const result = spawnSync("redis-server", [
      "--daemonize",
      "yes",
      "--pidfile",
      pidFile,
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
    ], { encoding: "utf8" })
    if (result.status !== 0) throw new Error(`redis-server failed (${result.status}): ${result.stderr}`)
    for (let waited = 0; waited < 10_000; waited += 50) {
      if (pid === undefined) {
        try {
          pid = Number(readFileSync(pidFile, "utf8").trim())
        } catch {
          // not written yet
        }
      }
      if (pid !== undefined && await answersPing(port)) return
      await sleep(50)
    }
    let log = ""
    try {
      log = readFileSync(join(dir, "redis.log"), "utf8").trim().split("\n").slice(-5).join("\n")
    } catch {
      // no log written
    }
    throw new Error(`redis-server on port ${port} did not answer within 10 s; its log ends:\n${log}`)
  }

  const killSync = () => {
    if (pid !== undefined && isAlive(pid)) process.kill(pid, "SIGKILL")
    rmSync(dir, { recursive: true, force: true })
  }

  const kill = async () => {
    if (pid === undefined) return
    const current = pid
    pid = undefined
    if (isAlive(current)) {
      process.kill(current, "SIGCONT")
      process.kill(current, "SIGTERM")
    }
    for (let waited = 0; isAlive(current) && waited < 10_000; waited += 50) await sleep(50)
    if (isAlive(current)) process.kill(current, "SIGKILL")
  }

  if (!hooked) {
    hooked = true
    process.on("exit", () => running.forEach((stop) => stop()))
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
      if (pid !== undefined) process.kill(pid, "SIGSTOP")
    },
    resume: () => {
      if (pid !== undefined) process.kill(pid, "SIGCONT")
    },
    stop: async () => {
      await kill()
      running.delete(killSync)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
