/**
 * `npm run token`: a token the service accepts for the development secret,
 * and a bad argument answered with the usage and exit code 2, no stack.
 */
import { describe, expect, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as Process from "../support/Process.js"

const secret = "test-secret-test-secret-test-secret-0123456789"

const token = (...args: Array<string>) =>
  spawnSync(process.execPath, ["--import", "tsx", "src/server/token.ts", ...args], {
    cwd: Process.root,
    env: { ...process.env, JWT_SECRET: secret },
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
})
