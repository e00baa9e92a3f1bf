/**
 * What a bench module returns and how it is printed: each figure beside its
 * baseline as a ratio, and each target with its verdict.
 */

/** A row must stay at or under `maxRatio` times the row `of`. */
export interface Target {
  readonly of: string
  readonly maxRatio: number
}

export interface Row {
  readonly id: string
  readonly label: string
  /** How a target of another row names this one; `label` when absent. */
  readonly short?: string
  /** Median nanoseconds per operation. */
  readonly nsPerOp: number
  readonly min: number
  readonly max: number
  readonly batchSize: number
  readonly target?: Target
}

export interface Report {
  readonly title: string
  /** The row every other is shown as a ratio of. */
  readonly baseline: string
  readonly rows: ReadonlyArray<Row>
  /** How the figures were obtained, printed under the table. */
  readonly notes: ReadonlyArray<string>
}

export interface Verdict {
  readonly row: Row
  readonly ratio: number
  readonly pass: boolean
}

const rowOf = (report: Report, id: string): Row => {
  const row = report.rows.find((candidate) => candidate.id === id)
  if (row === undefined) throw new Error(`${report.title}: no row ${id}`)
  return row
}

export const verdicts = (report: Report): ReadonlyArray<Verdict> =>
  report.rows.flatMap((row) => {
    if (row.target === undefined) return []
    const ratio = row.nsPerOp / rowOf(report, row.target.of).nsPerOp
    return [{ row, ratio, pass: ratio <= row.target.maxRatio }]
  })

const nameOf = (row: Row): string => row.short ?? row.label

export const formatNs = (ns: number): string =>
  ns >= 1e6 ? `${(ns / 1e6).toFixed(2)} ms` : ns >= 1e4 ? `${(ns / 1e3).toFixed(1)} µs` : ns >= 1e3
    ? `${(ns / 1e3).toFixed(2)} µs`
    : `${ns.toFixed(0)} ns`

const formatRatio = (ratio: number): string =>
  ratio >= 100 ? `${ratio.toFixed(0)}×` : ratio >= 10 ? `${ratio.toFixed(1)}×` : `${ratio.toFixed(2)}×`

export const format = (report: Report): string => {
  const baseline = rowOf(report, report.baseline)
  const byRow = new Map(verdicts(report).map((verdict) => [verdict.row.id, verdict]))
  const header = ["variant", "median", "min – max", "× baseline", "target", "result"]
  const lines = report.rows.map((row) => {
    const verdict = byRow.get(row.id)
    return [
      row.label,
      formatNs(row.nsPerOp),
      `${formatNs(row.min)} – ${formatNs(row.max)}`,
      row.id === baseline.id ? "baseline" : formatRatio(row.nsPerOp / baseline.nsPerOp),
      row.target === undefined
        ? ""
        : `≤ ${Number(row.target.maxRatio.toFixed(2))}× ${nameOf(rowOf(report, row.target.of))}`,
      verdict === undefined ? "" : `${verdict.pass ? "PASS" : "FAIL"} ${formatRatio(verdict.ratio)}`
    ]
  })
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => line[column]!.length)))
  const align = (cells: ReadonlyArray<string>) =>
    cells.map((cell, column) => column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))
      .join("  ").trimEnd()
  return [
    report.title,
    "",
    align(header),
    widths.map((width) => "-".repeat(width)).join("  "),
    ...lines.map(align),
    "",
    ...report.notes.map((note) => `- ${note}`)
  ].join("\n")
}
