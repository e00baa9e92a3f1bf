/**
 * The outbox relay: publishes committed events to the `EventPublisher` in
 * order, then marks them published and gives them their log position.
 *
 * - At-least-once: an event is marked only after it was published, in the
 *   same transaction; a crash in between publishes it again after restart.
 *   Consumers dedupe by `eventId`.
 * - One relay at a time: every instance may run one; a transaction-scoped
 *   advisory lock (per schema) lets one of them work per batch, so an event
 *   is published once in the normal case and positions have no gaps.
 * - Wakes on `LISTEN/NOTIFY` (a trigger notifies at commit) and polls as a
 *   fallback, so a lost notification or a listen connection that dropped
 *   delays publication by at most the poll interval.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { EventPublisher } from "../EventPublisher.js"
import { positiveCounts } from "../internal/limit.js"
import { outboxChannel } from "./SqlMigrations.js"
import * as SqlOutbox from "./SqlOutbox.js"
import * as SqlStatement from "./SqlStatement.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Events per transaction. Default 256. */
  readonly batchSize?: number
  /** Poll interval when no notification arrives. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput
  /**
   * How long a notification waits before the relay drains, so that under
   * load one transaction publishes the events of many commits instead of
   * one each. Default 10 milliseconds.
   */
  readonly coalesce?: Duration.DurationInput
  /**
   * The longest wait while commits keep coming: after a drain that published
   * `n` events (more than one), the relay waits `n` times `coalesce`, at most
   * this long. Under steady load the batches grow to this much time's
   * commits: fewer, larger publishing transactions, for at most this much
   * delay before publication. Default 100 milliseconds.
   */
  readonly busyCoalesce?: Duration.DurationInput
}

const publishedTotal = Metric.counter("command_bus_outbox_published_total", {
  description: "Events the outbox relay published",
  incremental: true
})

/**
 * Publishes one batch, if this relay holds the lock. Returns how many
 * events it published.
 *
 * @since 0.1.0
 * @category relay
 */
export const relayBatch = (batchSize = 256) =>
  positiveCounts("OutboxRelay.relayBatch", { batchSize }, () => relayChecked(batchSize))

const relayChecked = (batchSize: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const publisher = yield* EventPublisher
    // A batch is not interrupted (a stop on deploy waits for it, bounded by
    // the statement timeout): an interrupted batch would roll back its marks
    // after publishing, and the next relay would publish it again.
    return yield* Effect.uninterruptible(sql.withTransaction(Effect.gen(function*() {
      // Keyed by schema, so services in different schemas of one database
      // relay independently.
      const [lock] = yield* SqlStatement.rows(sql<{ readonly locked: boolean }>`
        SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.command_bus_outbox_relay')) AS locked`)
      if (lock?.locked !== true) return 0
      const rows = yield* SqlStatement.rows(sql<SqlOutbox.Row & { readonly base: string | number }>`
        SELECT ${sql.literal(SqlOutbox.columns)}, (SELECT coalesce(max(position), 0) FROM outbox) AS base
        FROM outbox WHERE position IS NULL ORDER BY id LIMIT ${batchSize}`)
      if (rows.length === 0) return 0
      yield* publisher.publish(rows.map(SqlOutbox.toEnvelope))
      yield* SqlStatement.run(sql`
        UPDATE outbox AS o SET position = ${Number(rows[0]!.base)} + x.ord, published_at = now()
        FROM jsonb_array_elements_text(${JSON.stringify(rows.map((row) => String(row.id)))}::jsonb)
          WITH ORDINALITY AS x(id, ord)
        WHERE o.id = x.id::bigint`)
      yield* Metric.incrementBy(publishedTotal, rows.length)
      return rows.length
    })))
  }).pipe(Effect.withSpan("OutboxRelay.relayBatch", { captureStackTrace: false }))

/**
 * Publishes until the outbox is drained.
 *
 * @since 0.1.0
 * @category relay
 */
export const drain = (batchSize = 256): Effect.Effect<number, SqlError, SqlClient.SqlClient | EventPublisher> =>
  positiveCounts("OutboxRelay.drain", { batchSize }, () =>
    Effect.iterate({ last: batchSize, total: 0 }, {
      while: ({ last }) => last === batchSize,
      body: ({ total }) => Effect.map(relayChecked(batchSize), (last) => ({ last, total: total + last }))
    }).pipe(Effect.map(({ total }) => total)))

