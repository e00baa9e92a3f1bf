/**
 * The memory store answers as the SQL store does, on random sequences of
 * operations (keyed and unkeyed schedules, cancels, claims, outcomes,
 * retries, leases that pass): a model-based property test.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as fc from "fast-check"
import { CommandScheduler } from "../../src/index.js"
import { SqlScheduledCommands } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { assertProperty, makeRun, type OutcomeKind, outcomeKind, pick, uuid } from "../support/SchedulerModel.js"

type Op =
  | { readonly _tag: "add"; readonly key: number | undefined; readonly keep: boolean; readonly due: boolean }
  | { readonly _tag: "cancelKey"; readonly key: number }
  | { readonly _tag: "cancel"; readonly ref: number }
  | { readonly _tag: "retry"; readonly ref: number }
  | { readonly _tag: "claim" }
  | { readonly _tag: "outcome"; readonly ref: number; readonly kind: OutcomeKind }
  | { readonly _tag: "expire" }

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      _tag: fc.constant("add" as const),
      key: fc.option(fc.nat(2), { nil: undefined }),
      keep: fc.boolean(),
      due: fc.boolean()
    }),
    weight: 5
  },
  { arbitrary: fc.record({ _tag: fc.constant("cancelKey" as const), key: fc.nat(2) }), weight: 1 },
  { arbitrary: fc.record({ _tag: fc.constant("cancel" as const), ref: fc.nat(20) }), weight: 1 },
  { arbitrary: fc.record({ _tag: fc.constant("retry" as const), ref: fc.nat(20) }), weight: 2 },
  { arbitrary: fc.record({ _tag: fc.constant("claim" as const) }), weight: 3 },
  {
    arbitrary: fc.record({
      _tag: fc.constant("outcome" as const),
      ref: fc.nat(20),
      kind: outcomeKind
    }),
    weight: 4
  },
  { arbitrary: fc.record({ _tag: fc.constant("expire" as const) }), weight: 1 }
)

const Shared = SqlScheduledCommands.layer.pipe(Layer.provideMerge(TestDatabase.layer()))

layer(Shared, { excludeTestServices: true, timeout: "300 seconds" })(
  `CommandScheduler memory store vs SQL store (${TestDatabase.kind})`,
  (it) => {
    it.effect("answer alike on random operation sequences", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sqlStore = yield* CommandScheduler.ScheduledCommands
        yield* assertProperty(
          fc.array(op, { minLength: 1, maxLength: 30 }),
          (ops) =>
            Effect.gen(function*() {
              yield* TestDatabase.truncateAll
              const memStore = yield* Effect.provide(CommandScheduler.ScheduledCommands, CommandScheduler.layerMemory)
              const run = makeRun({ sql, sqlStore, memStore, snapshotBy: "id" })
              for (const o of ops) {
                let answers: readonly [unknown, unknown]
                switch (o._tag) {
                  case "add": {
                    const added = yield* run.add(o)
                    answers = added.answers ?? [added.id, added.id]
                    break
                  }
                  case "cancelKey":
                    answers = [
                      yield* run.mem(memStore.cancelKey!(`k${o.key}`)),
                      yield* sqlStore.cancelKey!(`k${o.key}`)
                    ]
                    break
                  case "cancel": {
                    const id = pick(run.ids, o.ref) ?? uuid(999)
                    answers = [yield* run.mem(memStore.cancel(id)), yield* sqlStore.cancel(id)]
                    break
                  }
                  case "retry": {
                    const id = pick(run.ids, o.ref) ?? uuid(999)
                    answers = [yield* run.mem(memStore.retry(id)), yield* sqlStore.retry(id)]
                    break
                  }
                  case "claim":
                    answers = yield* run.claim((effect) => effect)
                    break
                  case "outcome":
                    answers = yield* run.outcome(pick(run.held, o.ref), o.kind, (renewed) => renewed !== undefined)
                    break
                  case "expire":
                    yield* run.expire
                    answers = [null, null]
                }
                run.trace.push(o)
                yield* run.same(answers)
              }
            }),
          { numRuns: 150, endOnFailure: true }
        )
      }))
  }
)
