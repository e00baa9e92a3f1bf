/**
 * The service's idempotency store, as `IDEMPOTENCY_STORE` says: the SQL
 * store on the service's database (the default), or the Redis store at
 * `REDIS_URL`. The Redis module, and `ioredis` with it, is loaded only when
 * chosen.
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Idempotency from "../Idempotency.js"
import { SqlIdempotencyStore } from "../sql/index.js"
import * as Config from "./Config.js"

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Idempotency.IdempotencyStore, ConfigError.ConfigError, SqlClient.SqlClient> = Layer
  .unwrapEffect(
    Effect.flatMap(
      Config.idempotencyStore,
      (config): Effect.Effect<Layer.Layer<Idempotency.IdempotencyStore, never, SqlClient.SqlClient>> =>
        config._tag === "Postgres"
          ? Effect.succeed(SqlIdempotencyStore.layer)
          : Effect.map(
            Effect.promise(() => import("../redis/RedisIdempotencyStore.js")),
            (RedisIdempotencyStore) => RedisIdempotencyStore.layer({ url: config.url, timeout: config.timeout })
          )
    )
  )
