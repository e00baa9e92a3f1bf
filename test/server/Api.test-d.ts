/**
 * The compiler refuses an endpoint whose errors are not all mapped: a
 * handler of the service's API that can fail with an error its endpoint does
 * not declare (with its status and problem schema) does not compile.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { OrderNotFound } from "../../src/orders/Order.js"
import { Api } from "../../src/server/Api.js"

class NotMapped extends Schema.TaggedError<NotMapped>()("NotMapped", {}) {}

describe("the service's API types", () => {
  it("an endpoint's handler may fail only with the errors the endpoint maps", () => {
    HttpApiBuilder.group(Api, "orders", (handlers) =>
      handlers
        // @ts-expect-error NotMapped is none of createOrder's errors
        .handle("createOrder", () => Effect.fail(new NotMapped()))
        .handle("cancelOrder", () => Effect.die("not run"))
        .handle("getOrder", ({ path }) => Effect.fail(new OrderNotFound({ orderId: path.orderId }))))
  })
})
