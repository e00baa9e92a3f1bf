/**
 * `npm run token`: a token the service accepts for the development secret,
 * and a bad argument answered with the usage and exit code 2, no stack;
 * in production, no development secret is made.
 */
import { describe, expect, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Process from "../support/Process.js"

const secret = "test-secret-test-secret-test-secret-0123456789"

const token = (...args: Array<string>) => tokenWith({ JWT_SECRET: secret }, ...args)

const tokenWith = (env: Record<string, string | undefined>, ...args: Array<string>) =>
  spawnSync(process.execPath, ["--import", "tsx", "src/server/token.ts", ...args], {
    cwd: Process.root,
    env: { ...process.env, ...env },
    encoding: "utf8",
    timeout: 60_000
  })

describe("npm run token", () => {
  it("prints a signed token for --sub", () => {
    const result = token("--sub", "alice", "--admin")
    expect(result.status).toBe(0)
    expect(result.stdout.trim()).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/)
  }, 90_000)

  it("answers a bad --expires with the usage, exit 2, no stack trace", () => {
    const result = token("--sub", "alice", "--expires", "bogus")
    expect(result.status).toBe(2)
    expect(result.stderr).toContain("usage: npm run token")
    expect(result.stderr).not.toMatch(/\n\s+at /)
  }, 90_000)

  it("in production without JWT_SECRET, refuses, as the service does, and makes no development secret", () => {
    const dataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ecb-token-"))
    try {
      const result = tokenWith({ NODE_ENV: "production", JWT_SECRET: undefined, DATA_DIR: dataDir }, "--sub", "alice")
      expect(result.status).toBe(2)
      expect(result.stderr).toContain("NODE_ENV=production requires JWT_SECRET")
      expect(Fs.readdirSync(dataDir)).toEqual([])
    } finally {
      Fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 90_000)
})
