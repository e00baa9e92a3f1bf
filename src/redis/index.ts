/**
 * The library's Redis-backed stores, over `ioredis`. Only this entry point
 * (`effect-command-bus/redis`) loads `ioredis`: an app that does not import
 * it needs no Redis.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as RedisIdempotencyStore from "./RedisIdempotencyStore.js"