/**
 * The relay loop: drain, then wait for a notification or the poll interval.
 * Database errors are logged and retried after the poll interval; the loop
 * ends only when interrupted.
 *
 * A poll that finds events means a notification was missed. The listening
 * connection may have died without telling (`@effect/sql-pg` keeps a dead
 * one, after a server restart, say), so the relay listens anew.
 *
 * @since 0.1.0
 * @category relay
 */
export const run = (options: Options = {}) =>
  Effect.gen(function*() {
    yield* positiveCounts("OutboxRelay.run", { batchSize: options.batchSize }, () => Effect.void)
    const batchSize = options.batchSize ?? 256
    const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
    const coalesce = Duration.decode(options.coalesce ?? "10 millis")
    const busyCoalesce = Duration.decode(options.busyCoalesce ?? "100 millis")
    const pg = yield* PgClient.PgClient
    const sql = yield* SqlClient.SqlClient
    const wake = yield* Queue.sliding<void>(1)
    // Every schema's outbox notifies on one channel, with its schema's name:
    // instances of other schemas on the database are not this relay's work.
    // Unknown (the database is not there yet): every notification wakes it.
    const schema = yield* SqlStatement.rows(sql<{ readonly schema: string }>`SELECT current_schema() AS schema`).pipe(
      Effect.map((rows) => rows[0]?.schema),
      Effect.orElseSucceed(() => undefined)
    )
    // Not awaited when stopped: ending a listen sends UNLISTEN, and on a
    // server that stopped answering that waits as long as the socket lasts.
    // The relay's stop, and the service's shutdown, do not wait for it.
    const listen = pg.listen(outboxChannel).pipe(
      Stream.runForEach((payload) =>
        schema === undefined || payload === schema ? Queue.offer(wake, undefined) : Effect.void
      ),
      Effect.tapErrorCause((cause) => Effect.logDebug("outbox.listen-failed", cause)),
      Effect.retry(Schedule.spaced(pollInterval)),
      Effect.forkDaemon
    )
    let listener = yield* listen
    yield* Effect.addFinalizer(() => Fiber.interruptFork(listener))
    // Whether any event waits, read untraced: a poll of an idle outbox, once
    // a second, is not a trace of its own. Unsure (an error): drain, which says.
    const waiting = SqlStatement.rows(sql<{ readonly waiting: boolean }>`
      SELECT EXISTS (SELECT 1 FROM outbox WHERE position IS NULL) AS waiting`).pipe(
      Effect.map((rows) => rows[0]?.waiting !== false),
      Effect.catchAllCause(() => Effect.succeed(true)),
      Effect.withTracerEnabled(false)
    )
    let notified = true
    for (;;) {
      const published = (notified || (yield* waiting))
        ? yield* drain(batchSize).pipe(
          Effect.catchAllCause((cause) => Effect.as(Effect.logWarning("outbox.relay-failed", cause), 0))
        )
        : 0
      if (!notified && published > 0) {
        yield* Effect.logDebug("outbox.listen-renewed")
        // The old listen's UNLISTEN must land before the new LISTEN, on the
        // connection they share, or the new one stops listening at once. A
        // server that does not answer gets a second, then the poll goes on.
        yield* Effect.timeoutOption(Fiber.interrupt(listener), "1 second")
        listener = yield* listen
      }
      notified = Option.isSome(yield* Effect.timeoutOption(Queue.take(wake), pollInterval))
      // Under load a batch every few milliseconds costs the database and this
      // process a transaction each; waiting longer makes them fewer.
      yield* Effect.sleep(
        published > 1 ? Duration.min(busyCoalesce, Duration.times(coalesce, published)) : coalesce
      )
    }
  })

/**
 * Runs the relay for as long as the layer lives.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<never, never, SqlClient.SqlClient | PgClient.PgClient | EventPublisher> =>
  Layer.scopedDiscard(
    // Refused as the layer is built, not inside the relay's fiber.
    positiveCounts("OutboxRelay.layer", { batchSize: options.batchSize }, () =>
      Effect.forkScoped(Effect.scoped(run(options))))
  )
