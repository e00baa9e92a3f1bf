/**
 * The reference's HTTP edge on Fastify 5: JSON-schema validation of bodies
 * (unknown properties refused), JWT HS256 bearer tokens checked with
 * `jose`, errors as `application/problem+json`, and every write sent
 * through the NestJS `CommandBus`.
 */
import type { CommandBus } from "@nestjs/cqrs"
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify"
import { jwtVerify } from "jose"
import { randomUUID } from "node:crypto"
import type { Pool } from "pg"
import { type CommandResponse, CreateOrderCommand, Problem, RestockProductCommand } from "./orders.js"

export interface Principal {
  readonly userId: string
  readonly roles: ReadonlyArray<string>
}

declare module "fastify" {
  interface FastifyRequest {
    principal: Principal | null
  }
}

export interface AppOptions {
  readonly bus: CommandBus
  readonly pool: Pool
  readonly jwtSecret: string
  readonly logLevel: string
}

const text = (maxLength: number) => ({ type: "string", minLength: 1, maxLength }) as const

const createOrderBody = {
  type: "object",
  additionalProperties: false,
  required: ["customer_id", "items", "shipping_address"],
  properties: {
    customer_id: { type: "string", format: "uuid" },
    items: {
      type: "array",
      minItems: 1,
      maxItems: 100,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["product_id", "quantity"],
        properties: {
          product_id: text(100),
          quantity: { type: "integer", minimum: 1, maximum: 1000 }
        }
      }
    },
    shipping_address: {
      type: "object",
      additionalProperties: false,
      required: ["line1", "city", "postal_code", "country"],
      properties: {
        line1: text(200),
        line2: text(200),
        city: text(100),
        postal_code: text(20),
        country: { type: "string", pattern: "^[A-Z]{2}$" }
      }
    }
  }
} as const

interface CreateOrderBody {
  readonly customer_id: string
  readonly items: ReadonlyArray<{ readonly product_id: string; readonly quantity: number }>
  readonly shipping_address: {
    readonly line1: string
    readonly line2?: string
    readonly city: string
    readonly postal_code: string
    readonly country: string
  }
}

const stockBody = {
  type: "object",
  additionalProperties: false,
  required: ["available"],
  properties: { available: { type: "integer", minimum: 0, maximum: 2147483647 } }
} as const

const productParams = {
  type: "object",
  required: ["product_id"],
  properties: { product_id: text(100) }
} as const

const problemType = "application/problem+json"

const sendProblem = (reply: FastifyReply, problem: Problem) =>
  reply.code(problem.status).type(problemType).send(problem.body)

const sendResponse = (reply: FastifyReply, response: CommandResponse) => {
  if (response.replayed) reply.header("idempotent-replayed", "true")
  if (response.status >= 400) return reply.code(response.status).type(problemType).send(response.body)
  return reply.code(response.status).send(response.body)
}

export const makeApp = (options: AppOptions): FastifyInstance => {
  const secret = new TextEncoder().encode(options.jwtSecret)
  const app = Fastify({
    logger: { level: options.logLevel },
    // Refuse unknown properties instead of stripping them; no type coercion.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } }
  })
  app.decorateRequest("principal", null)

  const authenticate = async (request: FastifyRequest) => {
    const header = request.headers.authorization
    if (header === undefined || !header.startsWith("Bearer ")) {
      throw new Problem(401, "Unauthorized", "A bearer token is required")
    }
    try {
      const { payload } = await jwtVerify(header.slice(7), secret, { algorithms: ["HS256"] })
      if (typeof payload.sub !== "string" || payload.sub === "") throw new Error("no subject")
      const roles = Array.isArray(payload["roles"]) ? payload["roles"].filter((r) => typeof r === "string") : []
      request.principal = { userId: payload.sub, roles }
    } catch {
      throw new Problem(401, "Unauthorized", "The bearer token is invalid or expired")
    }
  }

  app.setErrorHandler((error: Error & { validation?: unknown; statusCode?: number }, request, reply) => {
    if (error instanceof Problem) return sendProblem(reply, error)
    if (error.validation !== undefined) return sendProblem(reply, new Problem(400, "Invalid request", error.message))
    if (error.statusCode !== undefined && error.statusCode < 500) {
      return sendProblem(reply, new Problem(error.statusCode, "Bad request", error.message))
    }
    request.log.error(error)
    return sendProblem(reply, new Problem(500, "Internal server error", "An unexpected error occurred"))
  })
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, new Problem(404, "Not found", `No route ${request.method} ${request.url}`))
  )

  app.get("/health/live", async () => ({ status: "live" }))
  app.get("/health/ready", async (_request, reply) => {
    try {
      await options.pool.query("SELECT 1")
      return { status: "ready" }
    } catch {
      return sendProblem(reply, new Problem(503, "Not ready", "The database is unreachable"))
    }
  })

  app.post<{ Body: CreateOrderBody }>("/api/v1/orders", {
    onRequest: authenticate,
    schema: {
      body: createOrderBody,
      response: {
        201: {
          type: "object",
          properties: { order_id: { type: "string" }, status: { type: "string" } }
        }
      }
    }
  }, async (request, reply) => {
    const key = request.headers["idempotency-key"]
    if (key !== undefined && (typeof key !== "string" || key.length < 1 || key.length > 255)) {
      throw new Problem(400, "Invalid request", "Idempotency-Key must be 1 to 255 characters")
    }
    const { customer_id, items, shipping_address } = request.body
    const orderId = randomUUID()
    const response = await options.bus.execute<CreateOrderCommand, CommandResponse>(
      new CreateOrderCommand(
        orderId,
        request.principal!.userId,
        {
          customerId: customer_id,
          items: items.map((line) => ({ productId: line.product_id, quantity: line.quantity })),
          shippingAddress: {
            line1: shipping_address.line1,
            ...(shipping_address.line2 === undefined ? {} : { line2: shipping_address.line2 }),
            city: shipping_address.city,
            postalCode: shipping_address.postal_code,
            country: shipping_address.country
          }
        },
        key,
        request.id
      )
    )
    if (response.status === 201) {
      reply.header("location", `/api/v1/orders/${(response.body as { order_id: string }).order_id}`)
    }
    return sendResponse(reply, response)
  })

  app.put<{ Params: { product_id: string }; Body: { available: number } }>("/api/v1/products/:product_id/stock", {
    onRequest: async (request) => {
      await authenticate(request)
      if (!request.principal!.roles.includes("admin")) {
        throw new Problem(403, "Forbidden", "Restocking is for admins")
      }
    },
    schema: { params: productParams, body: stockBody }
  }, async (request, reply) =>
    sendResponse(
      reply,
      await options.bus.execute<RestockProductCommand, CommandResponse>(
        new RestockProductCommand(request.params.product_id, request.body.available)
      )
    ))

  return app
}
