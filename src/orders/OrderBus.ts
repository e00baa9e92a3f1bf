/**
 * The order service's bus: every order command with its handler, behind the
 * library's full middleware stack.
 *
 * @since 0.1.0
 */
import { CommandBus } from "../index.js"
import { OrderCommands } from "./Commands.js"
import { cancelOrder, createOrder, restockProduct } from "./Handlers.js"

/**
 * The bus without middleware, for tests of handlers alone.
 *
 * @since 0.1.0
 * @category constructors
 */
export const bare = CommandBus.make(OrderCommands, {
  CreateOrder: createOrder,
  CancelOrder: cancelOrder,
  RestockProduct: restockProduct
})

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: CommandBus.DefaultMiddlewareOptions) =>
  bare.pipe(CommandBus.withMiddleware(...CommandBus.defaultMiddleware(options)))

/**
 * @since 0.1.0
 * @category models
 */
export type OrderBus = ReturnType<typeof make>
