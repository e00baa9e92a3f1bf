/**
 * The reference's write side as NestJS CQRS does it: commands as classes,
 * one `@CommandHandler` each, the `pg` pool injected by token (tsx's esbuild
 * emits no decorator metadata, so every injection names its token).
 */
import { type DynamicModule, Inject, Module } from "@nestjs/common"
import { CommandHandler, CqrsModule, type ICommandHandler } from "@nestjs/cqrs"
import type { Pool } from "pg"
import {
  claim,
  complete,
  fingerprint,
  type IdempotencyRequest,
  type OrderLine,
  placeOrder,
  release,
  setAvailable,
  type ShippingAddress,
  type StoredResponse
} from "./sql.js"

export const PgPool = Symbol.for("bench/reference/PgPool")

/** An RFC 9457 problem, thrown by handlers and rendered by the HTTP layer. */
export class Problem extends Error {
  constructor(readonly status: number, readonly title: string, readonly detail: string) {
    super(detail)
  }

  get body() {
    return { type: "about:blank", title: this.title, status: this.status, detail: this.detail }
  }
}

/** What a command answers: the response to send, and whether it replays a stored one. */
export interface CommandResponse extends StoredResponse {
  readonly replayed: boolean
}

// -----------------------------------------------------------------------------
// create order
// -----------------------------------------------------------------------------

export interface CreateOrderPayload {
  readonly customerId: string
  readonly items: ReadonlyArray<OrderLine>
  readonly shippingAddress: ShippingAddress
}

export class CreateOrderCommand {
  constructor(
    readonly orderId: string,
    readonly userId: string,
    readonly payload: CreateOrderPayload,
    readonly idempotencyKey: string | undefined,
    readonly correlationId: string
  ) {}
}

@CommandHandler(CreateOrderCommand)
export class CreateOrderHandler implements ICommandHandler<CreateOrderCommand, CommandResponse> {
  constructor(@Inject(PgPool) private readonly pool: Pool) {}

  async execute(command: CreateOrderCommand): Promise<CommandResponse> {
    const seen = new Set<string>()
    for (const line of command.payload.items) {
      if (seen.has(line.productId)) {
        throw new Problem(400, "Command validation failed", `Product ${line.productId} appears more than once`)
      }
      seen.add(line.productId)
    }
    if (command.idempotencyKey === undefined) return this.place(command, undefined)

    const request: IdempotencyRequest = {
      scope: command.userId,
      key: command.idempotencyKey,
      fingerprint: fingerprint(command.payload),
      commandType: "CreateOrder"
    }
    const claimed = await claim(this.pool, request)
    if (claimed._tag !== "Claimed") {
      if (claimed.fingerprint !== request.fingerprint) {
        throw new Problem(422, "Idempotency key reused", "This idempotency key was already used with another payload")
      }
      if (claimed._tag === "InFlight") {
        throw new Problem(409, "Idempotency key in flight", "A request with this idempotency key is still running")
      }
      return { ...claimed.result, replayed: true }
    }
    try {
      const response = await this.place(command, { request, token: claimed.token })
      // A domain failure is an answer too: record it so a retry replays it.
      if (response.status !== 201) {
        await complete(this.pool, request, claimed.token, { status: response.status, body: response.body })
      }
      return response
    } catch (error) {
      if (!(error instanceof Problem && error.status === 409)) {
        await release(this.pool, request, claimed.token).catch(() => {})
      }
      throw error
    }
  }

  private async place(
    command: CreateOrderCommand,
    idempotency: { readonly request: IdempotencyRequest; readonly token: string } | undefined
  ): Promise<CommandResponse> {
    const created: StoredResponse = { status: 201, body: { order_id: command.orderId, status: "created" } }
    const outcome = await placeOrder(this.pool, {
      id: command.orderId,
      customerId: command.payload.customerId,
      userId: command.userId,
      items: command.payload.items,
      shippingAddress: command.payload.shippingAddress,
      correlationId: command.correlationId
    }, idempotency === undefined ? undefined : { ...idempotency, response: created })
    switch (outcome._tag) {
      case "Created":
        return { ...created, replayed: false }
      case "InsufficientInventory":
        return {
          status: 409,
          body: new Problem(
            409,
            "Insufficient inventory",
            `Product ${outcome.productId}: ${outcome.requested} requested, ${outcome.available} available`
          ).body,
          replayed: false
        }
      case "AlreadyExists":
        return {
          status: 409,
          body: new Problem(409, "Order already exists", `Order ${command.orderId} already exists`).body,
          replayed: false
        }
      case "ClaimLost":
        throw new Problem(409, "Idempotency key in flight", "A request with this idempotency key is still running")
    }
  }
}

// -----------------------------------------------------------------------------
// restock
// -----------------------------------------------------------------------------

export class RestockProductCommand {
  constructor(readonly productId: string, readonly available: number) {}
}

@CommandHandler(RestockProductCommand)
export class RestockProductHandler implements ICommandHandler<RestockProductCommand, CommandResponse> {
  constructor(@Inject(PgPool) private readonly pool: Pool) {}

  async execute(command: RestockProductCommand): Promise<CommandResponse> {
    await setAvailable(this.pool, command.productId, command.available)
    return { status: 200, body: { product_id: command.productId, available: command.available }, replayed: false }
  }
}

@Module({})
export class OrdersModule {
  static forRoot(pool: Pool): DynamicModule {
    return {
      module: OrdersModule,
      imports: [CqrsModule.forRoot()],
      providers: [{ provide: PgPool, useValue: pool }, CreateOrderHandler, RestockProductHandler]
    }
  }
}
