/**
 * An aggregate id a database cannot store, in memory: refused as on
 * PostgreSQL (test/sql/EventSourcedUnstorableId.int.test.ts), where the
 * store's read died with the driver's encoding error (22021) while memory
 * went on and appended.
 */
import { layer } from "@effect/vitest"
import { InMemory } from "../src/testing/index.js"
import { unstorableIdCases } from "./support/EventSourcedUnstorableId.js"

layer(InMemory.layer)("EventSourced in memory, an aggregate id a database cannot store", (it) => {
  unstorableIdCases(it)
})
