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
  it.scoped("works verbatim against the service npm start runs", () =>
    Effect.gen(function*() {
      expect(blocks.length).toBeGreaterThanOrEqual(5)
      const dataDir = yield* TestDatabase.tempDir("ecb-quickstart")
      // The embedded database, as on a fresh machine (no DATABASE_URL), on a free port.
      const env = { DATA_DIR: dataDir, PORT: "0", DATABASE_URL: undefined, JWT_SECRET: undefined, LOG_LEVEL: "warn" }
      const service = yield* Process.spawnScoped(env, { command: ["npm", "start"], timeoutMs: 120_000 })
      const script = ["set -euo pipefail", ...blocks].join("\n").replaceAll("http://127.0.0.1:3000", service.baseUrl)
      const output = execFileSync("bash", ["-c", script], {
        cwd: Process.root,
        env: Process.environment(env),
        encoding: "utf8",
        timeout: 120_000
      })
      expect(output).toContain(`{"product_id":"sku-42","available":10}`)
      const created = [...output.matchAll(/\{"order_id":"([0-9a-f-]{36})","status":"created"\}/g)]
      expect(created).toHaveLength(2)
      expect(created[0]![1]).toBe(created[1]![1])
      expect(output).toContain(`{"order_id":"${created[0]![1]}","status":"cancelled"}`)
      // The feed shows events once the relay has published them, a moment
      // after commit: read it again (the README's own command) until it has.
      let feed = JSON.parse(output.slice(output.lastIndexOf(`{"events"`)).trim())
      for (let attempt = 0; attempt < 20 && feed.events.length < 2; attempt++) {
        yield* Effect.sleep("100 millis")
        const again = execFileSync("bash", [
          "-c",
          [blocks[0], blocks.at(-1)].join("\n").replaceAll("http://127.0.0.1:3000", service.baseUrl)
        ], {
          cwd: Process.root,
          env: Process.environment(env),
          encoding: "utf8",
          timeout: 60_000
        })
        feed = JSON.parse(again.trim())
      }
      expect(feed.events.map((event: { type: string }) => event.type)).toEqual(["OrderCreated", "OrderCancelled"])
      expect(feed.next).toBe(2)
    }), { timeout: 300_000 })
})
