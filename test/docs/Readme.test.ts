// The README's library example is the code test/docs/ReadmeExample.test.ts runs.
import { describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "../..")
const readme = Fs.readFileSync(Path.join(root, "README.md"), "utf8")

describe("README", () => {
  it("shows the example that ReadmeExample.test.ts runs, verbatim", () => {
    const marker = readme.indexOf("<!-- README example")
    expect(marker).toBeGreaterThan(0)
    const shown = /```ts\n([\s\S]*?)```/.exec(readme.slice(marker))![1]!.trim()
    const source = Fs.readFileSync(Path.join(root, "test/docs/ReadmeExample.test.ts"), "utf8")
    const run = /\/\/ README:begin\n([\s\S]*?)\/\/ README:end/.exec(source)![1]!.trim()
    expect(shown).toBe(run)
  })

  it("lists every script it tells the reader to run", () => {
    const scripts = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")).scripts
    for (const [, name] of readme.matchAll(/npm (?:run -s |run )?(start|test|token|check|bench)\b/g)) {
      expect(scripts).toHaveProperty(name!)
    }
  })
})
