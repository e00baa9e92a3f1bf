/**
 * The unit of work on `@effect/sql`: one `withTransaction` per dispatch, so
 * the handler's writes, its outbox rows and its idempotency record commit or
 * roll back together. Interrupting the dispatch (a timeout) rolls it back.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as UnitOfWork from "../UnitOfWork.js"
import * as SqlFailure from "./SqlFailure.js"

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<UnitOfWork.Service, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql) => ({ transactional: (self) => SqlFailure.classify(sql.withTransaction(self)) })
)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<UnitOfWork.UnitOfWork, never, SqlClient.SqlClient> = Layer.effect(
  UnitOfWork.UnitOfWork,
  make
)
