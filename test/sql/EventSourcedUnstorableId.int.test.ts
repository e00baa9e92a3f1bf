/**
 * An aggregate id a database cannot store, on the database: the handler
 * refuses it with the message memory gives, rather than the store's read
 * dying with the driver's encoding error (22021, "invalid byte sequence").
 */
import { layer } from "@effect/vitest"
import * as Layer from "effect/Layer"
import { SqlStores } from "../../src/sql/index.js"
import * as TestDatabase from "../support/Database.js"
import { unstorableIdCases } from "../support/EventSourcedUnstorableId.js"

layer(SqlStores.layer({ relay: false }).pipe(Layer.provideMerge(TestDatabase.layer())), { excludeTestServices: true })(
  `EventSourced on ${TestDatabase.kind}, an aggregate id a database cannot store`,
  (it) => {
    unstorableIdCases(it)
  }
)
