/**
 * The idempotency contract on the SQL store, over a real database: PGlite,
 * or the server in `DATABASE_URL` (a schema of its own). The record joins
 * the command's transaction, so a failed commit takes it back.
 */
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { Idempotency } from "../../src/index.js"
import { SqlIdempotencyStore, SqlOutbox, SqlUnitOfWork } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { contract } from "./StoreContract.js"

// The SQL store without its background pruning, as the service's bus uses it.
const Services = Layer.mergeAll(
  SqlOutbox.layer,
  SqlUnitOfWork.layer,
  Layer.effect(Idempotency.IdempotencyStore, SqlIdempotencyStore.make)
).pipe(
  Layer.provide(TestDatabase.layer()),
  Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Error))
)

contract(`idempotency contract (sql, ${TestDatabase.kind})`, Services, {
  clock: "live",
  undoesFailedCommit: true,
  timeout: "120 seconds"
})
