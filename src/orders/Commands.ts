/**
 * The order service's commands.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import { Command, CommandError } from "../index.js"
import { InsufficientInventory, maxAvailable } from "./Inventory.js"
import {
  OrderAlreadyCancelled,
  OrderAlreadyExists,
  OrderLine,
  OrderNotFound,
  OrderVersionMismatch,
  ProductId,
  ShippingAddress
} from "./Order.js"

/**
 * Limits of an order, as business rules.
 *
 * @since 0.1.0
 * @category constants
 */
export const limits = { minQuantity: 1, maxQuantity: 1000, minLines: 1, maxLines: 100 } as const

/**
 * Places an order and reserves its stock. The order's id is the command's
 * id, so redelivering the same command cannot create a second order.
 *
 * Rules (all reported at once as `CommandValidationError`): 1 to 100 lines;
 * each quantity 1 to 1000; a product at most once (lines for the same
 * product are refused, not merged: a client that sends two is more likely
 * wrong than meaning their sum).
 *
 * @since 0.1.0
 * @category commands
 */
export class CreateOrder extends Command.Class<CreateOrder>()("CreateOrder", {
  payload: {
    customerId: Schema.UUID,
    items: Schema.Array(OrderLine),
    shippingAddress: ShippingAddress
  },
  success: Schema.Struct({ orderId: Schema.UUID, status: Schema.Literal("created"), version: Schema.Int }),
  failure: Schema.Union(InsufficientInventory, OrderAlreadyExists, CommandError.Forbidden),
  validate: ({ items }) => {
    const issues: Array<Command.ValidationIssue> = []
    if (items.length < limits.minLines || items.length > limits.maxLines) {
      issues.push(
        new Command.ValidationIssue({
          path: ["items"],
          message: `An order has ${limits.minLines} to ${limits.maxLines} lines, not ${items.length}`
        })
      )
    }
    const seen = new Set<string>()
    items.forEach((line, index) => {
      if (line.quantity < limits.minQuantity || line.quantity > limits.maxQuantity) {
        issues.push(
          new Command.ValidationIssue({
            path: ["items", index, "quantity"],
            message: `Quantity must be ${limits.minQuantity} to ${limits.maxQuantity}, not ${line.quantity}`
          })
        )
      }
      if (seen.has(line.productId)) {
        issues.push(
          new Command.ValidationIssue({
            path: ["items", index, "productId"],
            message: `Product ${line.productId} appears more than once; send one line per product`
          })
        )
      }
      seen.add(line.productId)
    })
    return issues
  }
}) {}

/**
 * Cancels an order and releases its stock. Only the order's owner or an
 * admin may; `expectedVersion` makes it conditional (HTTP `If-Match`).
 *
 * @since 0.1.0
 * @category commands
 */
export class CancelOrder extends Command.Class<CancelOrder>()("CancelOrder", {
  payload: {
    orderId: Schema.UUID,
    reason: Command.TextOfLength(1, 500),
    expectedVersion: Schema.optionalWith(Schema.Int, { exact: true })
  },
  success: Schema.Struct({ orderId: Schema.UUID, status: Schema.Literal("cancelled"), version: Schema.Int }),
  failure: Schema.Union(
    OrderNotFound,
    OrderAlreadyCancelled,
    OrderVersionMismatch,
    CommandError.Forbidden,
    CommandError.ConcurrencyConflict
  ),
  retryable: ["ConcurrencyConflict"]
}) {}

/**
 * Sets a product's available stock. Admins only.
 *
 * @since 0.1.0
 * @category commands
 */
export class RestockProduct extends Command.Class<RestockProduct>()("RestockProduct", {
  payload: {
    productId: ProductId,
    available: Schema.Int.pipe(Schema.between(0, maxAvailable))
  },
  success: Schema.Struct({ productId: ProductId, available: Schema.Int }),
  failure: Schema.Never,
  requiredRole: "admin"
}) {}

/**
 * Every command of the order service.
 *
 * @since 0.1.0
 * @category commands
 */
export const OrderCommands = [CreateOrder, CancelOrder, RestockProduct] as const
