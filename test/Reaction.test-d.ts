import { Context, Effect, Schema } from "effect"
import type { Fiber, Scope } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { EventPublisher } from "../src/index.js"
import { Reaction } from "../src/index.js"
import * as Order from "../src/orders/Order.js"

class Shipping extends Context.Tag("Shipping")<Shipping, { readonly ship: (id: string) => Effect.Effect<void> }>() {}
class Mailer
  extends Context.Tag("Mailer")<Mailer, { readonly send: (to: string) => Effect.Effect<void, MailDown> }>()
{}
class MailDown extends Schema.TaggedError<MailDown>()("MailDown", {}) {}

const ship = Reaction.make(Order.OrderCreated, (event) => Effect.flatMap(Shipping, (s) => s.ship(event.orderId)))
const mail = Reaction.make(Order.OrderCancelled, (event) => Effect.flatMap(Mailer, (m) => m.send(event.orderId)))

describe("Reaction types", () => {
  it("runs reactions with different errors and requirements together, requiring all of theirs", () => {
    const started = Reaction.start([ship, mail])
    expectTypeOf(started).toEqualTypeOf<
      Effect.Effect<Fiber.RuntimeFiber<never>, never, EventPublisher.EventPublisher | Scope.Scope | Shipping | Mailer>
    >()
    const redriven = Reaction.redrive("payments", [ship, mail])
    expectTypeOf<Effect.Effect.Context<typeof redriven>>().toEqualTypeOf<Reaction.DeadLetters | Shipping | Mailer>()
  })
})
