/**
 * In memory as on PostgreSQL, a read of a stream inside a transaction sees
 * the events that transaction appended before: a handler that dispatches two
 * commands on one stream (each a savepoint of its transaction), or a caller
 * that runs two dispatches in one transaction, goes on from the first one's
 * version. The in-memory store read committed events only, and the second
 * dispatch failed with ConcurrencyConflict (its version moved by the first,
 * its events not seen), where PostgreSQL commits both
 * (test/sql/EventSourcedSameTransaction.int.test.ts). Such a transaction
 * rolled back gives every version it moved back.
 */
import { layer } from "@effect/vitest"
import { InMemory } from "../src/testing/index.js"
import { sameTransactionCases } from "./support/EventSourcedSameTransaction.js"

layer(InMemory.layer)("EventSourced in memory, two dispatches on a stream in one transaction", (it) => {
  sameTransactionCases(it)
})
