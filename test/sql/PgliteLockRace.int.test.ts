/**
 * Two processes taking over one stale PGlite lock file: however they are
 * scheduled, one opens the data directory and the other is refused.
 */
import { expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

const child = Path.join(import.meta.dirname, "..", "support", "PgliteLockChild.ts")

const start = (args: ReadonlyArray<string>) => {
  const proc = spawn(process.execPath, ["--import", "tsx", child, ...args], { stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  proc.stdout.on("data", (chunk) => (out += chunk))
  proc.stderr.on("data", (chunk) => (out += chunk))
  const done = new Promise<void>((resolve) => proc.on("exit", () => resolve()))
  return { proc, out: () => out, done }
}

const until = async (condition: () => boolean, what: string) => {
  for (let i = 0; i < 1200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  if (!condition()) throw new Error(`timed out waiting for ${what}`)
}

it("one of two processes taking over a stale lock opens the directory, even when one stalls midway", async () => {
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ecb-lockrace-"))
  const dataDir = Path.join(root, "pg")
  const go = Path.join(root, "go")
  Fs.mkdirSync(dataDir)
  // A pid no process has: the lock of a crashed owner.
  Fs.writeFileSync(Path.join(dataDir, ".pglite-client.lock"), "999999")
  const stalled = start([dataDir, go])
  let other: ReturnType<typeof start> | undefined
  try {
    await until(() => stalled.out().includes("STALLED"), "the first to stall")
    other = start([dataDir])
    await until(() => /OPEN|REFUSED/.test(other!.out()), "the second to open")
    Fs.writeFileSync(go, "")
    await until(() => /OPEN|REFUSED/.test(stalled.out()), "the first to go on")
    await Promise.all([stalled.done, other.done])
    const outs = [stalled.out(), other.out()]
    expect(outs.filter((out) => out.includes("OPEN")).length, outs.join("\n---\n")).toBe(1)
    expect(outs.filter((out) => out.includes("REFUSED") && out.includes("in use by process")).length).toBe(1)
  } finally {
    stalled.proc.kill("SIGKILL")
    other?.proc.kill("SIGKILL")
    Fs.rmSync(root, { recursive: true, force: true })
  }
}, 90_000)
