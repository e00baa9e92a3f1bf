/**
 * The `Order` aggregate: its state, the events it raises, and the rules of
 * creating and cancelling one.
 *
 * @since 0.1.0
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import type * as DateTime from "effect/DateTime"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"
import { Command, DomainEvent } from "../index.js"

/**
 * @since 0.1.0
 * @category schemas
 */
export const ProductId = Command.TextOfLength(1, 100).pipe(
  Schema.annotations({ identifier: "ProductId", description: "A product's SKU" })
)

/**
 * One line of an order. The quantity rules (1 to 1000) are business rules,
 * checked by `CreateOrder`'s validation, so every problem is reported at once.
 *
 * @since 0.1.0
 * @category schemas
 */
export const OrderLine = Schema.Struct({
  productId: ProductId,
  quantity: Schema.Int
})

/**
 * @since 0.1.0
 * @category models
 */
export type OrderLine = typeof OrderLine.Type

const AddressText = (max: number) => Command.TextOfLength(1, max)

// The 249 codes ISO 3166-1 assigns (2024): "XX" is two capital letters, not a country.
const assignedCountries: ReadonlySet<string> = new Set(
  `
  AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
  BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
  EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
  HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
  LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
  NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
  SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
  TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
  `.trim().split(/\s+/)
)

/**
 * An ISO 3166-1 alpha-2 country code that ISO assigns, in capitals.
 *
 * @since 0.1.0
 * @category schemas
 */
export const CountryCode = Schema.String.pipe(
  Schema.pattern(/^[A-Z]{2}$/, { message: () => "Expected two capital letters (ISO 3166-1 alpha-2)" }),
  Schema.filter((code) => assignedCountries.has(code), {
    message: (issue) => `${JSON.stringify(issue.actual)} is not an assigned ISO 3166-1 alpha-2 country code`,
    jsonSchema: { enum: [...assignedCountries] }
  }),
  Schema.annotations({ identifier: "CountryCode", description: "ISO 3166-1 alpha-2 country code" })
)

/**
 * @since 0.1.0
 * @category schemas
 */
export const ShippingAddress = Schema.Struct({
  line1: AddressText(200),
  line2: Schema.optionalWith(AddressText(200), { exact: true }),
  city: AddressText(100),
  postalCode: AddressText(20),
  country: CountryCode
})

/**
 * @since 0.1.0
 * @category models
 */
export type ShippingAddress = typeof ShippingAddress.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const OrderStatus = Schema.Literal("created", "cancelled")

/**
 * @since 0.1.0
 * @category models
 */
export class Order extends Schema.Class<Order>("Order")({
  id: Schema.UUID,
  customerId: Schema.UUID,
  userId: Schema.String,
  status: OrderStatus,
  version: Schema.Int,
  items: Schema.Array(OrderLine),
  shippingAddress: ShippingAddress,
  createdAt: Schema.DateTimeUtc,
  updatedAt: Schema.DateTimeUtc,
  cancelReason: Schema.optionalWith(Schema.String, { exact: true })
}) {}

/**
 * The aggregate type name events and conflicts carry.
 *
 * @since 0.1.0
 * @category constants
 */
export const aggregateType = "Order"

// -----------------------------------------------------------------------------
// events
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category events
 */
export class OrderCreated extends DomainEvent.Class<OrderCreated>()("OrderCreated", {
  orderId: Schema.UUID,
  customerId: Schema.UUID,
  userId: Schema.String,
  items: Schema.Array(OrderLine),
  shippingAddress: ShippingAddress
}) {}

/**
 * @since 0.1.0
 * @category events
 */
export class OrderCancelled extends DomainEvent.Class<OrderCancelled>()("OrderCancelled", {
  orderId: Schema.UUID,
  reason: Schema.String,
  releasedItems: Schema.Array(OrderLine)
}) {}

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category errors
 */
