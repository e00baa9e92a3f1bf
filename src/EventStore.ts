/**
 * The event streams of event-sourced aggregates (`EventSourced`): one stream
 * per aggregate, read from the event log (the outbox), and a guard of each
 * stream's version that two dispatches which read the same version cannot
 * both pass. The events themselves are appended by the bus, as any
 * handler's are: the store only reads them and guards their versions. It
 * may keep snapshots too (`Service.snapshots`): a state folded up to a
 * version, so that a long stream is read from there on.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ConcurrencyConflict, type StoreUnavailable } from "./CommandError.js"
import type * as DomainEvent from "./DomainEvent.js"
import { currentPending, heldEvents } from "./internal/pending.js"
import { Outbox } from "./Outbox.js"
import * as UnitOfWork from "./UnitOfWork.js"

/**
 * Which aggregate a stream holds the events of.
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamId {
  readonly aggregateType: string
  readonly aggregateId: string
}

/**
 * A stream's state as its events up to a version fold into, encoded: taken
 * by an event-sourced handler (`EventSourced.make`'s `snapshot`) in the
 * dispatch's transaction, so that the next dispatches fold only the events
 * after it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  /**
   * Which fold made the state (`EventSourced`'s key of the state's schema,
   * the decider's fold and the snapshot's `version`): a snapshot is read
   * back only under the key it was saved with, so that a state another
   * schema or fold made is never decoded as this one's.
   */
  readonly schemaVersion: string
  /** The version of the stream's last event the state folds in. */
  readonly version: number
  /** The state, encoded by its schema: plain JSON. */
  readonly state: unknown
}

/**
 * Where a store keeps snapshots: one per stream and `schemaVersion`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshots {
  /**
   * The stream's snapshot saved under `schemaVersion`, if any: committed
   * (on a database, the caller's transaction's own too).
   */
  readonly load: (stream: StreamId, schemaVersion: string) => Effect.Effect<Option.Option<Snapshot>>
  /**
   * Saves `snapshot` in the caller's transaction, in place of the one under
   * its `schemaVersion`: it is kept if the transaction commits, with the
   * events it folds in, and never otherwise. Its caller holds the stream's
   * guard at the snapshot's version, so the one it replaces is older (or
   * ahead of the stream, and never read).
   */
  readonly save: (stream: StreamId, snapshot: Snapshot) => Effect.Effect<void>
  /**
   * Deletes up to `limit` snapshots of `aggregateType`'s streams saved under
   * a key other than `keep` (all of them, with `keep` undefined), in one
   * step; returns how many. Optional, as it came after the others:
   * `EventSourced.pruneSnapshots` fails with `SnapshotPruneUnsupported` on
   * a store without it.
   */
  readonly prune?:
    | ((aggregateType: string, keep: string | undefined, limit: number) => Effect.Effect<number, StoreUnavailable>)
    | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * The stream's events, by version, oldest first: those committed and
   * those the caller's transaction appended before (on a database, a write
   * held for its COMMIT, `SqlStatement.runAtCommit`, goes out ahead of the
   * read; in memory, the unit of work's events not yet appended), so that a
   * second dispatch on the stream in one transaction goes on from the first.
   * With `after`, only those of a version above it (a store may give more:
   * its reader skips them).
   */
  readonly read: (
    stream: StreamId,
    options?: { readonly after?: number | undefined }
  ) => Effect.Effect<ReadonlyArray<DomainEvent.Envelope>>
  /**
   * Moves the stream's version from `expected` (what the caller read) to
   * `next`, in the caller's transaction, or fails with `ConcurrencyConflict`
   * when another dispatch moved it past `expected` first (committed, or in a
   * transaction still open: on PostgreSQL this waits for its outcome). A
   * stream whose events were written without the guard (before it existed)
   * is at the version its events say.
   */
  readonly advance: (
    stream: StreamId,
    expected: number,
    next: number
  ) => Effect.Effect<void, ConcurrencyConflict>
  /**
   * The stream's snapshots. Optional: a store without them (a test's
   * stand-in) has every stream read whole, as a decider without `snapshot`
   * does.
   */
  readonly snapshots?: Snapshots | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class EventStore extends Context.Tag("effect-command-bus/EventStore")<EventStore, Service>() {}

const keyOf = (stream: StreamId): string => JSON.stringify([stream.aggregateType, stream.aggregateId])

