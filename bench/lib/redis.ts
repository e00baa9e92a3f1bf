/**
 * A throwaway Redis for benches: `redis-server` on 127.0.0.1 and a free
 * port, with a pid file and no persistence, in a temporary folder; stopped
 * by its pid when the bench is done, fails, or is interrupted.
 * `BENCH_REDIS_URL` names an existing server to use instead (never stopped;
 * the benches write keys under a prefix of their own, with a short expiry).
 */
import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createConnection } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "./postgres.js"

export interface Server {
  readonly url: string
  /** Stops the server (if this bench started it) and removes its files. */
  readonly stop: () => Promise<void>
}

// A daemon that exited stays a zombie until init reaps it: a zombie counts as stopped.
const isAlive = (pid: number): boolean => {
  try {
    const state = /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1]
    return state !== undefined && state !== "Z" && state !== "X"
  } catch {
    return false
  }
}

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

/** Runs a `redis-server` of its own, or connects to `BENCH_REDIS_URL`. */
export const start = async (): Promise<Server> => {
  const external = process.env["BENCH_REDIS_URL"]
  if (external !== undefined && external !== "") return { url: external, stop: async () => {} }

  const root = mkdtempSync(join(tmpdir(), "bench-redis-"))
  const pidFile = join(root, "redis.pid")
  const port = await freePort()
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
    root,
    "--logfile",
    join(root, "redis.log")
  ], { encoding: "utf8" })
  if (result.status !== 0) {
    rmSync(root, { recursive: true, force: true })
    throw new Error(
      `redis-server failed (${result.status ?? result.error?.message}): ${result.stderr ?? ""}` +
        " (apt-get install redis-server, or set BENCH_REDIS_URL)"
    )
  }
  let pid: number | undefined
  const stopSync = () => {
    if (pid !== undefined && isAlive(pid)) process.kill(pid, "SIGKILL")
    rmSync(root, { recursive: true, force: true })
  }
  process.once("exit", stopSync)
  let ready = false
  for (let waited = 0; waited < 10_000 && !ready; waited += 50) {
    if (pid === undefined) {
      try {
        pid = Number(readFileSync(pidFile, "utf8").trim())
      } catch {
        // not written yet
      }
    }
    ready = pid !== undefined && await answersPing(port)
    if (!ready) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  if (pid === undefined || !ready) {
    stopSync()
    throw new Error(`redis-server on port ${port} did not answer within 10 s`)
  }
  const running = pid
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      process.removeListener("exit", stopSync)
      if (isAlive(running)) process.kill(running, "SIGTERM")
      for (let waited = 0; isAlive(running) && waited < 10_000; waited += 50) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      if (isAlive(running)) process.kill(running, "SIGKILL")
      rmSync(root, { recursive: true, force: true })
    }
  }
}
