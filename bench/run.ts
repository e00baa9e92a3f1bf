/**
 * `npm run bench`: runs every bench module in turn and prints its table.
 * A bench is a module `bench/<name>.ts` exporting `run(): Promise<Report>`;
 * add it to `benches` below. `npm run bench -- dispatch` runs only the
 * named ones; `--check` exits with 1 when a target is missed.
 */
import { format, type Report, verdicts } from "./lib/report.js"

const benches: Readonly<Record<string, () => Promise<{ readonly run: () => Promise<Report> }>>> = {
  dispatch: () => import("./dispatch.js"),
  "sql-baseline": () => import("./sql-baseline.js"),
  sql: () => import("./sql.js"),
  http: () => import("./http.js"),
  idempotency: () => import("./idempotency.js")
}

const args = process.argv.slice(2)
const check = args.includes("--check")
const names = args.filter((arg) => !arg.startsWith("--"))
const unknown = names.filter((name) => !(name in benches))
if (unknown.length > 0) {
  console.error(`No bench named ${unknown.join(", ")}; there are: ${Object.keys(benches).join(", ")}`)
  process.exit(2)
}

let missed = 0
for (const name of names.length > 0 ? names : Object.keys(benches)) {
  const report = await (await benches[name]!()).run()
  console.log(`${format(report)}\n`)
  missed += verdicts(report).filter((verdict) => !verdict.pass).length
}
if (check && missed > 0) process.exitCode = 1
