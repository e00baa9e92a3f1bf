/**
 * The memory store answers as the SQL store does when some operations run in
 * a dispatch's unit of work (`InMemory.layer`'s, `SqlUnitOfWork`'s) that
 * commits or rolls back, between claims, renewals (a runner starting a
 * command), cancels of claimed and started commands, outcomes and leases
 * that pass: a model-based property test, a sibling of
 * SchedulerKeysModel.int.test.ts. On a server, a runner also claims while a
 * unit of work is open (PGlite has one session, which the transaction holds).
 * A retry inside a unit of work that rolled back used to stand in memory.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as fc from "fast-check"
import { CommandScheduler, UnitOfWork } from "../../src/index.js"
import { SqlScheduledCommands, SqlUnitOfWork } from "../../src/sql/index.js"
import { InMemory } from "../../src/testing/index.js"
import * as TestDatabase from "../support/Database.js"
import { assertProperty, makeRun, type OutcomeKind, outcomeKind, pick, uuid } from "../support/SchedulerModel.js"

// What a dispatch does to the schedule: schedule (by key or not), cancel, retry;
// by id, one scheduled, one a runner claimed (started or not) or one failed.
type Target = "scheduled" | "claimed" | "failed"

type Write =
  | { readonly _tag: "add"; readonly key: number | undefined; readonly keep: boolean; readonly due: boolean }
  | { readonly _tag: "cancelKey"; readonly key: number }
  | { readonly _tag: "cancel" | "retry"; readonly ref: number; readonly target: Target }

type Op =
  | Write
  | { readonly _tag: "claim" }
  | { readonly _tag: "outcome"; readonly ref: number; readonly kind: OutcomeKind }
  | { readonly _tag: "expire" }
  | {
    readonly _tag: "unitOfWork"
    readonly writes: ReadonlyArray<Write>
    readonly commit: boolean
    readonly claimWhileOpen: boolean
  }

const write: fc.Arbitrary<Write> = fc.oneof(
  {
    arbitrary: fc.record({
      _tag: fc.constant("add" as const),
      key: fc.option(fc.nat(2), { nil: undefined }),
      keep: fc.boolean(),
      // Mostly due, so that runners claim them.
      due: fc.constantFrom(true, true, false)
    }),
    weight: 6
  },
  { arbitrary: fc.record({ _tag: fc.constant("cancelKey" as const), key: fc.nat(2) }), weight: 2 },
  {
    arbitrary: fc.record({
      _tag: fc.constantFrom("cancel" as const, "retry" as const),
      ref: fc.nat(20),
      target: fc.constantFrom<Target>("scheduled", "claimed", "failed")
    }),
    weight: 4
  }
)

const op: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: write, weight: 6 },
  { arbitrary: fc.record({ _tag: fc.constant("claim" as const) }), weight: 3 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("outcome" as const),
      // Counted from the latest claim or renewal: older ones are mostly stale.
      ref: fc.nat(5),
      kind: outcomeKind
    }),
    weight: 6
  },
  { arbitrary: fc.record({ _tag: fc.constant("expire" as const) }), weight: 1 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("unitOfWork" as const),
      writes: fc.array(write, { minLength: 1, maxLength: 4 }),
      commit: fc.boolean(),
      claimWhileOpen: fc.boolean()
    }),
    weight: 3
  }
)

const Shared = Layer.merge(SqlScheduledCommands.layer, SqlUnitOfWork.layer).pipe(
  Layer.provideMerge(TestDatabase.layer())
)

// A statement on a connection of its own, as a runner's, while the caller's transaction is open.
const outsideTransaction = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.mapInputContext(
    effect,
    (context: Context.Context<R>) => Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<R>
  )

class RolledBack {
  readonly _tag = "RolledBack"
}

layer(Shared, { excludeTestServices: true, timeout: "300 seconds" })(
  `CommandScheduler memory store vs SQL store, with units of work (${TestDatabase.kind})`,
  (it) => {
    it.effect("answer alike on random operation sequences", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sqlStore = yield* CommandScheduler.ScheduledCommands
        const sqlUnitOfWork = yield* UnitOfWork.UnitOfWork
        yield* assertProperty(
          fc.array(op, { minLength: 10, maxLength: 25, size: "max" }),
          (ops) =>
            Effect.gen(function*() {
              yield* TestDatabase.truncateAll
              const [memStore, memUnitOfWork] = yield* Effect.provide(
                Effect.all([CommandScheduler.ScheduledCommands, UnitOfWork.UnitOfWork]),
                Layer.merge(InMemory.layer, CommandScheduler.layerMemory)
              )
              const run = makeRun({
                sql,
                sqlStore,
                memStore,
                // Memory's writes register with memory's unit of work, whatever the SQL store's is.
                onMem: (effect) => Effect.provideService(effect, UnitOfWork.UnitOfWork, memUnitOfWork),
                snapshotBy: "payload"
              })
              const { held, ids, mem, same, trace } = run
              const idOf = ({ ref, target }: { readonly ref: number; readonly target: Target }) =>
                Effect.map(sqlStore.list({ state: "failed" }), (failed) =>
                  (target === "scheduled"
                    ? pick(ids, ref)
                    : target === "claimed"
                    ? pick(held, ref)?.sql.id
                    : pick(failed, ref)?.id) ?? uuid(999))
              const writeBoth = (w: Write) =>
                Effect.gen(function*() {
                  switch (w._tag) {
                    case "add":
                      return (yield* run.add(w)).answers ?? [null, null] as const
                    case "cancelKey":
                      return [
                        yield* mem(memStore.cancelKey!(`k${w.key}`)),
                        yield* sqlStore.cancelKey!(`k${w.key}`)
                      ] as const
                    case "cancel": {
                      const id = yield* idOf(w)
                      return [yield* mem(memStore.cancel(id)), yield* sqlStore.cancel(id)] as const
                    }
                    case "retry": {
                      const id = yield* idOf(w)
                      return [yield* mem(memStore.retry(id)), yield* sqlStore.retry(id)] as const
                    }
                  }
                })
              for (const o of ops) {
                trace.push(o)
                let answers: readonly [unknown, unknown]
                switch (o._tag) {
                  case "add":
                  case "cancelKey":
                  case "cancel":
                  case "retry":
                    answers = yield* writeBoth(o)
                    break
                  case "claim":
                    answers = yield* run.claim((effect) => effect)
                    break
                  case "outcome":
                    answers = yield* run.outcome(
                      held[held.length - 1 - (o.ref % Math.max(1, held.length))],
                      o.kind,
                      (renewed) => renewed === undefined ? renewed : renewed.superseded
                    )
                    break
                  case "expire":
                    yield* run.expire
                    answers = [null, null]
                    break
                  case "unitOfWork": {
                    // Each store's writes in its own unit of work, compared
                    // write by write (the SQL store read in its transaction).
                    const inside = Effect.gen(function*() {
                      for (const w of o.writes) {
                        const answer = yield* writeBoth(w)
                        trace.push({ inside: w })
                        yield* same(answer)
                      }
                      if (o.claimWhileOpen && TestDatabase.kind === "postgres") {
                        trace.push("claim while open")
                        yield* same(yield* run.claim(outsideTransaction))
                      }
                      if (!o.commit) return yield* Effect.fail(new RolledBack())
                    })
                    // Memory's unit of work around the SQL store's: both end
                    // together, the SQL one first. A failed comparison inside
                    // is a defect, and fails the property.
                    yield* memUnitOfWork.transactional(sqlUnitOfWork.transactional(inside)).pipe(
                      Effect.catchIf((error) => error instanceof RolledBack, () => Effect.void)
                    )
                    answers = [null, null]
                    break
                  }
                }
                yield* same(answers)
              }
            }),
          { numRuns: 60, seed: 20250601, endOnFailure: true }
        )
      }))
  }
)
