/**
 * An application that embeds the package keeps one copy of Effect. With a
 * second copy, every dispatch logged dozens of "Executing an Effect versioned
 * ... with a Runtime of version ..." warnings into the application's logs,
 * and tags, fiber refs and schema classes came from two module graphs. So
 * the Effect packages are peer dependencies, and npm installs the
 * application's own.
 *
 * npm resolves the package's manifest against a registry on 127.0.0.1 that
 * serves the manifests installed in this checkout's node_modules, plus a
 * later compatible release of each peer, which the application depends on.
 * `--dry-run`: the tree is resolved, nothing is fetched or written.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"

const run = promisify(execFile)
const root = join(import.meta.dirname, "..", "..")

interface Manifest {
  readonly name: string
  readonly version: string
  readonly [field: string]: unknown
}

/** Every package installed under `dir`, nested ones included, by name and version. */
const installed = (dir: string, into = new Map<string, Map<string, Manifest>>()) => {
  if (!existsSync(dir)) return into
  const visit = (packageDir: string) => {
    const file = join(packageDir, "package.json")
    if (!existsSync(file)) return
    const manifest = JSON.parse(readFileSync(file, "utf8")) as Partial<Manifest>
    if (typeof manifest.name !== "string" || typeof manifest.version !== "string") return
    const versions = into.get(manifest.name) ?? new Map<string, Manifest>()
    versions.set(manifest.version, manifest as Manifest)
    into.set(manifest.name, versions)
    installed(join(packageDir, "node_modules"), into)
  }
  for (const entry of readdirSync(dir)) {
    if (entry.startsWith(".")) continue
    if (entry.startsWith("@")) { for (const scoped of readdirSync(join(dir, entry))) visit(join(dir, entry, scoped)) }
    else visit(join(dir, entry))
  }
  return into
}

/** The packument a registry serves for `name`: the fields npm resolves with. */
const packument = (name: string, versions: ReadonlyMap<string, Manifest>, base: string) => ({
  name,
  "dist-tags": { latest: [...versions.keys()].at(-1) },
  versions: Object.fromEntries(
    [...versions].map(([version, manifest]) => [version, {
      name,
      version,
      dependencies: manifest["dependencies"],
      optionalDependencies: manifest["optionalDependencies"],
      peerDependencies: manifest["peerDependencies"],
      peerDependenciesMeta: manifest["peerDependenciesMeta"],
      bin: manifest["bin"],
      engines: manifest["engines"],
      os: manifest["os"],
      cpu: manifest["cpu"],
      dist: { tarball: `${base}-/${encodeURIComponent(name)}-${version}.tgz` }
    }])
  )
})

/** npm as the test was started with (`npm test`), else the one on the PATH. */
const npm = (args: ReadonlyArray<string>, cwd: string) => {
  // The outer npm's settings (cache, registry, prefix) are not this one's.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)))
  const cli = process.env["npm_execpath"]
  return cli !== undefined && cli.endsWith(".js")
    ? run(process.execPath, [cli, ...args], { cwd, env, maxBuffer: 1 << 26 })
    : run("npm", args, { cwd, env, maxBuffer: 1 << 26 })
}

describe("installed into an application", () => {
  it("leaves the application one copy of each Effect package: its own", async () => {
    const own = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
      readonly version: string
      readonly peerDependencies?: Record<string, string>
      readonly dependencies?: Record<string, string>
    }
    const manifests = installed(join(root, "node_modules"))
    // The application's releases: each installed peer with the patch number
    // 99, which its caret range accepts and no registry has.
    const effectPackages = [...manifests.keys()].filter((name) =>
      (name === "effect" || name.startsWith("@effect/")) &&
      (own.peerDependencies?.[name] !== undefined || own.dependencies?.[name] !== undefined)
    )
    expect(effectPackages).toEqual(expect.arrayContaining(["effect", "@effect/sql", "@effect/platform"]))
    const releases = new Map<string, string>()
    for (const name of effectPackages) {
      const [current, manifest] = [...manifests.get(name)!][0]!
      const release = current.replace(/\.\d+$/, ".99")
      manifests.get(name)!.set(release, { ...manifest, version: release })
      releases.set(name, release)
    }

    const server = createServer((request, response) => {
      const name = decodeURIComponent((request.url ?? "/").slice(1))
      const versions = manifests.get(name)
      const { port } = server.address() as AddressInfo
      response.writeHead(versions === undefined ? 404 : 200, { "content-type": "application/json" })
      response.end(JSON.stringify(versions === undefined ? {} : packument(name, versions, `http://127.0.0.1:${port}/`)))
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const app = mkdtempSync(join(tmpdir(), "ecb-install-"))
    try {
      const { port } = server.address() as AddressInfo
      // The package as published, as far as npm's resolution reads it: its manifest.
      const pkg = join(app, "package")
      mkdirSync(pkg)
      const { scripts: _scripts, ...published } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"))
      writeFileSync(join(pkg, "package.json"), JSON.stringify(published))
      await npm(["pack", "--ignore-scripts", "--pack-destination", app], pkg)
      writeFileSync(
        join(app, "package.json"),
        JSON.stringify({
          name: "application",
          version: "1.0.0",
          private: true,
          dependencies: {
            ...Object.fromEntries(releases),
            "effect-command-bus": `file:./effect-command-bus-${own.version}.tgz`
          }
        })
      )
      const { stdout } = await npm([
        "install",
        "--dry-run",
        "--json",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        `--registry=http://127.0.0.1:${port}/`,
        `--cache=${join(app, "cache")}`
      ], app)
      const { add } = JSON.parse(stdout.slice(stdout.indexOf("{"))) as {
        readonly add: ReadonlyArray<{ readonly name: string; readonly version: string; readonly path: string }>
      }
      expect(add.some((entry) => entry.name === "effect-command-bus")).toBe(true)
      for (const [name, release] of releases) {
        expect(
          add.filter((entry) => entry.name === name).map((entry) => ({
            version: entry.version,
            path: entry.path.slice(app.length)
          })),
          name
        ).toEqual([{ version: release, path: `/node_modules/${name}` }])
      }
    } finally {
      server.close()
      rmSync(app, { recursive: true, force: true })
    }
  }, 120_000)
})
