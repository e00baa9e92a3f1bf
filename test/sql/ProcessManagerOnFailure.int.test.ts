/**
 * A process manager's failure handler on a real database (PGlite, or the
 * server in `DATABASE_URL`): a reservation out of stock rejects the order in
 * place of charging it; a run that crashed before its save is redelivered,
 * and the failed command and the compensation are replayed from their
 * idempotency records, each handler run once.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { ProcessManager } from "../../src/index.js"
import { SqlProcesses, SqlScheduledCommands, SqlStores } from "../../src/sql/index.js"
import { envelopeOf, pendingDeadlines, reactionOf } from "../support/Checkout.js"
import * as TestDatabase from "../support/Database.js"
import { makeBus, makeFulfilment, OrderSubmitted } from "../support/Fulfilment.js"

const Shared = Layer.mergeAll(SqlStores.layer(), SqlScheduledCommands.layer, SqlProcesses.layer).pipe(
  Layer.provideMerge(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
)

layer(Shared, { excludeTestServices: true, timeout: "60 seconds" })(
  `ProcessManager onFailure (${TestDatabase.kind})`,
  (it) => {
    it.effect("out of stock, the order is rejected instead of charged, once, across a crash before the save", () =>
      Effect.gen(function*() {
        yield* TestDatabase.truncateAll
        const { bus, keys, ran } = makeBus(0)
        const fulfilment = makeFulfilment(bus)
        const inner = yield* ProcessManager.Processes
        let crash = true
        // The run's last write, the state with its event applied, dies once, as a crash before it would.
        const crashing: ProcessManager.ProcessStore = {
          ...inner,
          save: (manager, key, process, expected, claimed, applied) =>
            applied !== undefined && process.version > expected && crash
              ? Effect.zipRight(Effect.sync(() => void (crash = false)), Effect.dieMessage("crashed before the save"))
              : inner.save(manager, key, process, expected, claimed, applied)
        }
        const envelope = yield* envelopeOf(new OrderSubmitted({ orderId: "o-1", quantity: 2 }))
        const handle = reactionOf(fulfilment, "OrderSubmitted").handle(envelope)
        expect(Exit.isFailure(yield* Effect.exit(Effect.provideService(handle, ProcessManager.Processes, crashing))))
          .toBe(true)
        yield* handle

        expect(ran).toEqual(["ReserveStock o-1", "RejectOrder o-1"])
        expect(keys).toEqual([`fulfilment:${envelope.eventId}:0`, `fulfilment:${envelope.eventId}:f0:0`])
        const process = Option.getOrThrow(yield* fulfilment.process("o-1"))
        expect([process.state, process.done, process.version]).toEqual([
          { status: "rejected", reason: "OutOfStock" },
          true,
          1
        ])
        expect(yield* pendingDeadlines).toEqual([])
        // Both outcomes are kept for replay: the reservation's failure and the rejection's success.
        const sql = yield* SqlClient.SqlClient
        const stored = yield* sql<{ readonly key: string; readonly outcome: string }>`
          SELECT key, result->>'_tag' AS outcome
          FROM idempotency_keys WHERE key LIKE ${"fulfilment:%"} ORDER BY key`.withoutTransform
        expect(stored.map((row) => [row.key, row.outcome])).toEqual([
          [`fulfilment:${envelope.eventId}:0`, "Failure"],
          [`fulfilment:${envelope.eventId}:f0:0`, "Success"]
        ])
      }))
  }
)
