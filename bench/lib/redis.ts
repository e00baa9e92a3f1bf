/**
 * A throwaway Redis for benches: the test suite's `redis-server` (on
 * 127.0.0.1 and a free port, a pid file, no persistence, a temporary
 * folder), stopped when the bench is done, fails, or exits.
 * `BENCH_REDIS_URL` names an existing server to use instead (never stopped;
 * the benches write keys under a prefix of their own, with a short expiry).
 */
import * as RedisServer from "../../test/idempotency/RedisServer.js"

export interface Server {
  readonly url: string
  /** Stops the server (if this bench started it) and removes its files. */
  readonly stop: () => Promise<void>
}

/** Runs a `redis-server` of its own, or connects to `BENCH_REDIS_URL`. */
export const start = async (): Promise<Server> => {
  const external = process.env["BENCH_REDIS_URL"]
  if (external !== undefined && external !== "") return { url: external, stop: async () => {} }
  const server = await RedisServer.start().catch((error: unknown) => {
    throw new Error(`${String(error)} (apt-get install redis-server, or set BENCH_REDIS_URL)`)
  })
  return { url: server.url, stop: server.stop }
}
