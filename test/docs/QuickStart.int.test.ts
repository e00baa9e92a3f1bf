// The README's Quick start, run as a new user would: the service as `npm start`
// runs it, then the README's shell blocks, verbatim but for the port.
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as TestDatabase from "../support/Database.js"
import * as Process from "../support/Process.js"

const readme = Fs.readFileSync(Path.join(Process.root, "README.md"), "utf8")
const quickStart = readme.slice(readme.indexOf("## Quick start"), readme.indexOf("### Using a real PostgreSQL"))
const blocks = [...quickStart.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1]!)
  .filter((block) => !/^npm (install|start|test)/m.test(block))

describe("README Quick start", () => {
  // Live clock: the test waits on real time (the relay publishes after commit).
  it.scopedLive("works verbatim against the service npm start runs", () =>
    Effect.gen(function*() {
      expect(blocks.length).toBeGreaterThanOrEqual(5)
      const dataDir = yield* TestDatabase.tempDir("ecb-quickstart")
      // The embedded database, as on a fresh machine (no DATABASE_URL), on a free port.
      const env = { DATA_DIR: dataDir, PORT: "0", DATABASE_URL: undefined, JWT_SECRET: undefined, LOG_LEVEL: "debug" }
      const service = yield* Process.spawnScoped(env, { command: ["npm", "start"], timeoutMs: 120_000 })
      // On a failure, the service's own account of it.
      // Every curl of the README bounded, without changing its commands: a
      // hung service fails the test with its output instead of hanging it.
      const curlHome = yield* TestDatabase.tempDir("ecb-quickstart-curl")
      Fs.writeFileSync(Path.join(curlHome, ".curlrc"), "max-time = 30\nconnect-timeout = 5\n")
      const shellEnv = Process.environment({ ...env, CURL_HOME: curlHome })
      const logsOf = () => `\n--- service output (last 30000 characters) ---\n${service.output().slice(-30_000)}`
      const script = ["set -euo pipefail", ...blocks].join("\n").replaceAll("http://127.0.0.1:3000", service.baseUrl)
      const output = yield* Effect.try({
        try: () =>
          execFileSync("bash", ["-c", script], {
            cwd: Process.root,
            env: shellEnv,
            encoding: "utf8",
            timeout: 120_000
          }),
        catch: (error) => new Error(`the README's commands failed: ${String(error)}${logsOf()}`)
      })
      expect(output).toContain(`{"product_id":"sku-42","available":10}`)
      const created = [...output.matchAll(/\{"order_id":"([0-9a-f-]{36})","status":"created"\}/g)]
      expect(created).toHaveLength(2)
      expect(created[0]![1]).toBe(created[1]![1])
      expect(output).toContain(`{"order_id":"${created[0]![1]}","status":"cancelled"}`)
      // The feed shows events once the relay has published them, a moment
      // after commit: read it again (with the README's token) until it has,
      // each read and the whole wait bounded.
      const adminToken = execFileSync("bash", ["-c", blocks[0]! + "\necho \"$ADMIN\""], {
        cwd: Process.root,
        env: shellEnv,
        encoding: "utf8",
        timeout: 60_000
      }).trim().split("\n").at(-1)!
      let feed = JSON.parse(output.slice(output.lastIndexOf(`{"events"`)).trim())
      for (let attempt = 0; attempt < 50 && feed.events.length < 2; attempt++) {
        yield* Effect.sleep("100 millis")
        feed = yield* Effect.tryPromise({
          try: () =>
            fetch(`${service.baseUrl}/api/v1/events?after=0&limit=10`, {
              headers: { authorization: `Bearer ${adminToken}` },
              signal: AbortSignal.timeout(5_000)
            }).then((response) => response.json()),
          catch: (error) => new Error(`reading the events feed failed: ${String(error)}${logsOf()}`)
        })
      }
      expect(feed.events.map((event: { type: string }) => event.type), logsOf()).toEqual([
        "OrderCreated",
        "OrderCancelled"
      ])
      expect(feed.next).toBe(2)

      // With no JWT_SECRET the start-up log says a development secret was
      // made; and every request and every command logs one JSON line with
      // its correlation id: the one the request was given. The README's
      // commands ran while this process waited on them, so their lines may
      // still be on their way from the service's pipe.
      const completed = () => service.output().split("command.completed").length - 1
      for (let attempt = 0; attempt < 50 && completed() < 4; attempt++) yield* Effect.sleep("100 millis")
      const lines = service.output().split("\n").filter((line) => line.startsWith("{")).map((line) =>
        JSON.parse(line) as {
          readonly message: unknown
          readonly annotations: Readonly<Record<string, unknown>>
        }
      )
      expect(lines.some((line) => line.message === "auth.development-secret"), logsOf()).toBe(true)
      const requests = lines.filter((line) => line.message === "http.request")
      const commands = lines.filter((line) => line.message === "command.completed")
      expect(commands.map((line) => line.annotations.commandType).sort(), logsOf()).toEqual(
        ["CancelOrder", "CreateOrder", "CreateOrder", "RestockProduct"].sort()
      )
      for (const command of commands) {
        const correlationId = command.annotations.correlationId
        expect(requests.filter((line) => line.annotations.correlationId === correlationId), logsOf()).toHaveLength(1)
      }
    }), { timeout: 300_000 })
})
