/**
 * A process that opens a PGlite data directory and holds it for 4 s, for the
 * lock race test. With a second argument, it stalls right after its first
 * read of the lock file until that path exists: a process paused (scheduled
 * out, collecting garbage) in the middle of taking over a stale lock.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Effect from "effect/Effect"
import Fs from "node:fs"
import { syncBuiltinESMExports } from "node:module"
import * as PgliteClient from "../../src/sql/PgliteClient.js"

const [dataDir, stallUntil] = process.argv.slice(2)
if (stallUntil !== undefined) {
  const readFileSync = Fs.readFileSync
  let stalled = false
  Fs.readFileSync = ((path: Fs.PathOrFileDescriptor, ...rest: Array<any>) => {
    const result = (readFileSync as any)(path, ...rest)
    if (!stalled && String(path).endsWith(".pglite-client.lock")) {
      stalled = true
      console.log("STALLED")
      const pause = new Int32Array(new SharedArrayBuffer(4))
      for (let i = 0; i < 1500 && !Fs.existsSync(stallUntil); i++) Atomics.wait(pause, 0, 0, 20)
    }
    return result
  }) as typeof Fs.readFileSync
  syncBuiltinESMExports()
}

Effect.runPromise(
  Effect.scoped(Effect.gen(function*() {
    const sql = yield* PgliteClient.make({ dataDir: dataDir! })
    yield* sql`SELECT 1`
    console.log("OPEN")
    yield* Effect.sleep("4 seconds")
  })).pipe(Effect.provide(Reactivity.layer))
).then(() => console.log("CLOSED"), (error) => console.log(`REFUSED ${error.message}`))
