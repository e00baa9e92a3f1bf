/**
 * The reference implementation of the order endpoints, the way a team
 * would build them without this project: Fastify 5, NestJS CQRS's
 * `CommandBus`, `pg`. The HTTP bench runs it beside the service.
 *
 * `node --import tsx bench/reference/main.ts`, with `PORT` (3000), `HOST`
 * (127.0.0.1), `DATABASE_URL`, `JWT_SECRET`, `LOG_LEVEL` (info) and
 * `DB_POOL_SIZE` (20, as the service). The schema must exist: the service's
 * migrations create it.
 */
import "reflect-metadata"
import { NestFactory } from "@nestjs/core"
import { CommandBus } from "@nestjs/cqrs"
import Pg from "pg"
import { makeApp } from "./app.js"
import { OrdersModule } from "./orders.js"

const required = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") {
    console.error(`${name} is required`)
    process.exit(1)
  }
  return value
}

const pool = new Pg.Pool({
  connectionString: required("DATABASE_URL"),
  max: Number(process.env["DB_POOL_SIZE"] ?? 20),
  statement_timeout: 10_000,
  application_name: "bench-reference"
})
pool.on("error", () => {})

const nest = await NestFactory.createApplicationContext(OrdersModule.forRoot(pool), { logger: false })
const app = makeApp({
  bus: nest.get(CommandBus),
  pool,
  jwtSecret: required("JWT_SECRET"),
  logLevel: (process.env["LOG_LEVEL"] ?? "info").toLowerCase().replace(/^warning$/, "warn")
})

let closing = false
const shutdown = async () => {
  if (closing) return
  closing = true
  await app.close()
  await nest.close()
  await pool.end()
  process.exit(0)
}
process.once("SIGTERM", shutdown)
process.once("SIGINT", shutdown)

await app.listen({ port: Number(process.env["PORT"] ?? 3000), host: process.env["HOST"] ?? "127.0.0.1" })
