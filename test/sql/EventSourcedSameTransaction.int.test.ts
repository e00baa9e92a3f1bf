/**
 * Two event-sourced dispatches on one stream in one transaction, on the
 * database (the pool's connections on the server, PGlite embedded): the
 * second reads the first's events and goes on from its version, as the
 * in-memory store now does too (test/EventSourcedSameTransaction.test.ts).
 */
import { layer } from "@effect/vitest"
import * as Layer from "effect/Layer"
import { SqlStores } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { sameTransactionCases } from "../support/EventSourcedSameTransaction.js"

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), { excludeTestServices: true })(
  `EventSourced on ${TestDatabase.kind}, two dispatches on a stream in one transaction`,
  (it) => {
    sameTransactionCases(it)
  }
)
