import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import { storedMillis } from "./limit.js"

/**
 * A `json`/`jsonb` column as the driver hands it over: `pg` parses it, a
 * client that does not hands over the text.
 */
export const json = (value: unknown): unknown => typeof value === "string" ? JSON.parse(value) : value

/**
 * The time `duration` from the database's clock at this statement, the
 * clock the stores' leases and expiries are compared with, for a statement
 * of `sql`: whole milliseconds, at most 100 years (see `storedMillis`).
 * `statement_timestamp()`, not `now()`: inside a transaction `now()` is the
 * transaction's start, and a lease taken late in a long one (a nested
 * dispatch's claim) would begin in the past, or already be over.
 */
export const fromNow = (sql: SqlClient.SqlClient, duration: Duration.Duration): Statement.Fragment =>
  sql`statement_timestamp() + make_interval(secs => ${storedMillis(duration) / 1000})`

/**
 * `time` as a `timestamptz` in a statement of `sql`, sent as whole seconds
 * and milliseconds since the epoch, exact in integers: PostgreSQL does not
 * read the ISO form of a year past 9999 (`+010000-…`), and a fraction of
 * seconds that far out loses a digit.
 */
export const timestamp = (sql: SqlClient.SqlClient, time: DateTime.Utc): Statement.Fragment => {
  const millis = DateTime.toEpochMillis(time)
  const seconds = Math.floor(millis / 1000)
  return sql`(to_timestamp(${seconds}::bigint) + ${millis - seconds * 1000}::integer * interval '1 millisecond')`
}
