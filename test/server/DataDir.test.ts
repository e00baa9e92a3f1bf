/**
 * `DATA_DIR`: created for its owner alone. PGlite writes the embedded
 * database's files readable and writable by anyone (0666, whatever the
 * umask), order data included, so the directory that holds them (`pg` in
 * it) must keep other users out.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Config from "../../src/server/Config.js"
import * as Database from "../../src/server/Database.js"
import * as DataDir from "../../src/server/DataDir.js"
import * as TestDatabase from "../support/Database.js"

// A directory of the test's own, removed with its scope.
const freshDir = TestDatabase.tempDir("ecb-data-dir")

const withUmask = <A, E>(umask: number, effect: Effect.Effect<A, E>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => process.umask(umask)),
    () => effect,
    (previous) => Effect.sync(() => process.umask(previous))
  )

describe("DATA_DIR", () => {
  it.scoped("is created for its owner alone, missing parents too, whatever the umask", () =>
    Effect.gen(function*() {
      const dir = Path.join(yield* freshDir, "a", "b", "data")
      const created = yield* withUmask(0o002, DataDir.ensure(dir))
      expect(created).toBe(Path.resolve(dir))
      for (const path of [dir, Path.dirname(dir)]) expect(Fs.statSync(path).mode & 0o777, path).toBe(0o700)
      // Once more: it exists, and is left as it is.
      expect(yield* DataDir.ensure(dir)).toBe(created)
    }))

  it.scoped("one that exists is taken as it is: it may be shared, or a home directory", () =>
    Effect.gen(function*() {
      const dir = yield* freshDir
      Fs.chmodSync(dir, 0o755)
      expect(yield* DataDir.ensure(dir)).toBe(dir)
      expect(Fs.statSync(dir).mode & 0o777).toBe(0o755)
    }))

  it.scopedLive("the embedded database's own directory in it is made its owner's alone, before it opens", () =>
    Effect.gen(function*() {
      // An earlier version left DATA_DIR/pg open to others (0755), with the
      // database's files in it readable by anyone. The service opens it
      // private, with a warning; the failure here (another process holds
      // the database) comes after.
      const dir = yield* freshDir
      Fs.chmodSync(dir, 0o755)
      const pg = Path.join(dir, "pg")
      Fs.mkdirSync(pg, { mode: 0o755 })
      Fs.chmodSync(pg, 0o755)
      Fs.writeFileSync(Path.join(pg, ".pglite-client.lock"), String(process.ppid))
      const error = yield* Effect.flip(
        Layer.build(Database.layer).pipe(
          Effect.scoped,
          Effect.withConfigProvider(ConfigProvider.fromJson({ DATA_DIR: dir }))
        )
      )
      expect(String(error)).toContain("in use")
      expect(Fs.statSync(pg).mode & 0o777).toBe(0o700)
      expect(Fs.statSync(dir).mode & 0o777).toBe(0o755)
    }))

  it.scoped("a file in its place is refused", () =>
    Effect.gen(function*() {
      const file = Path.join(yield* freshDir, "data")
      Fs.writeFileSync(file, "")
      const error = yield* Effect.flip(DataDir.ensure(file))
      expect(Config.describeError(error)).toContain(file)
    }))
})
