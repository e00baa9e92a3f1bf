/**
 * The package's entries, imported by name as a user would, hold what the
 * README's module table says they hold; and built, they load in plain Node
 * (no TypeScript loader), as an application that depends on the package runs.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Library from "effect-command-bus"
import * as Pglite from "effect-command-bus/pglite"
import * as Redis from "effect-command-bus/redis"
import * as Sql from "effect-command-bus/sql"
import * as Testing from "effect-command-bus/testing"
import { execFile } from "node:child_process"
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"

const run = promisify(execFile)
const root = join(import.meta.dirname, "..", "..")

const entries = {
  "effect-command-bus": Library,
  "effect-command-bus/testing": Testing,
  "effect-command-bus/sql": Sql,
  "effect-command-bus/pglite": Pglite,
  "effect-command-bus/redis": Redis
}

describe("package entries", () => {
  it("export the modules the README names", () => {
    expect(Object.keys(Library)).toEqual(expect.arrayContaining([
      "Command",
      "CommandBus",
      "Handler",
      "Middleware",
      "DomainEvent",
      "EventSourced",
      "EventStore",
      "Idempotency",
      "Reaction",
      "ProcessManager",
      "CommandScheduler",
      "CurrentUser",
      "CommandError",
      "Tracing"
    ]))
    expect(Object.keys(Sql).sort()).toEqual([
      "OutboxRelay",
      "PgPool",
      "PgPreparedClient",
      "SqlEventStore",
      "SqlFailure",
      "SqlIdempotencyStore",
      "SqlMigrations",
      "SqlOutbox",
      "SqlProcesses",
      "SqlReactionCheckpoints",
      "SqlReactionDeadLetters",
      "SqlScheduledCommands",
      "SqlStatement",
      "SqlStores",
      "SqlUnitOfWork"
    ])
    expect(typeof Pglite.PgliteClient.layer).toBe("function")
    expect(Object.keys(Testing)).toEqual(expect.arrayContaining([
      "InMemory",
      "ReactionSpecification",
      "ProcessManagerSpecification",
      "Specification"
    ]))
  })

  it("load from the build in plain Node, each with the same modules as its sources", async () => {
    // The package as npm installs it: its package.json and a fresh build, in a
    // folder of this checkout's node_modules (so its dependencies resolve),
    // linked into an application's node_modules.
    const pkg = mkdtempSync(join(root, "node_modules", ".ecb-entries-"))
    const app = mkdtempSync(join(tmpdir(), "ecb-app-"))
    try {
      cpSync(join(root, "package.json"), join(pkg, "package.json"))
      await run(process.execPath, [
        join(root, "node_modules", "typescript", "bin", "tsc"),
        "-p",
        join(root, "tsconfig.build.json"),
        "--outDir",
        join(pkg, "dist"),
        "--incremental",
        "false"
      ], { cwd: root })
      mkdirSync(join(app, "node_modules"))
      symlinkSync(pkg, join(app, "node_modules", "effect-command-bus"), "dir")
      const script = `
        const names = ${JSON.stringify(Object.keys(entries))}
        const out = {}
        for (const name of names) out[name] = Object.keys(await import(name)).sort()
        console.log(JSON.stringify(out))`
      const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: app })
      const loaded = JSON.parse(stdout)
      for (const [name, module] of Object.entries(entries)) {
        expect(loaded[name], name).toEqual(Object.keys(module).sort())
        expect(loaded[name].length, name).toBeGreaterThan(0)
      }
      // Each entry's types are in the build too.
      for (const path of ["index", "testing/index", "sql/index", "pglite/index", "redis/index"]) {
        expect(existsSync(join(pkg, "dist", `${path}.d.ts`)), path).toBe(true)
      }
    } finally {
      rmSync(pkg, { recursive: true, force: true })
      rmSync(app, { recursive: true, force: true })
    }
  }, 120_000)
})