export class OrderNotFound extends Schema.TaggedError<OrderNotFound>()(
  "OrderNotFound",
  { orderId: Schema.String },
  HttpApiSchema.annotations({ status: 404, title: "Order not found" })
) {
  override get message() {
    return `Order ${this.orderId} does not exist`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class OrderAlreadyExists extends Schema.TaggedError<OrderAlreadyExists>()(
  "OrderAlreadyExists",
  { orderId: Schema.String },
  HttpApiSchema.annotations({ status: 409, title: "Order already exists" })
) {
  override get message() {
    return `Order ${this.orderId} already exists`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class OrderAlreadyCancelled extends Schema.TaggedError<OrderAlreadyCancelled>()(
  "OrderAlreadyCancelled",
  { orderId: Schema.String },
  HttpApiSchema.annotations({ status: 409, title: "Order already cancelled" })
) {
  override get message() {
    return `Order ${this.orderId} is already cancelled`
  }
}

/**
 * A conditional change (HTTP `If-Match`) named a version the order no
 * longer has.
 *
 * @since 0.1.0
 * @category errors
 */
export class OrderVersionMismatch extends Schema.TaggedError<OrderVersionMismatch>()(
  "OrderVersionMismatch",
  { orderId: Schema.String, expectedVersion: Schema.Int, actualVersion: Schema.Int },
  HttpApiSchema.annotations({ status: 412, title: "Precondition failed" })
) {
  override get message() {
    return `Order ${this.orderId} is at version ${this.actualVersion}, not ${this.expectedVersion}`
  }
}

// -----------------------------------------------------------------------------
// behaviour
// -----------------------------------------------------------------------------

/**
 * An aggregate change: the new state and the events that describe it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Change {
  readonly order: Order
  readonly events: ReadonlyArray<DomainEvent.Draft>
}

const draft = (order: Order, event: DomainEvent.Any): DomainEvent.Draft =>
  DomainEvent.draft({ aggregateType, aggregateId: order.id, aggregateVersion: order.version }, event)

/**
 * Creates an order at version 1.
 *
 * @since 0.1.0
 * @category behaviour
 */
export const create = (input: {
  readonly id: string
  readonly customerId: string
  readonly userId: string
  readonly items: ReadonlyArray<OrderLine>
  readonly shippingAddress: ShippingAddress
  readonly now: DateTime.Utc
}): Change => {
  const order = new Order({
    // Ids in their canonical (lowercase) form, as the orders table's uuid
    // columns give them back: the order, its events and every store agree
    // whatever case the command spelled them in.
    id: input.id.toLowerCase(),
    customerId: input.customerId.toLowerCase(),
    userId: input.userId,
    status: "created",
    version: 1,
    items: input.items,
    shippingAddress: input.shippingAddress,
    createdAt: input.now,
    updatedAt: input.now
  }, { disableValidation: true })
  return {
    order,
    events: [draft(
      order,
      new OrderCreated({
        orderId: order.id,
        customerId: order.customerId,
        userId: order.userId,
        items: order.items,
        shippingAddress: order.shippingAddress
      }, { disableValidation: true })
    )]
  }
}

/**
 * Cancels an order, once.
 *
 * @since 0.1.0
 * @category behaviour
 */
export const cancel = (
  order: Order,
  reason: string,
  now: DateTime.Utc
): Either.Either<Change, OrderAlreadyCancelled> => {
  if (order.status === "cancelled") return Either.left(new OrderAlreadyCancelled({ orderId: order.id }))
  const cancelled = new Order({
    ...order,
    status: "cancelled",
    version: order.version + 1,
    updatedAt: now,
    cancelReason: reason
  }, { disableValidation: true })
  return Either.right({
    order: cancelled,
    events: [draft(
      cancelled,
      new OrderCancelled({ orderId: order.id, reason, releasedItems: order.items }, { disableValidation: true })
    )]
  })
}

/**
 * Rebuilds state from events, for tests that start from a history.
 *
 * @since 0.1.0
 * @category behaviour
 */
export const evolve = (
  state: Order | undefined,
  event: OrderCreated | OrderCancelled,
  at: DateTime.Utc
): Order | undefined => {
  switch (event._tag) {
    case "OrderCreated":
      return create({
        id: event.orderId,
        customerId: event.customerId,
        userId: event.userId,
        items: event.items,
        shippingAddress: event.shippingAddress,
        now: at
      }).order
    case "OrderCancelled":
      return state === undefined ? undefined : Either.match(cancel(state, event.reason, at), {
        onLeft: () => state,
        onRight: (change) => change.order
      })
  }
}
