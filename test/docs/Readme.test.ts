// The README's library example is the code test/docs/ReadmeExample.test.ts runs.
import { describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "../..")
const readme = Fs.readFileSync(Path.join(root, "README.md"), "utf8")

describe("README", () => {
  // Each example marked `<!-- README example: <file> runs this code -->` is the
  // code between that file's README markers, verbatim.
  const examples = [...readme.matchAll(/<!-- README example: (\S+) runs this code -->/g)]

  it("marks its examples", () => {
    expect(examples.map((match) => match[1])).toEqual([
      "test/docs/ReadmeExample.test.ts",
      "test/docs/ReadmePostgres.int.test.ts",
      "test/docs/ReadmeMiddleware.test.ts",
      "test/docs/ReadmeReactionSpecification.test.ts",
      "test/docs/ReadmeEventSourced.test.ts",
      "test/docs/ReadmeScheduler.test.ts",
      "test/docs/ReadmeProcessManager.test.ts",
      "test/docs/ReadmeProcessManagerOnFailure.test.ts"
    ])
  })

  it.each(examples.map((match) => [match[1]!, match.index!] as const))(
    "shows the code %s runs, verbatim",
    (file, at) => {
      const shown = /```ts\n([\s\S]*?)```/.exec(readme.slice(at))![1]!.trim()
      const source = Fs.readFileSync(Path.join(root, file), "utf8")
      const run = /\/\/ README:begin\n([\s\S]*?)\/\/ README:end/.exec(source)![1]!.trim()
      expect(shown).toBe(run)
    }
  )

  it("lists every script it tells the reader to run", () => {
    const scripts = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")).scripts
    for (const [, name] of readme.matchAll(/npm (?:run -s |run )?(start|test|token|check|bench)\b/g)) {
      expect(scripts).toHaveProperty(name!)
    }
  })
})