/**
 * Streams over the in-memory outbox (`Outbox.layerMemory`): its committed
 * events, indexed as they are read. A version moved inside a unit of work
 * (`UnitOfWork.layerMemory`) goes back when it rolls back; a second dispatch
 * from that version meanwhile fails at once rather than wait, as nothing
 * here can wait for another fiber's transaction. Events a dispatch appended
 * are read by others once it committed (the in-memory outbox holds them till
 * then), and at once inside its own transaction, as on a database.
 * Snapshots are kept from the commit of the dispatch that saved them.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service, never, Outbox> = Effect.map(Outbox, (outbox) => {
  const streams = new Map<string, Array<DomainEvent.Envelope>>()
  const versions = new Map<string, number>()
  const snapshots = new Map<string, { readonly version: number; readonly state: string }>()
  let position = 0
  const page = 1000
  // Reads the log from where the last read stopped: each event is indexed once.
  const catchUp: Effect.Effect<void> = Effect.suspend(() =>
    Effect.flatMap(
      Effect.orDie(outbox.read({ after: position, limit: page })),
      (events) => {
        for (const stored of events) {
          // Another fiber's catch-up may have indexed it while this one's
          // read was under way (a fiber can yield between the two).
          if (stored.position <= position) continue
          position = stored.position
          const key = keyOf(stored.event)
          const stream = streams.get(key)
          if (stream === undefined) streams.set(key, [stored.event])
          else stream.push(stored.event)
        }
        return events.length < page ? Effect.void : catchUp
      }
    )
  )
  const versionOf = (key: string): number => {
    const stream = streams.get(key)
    const written = stream === undefined || stream.length === 0 ? 0 : stream[stream.length - 1]!.aggregateVersion
    return Math.max(written, versions.get(key) ?? 0)
  }
  return {
    read: (stream, options) =>
      Effect.zipWith(
        catchUp,
        FiberRef.get(currentPending),
        // The caller's transaction's own events too, not yet appended, as a
        // database's transaction reads its own writes: a second dispatch on
        // the stream in that transaction (a handler that dispatches two)
        // goes on from the first's version. Stable: a stream written without
        // versions of its own keeps its log order.
        (_, pending) => {
          const key = keyOf(stream)
          const after = options?.after
          const held = heldEvents(pending).filter((event) => keyOf(event) === key)
          const all = [...(streams.get(key) ?? []), ...held]
          return (after === undefined ? all : all.filter((event) => event.aggregateVersion > after))
            .sort((a, b) => a.aggregateVersion - b.aggregateVersion)
        }
      ),
    advance: (stream, expected, next) =>
      Effect.flatMap(catchUp, () => {
        const key = keyOf(stream)
        if (versionOf(key) > expected) {
          return Effect.fail(
            new ConcurrencyConflict({
              aggregateType: stream.aggregateType,
              aggregateId: stream.aggregateId,
              expectedVersion: expected
            })
          )
        }
        const before = versions.get(key)
        versions.set(key, next)
        // A rollback gives the version back to where it was before this
        // move. Nobody else moves it while this transaction is open, but a
        // later dispatch of the same transaction may have moved it on from
        // here: the moves are undone in the order they were made, so the
        // first one's undo finds the version past its own `next`, and goes
        // back past the later ones too (whose undo then finds it below
        // theirs, and leaves it).
        const undo = (committed: boolean) =>
          Effect.sync(() => {
            const current = versions.get(key)
            if (committed || current === undefined || current < next) return
            if (before === undefined) versions.delete(key)
            else versions.set(key, before)
          })
        return Effect.asVoid(UnitOfWork.afterEnd(undo))
      }),
    snapshots: {
      load: (stream, schemaVersion) =>
        Effect.sync(() => {
          const kept = snapshots.get(snapshotKey(stream, schemaVersion))
          return kept === undefined
            ? Option.none()
            : Option.some({ schemaVersion, version: kept.version, state: JSON.parse(kept.state) })
        }),
      // Kept at the commit, when the events it folds in are appended: a
      // reader before then would find it ahead of the stream, and a
      // rollback leaves none. Held as JSON text, as a database holds it: a
      // state reads back here as it would from one.
      save: (stream, snapshot) =>
        UnitOfWork.onCommit(Effect.sync(() => {
          snapshots.set(snapshotKey(stream, snapshot.schemaVersion), {
            version: snapshot.version,
            state: JSON.stringify(snapshot.state)
          })
        })),
      prune: (aggregateType, keep, limit) =>
        Effect.sync(() => {
          let pruned = 0
          for (const key of snapshots.keys()) {
            if (pruned >= limit) break
            const [type, , schemaVersion] = JSON.parse(key) as [string, string, string]
            if (type === aggregateType && schemaVersion !== keep) {
              snapshots.delete(key)
              pruned++
            }
          }
          return pruned
        })
    }
  }
})

const snapshotKey = (stream: StreamId, schemaVersion: string): string =>
  JSON.stringify([stream.aggregateType, stream.aggregateId, schemaVersion])

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<EventStore, never, Outbox> = Layer.effect(EventStore, makeMemory)
