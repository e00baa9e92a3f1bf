/**
 * The process manager's given/when/then: the commands an event sends, the
 * deadlines pending after it, the process's state and end; and a
 * specification that does not hold fails, saying what differed.
 */
import { assert, describe, it } from "@effect/vitest"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schema from "effect/Schema"
import { DomainEvent, ProcessManager } from "../src/index.js"
import { ProcessManagerSpecification } from "../src/testing/index.js"
import {
  CancelOrder,
  CheckoutState,
  ExpirePayment,
  makeBus,
  makeCheckout,
  OrderPlaced,
  PaymentReceived,
  PaymentTimedOut,
  ShipOrder,
  TakePayment
} from "./support/Checkout.js"

const checkout = makeCheckout(makeBus([]))
const spec = ProcessManagerSpecification.make({ manager: checkout })

/** The message of the specification's failure. */
const failure = (self: Effect.Effect<void, ProcessManagerSpecification.SpecificationFailed>) =>
  Effect.map(Effect.exit(self), (exit) => {
    assert.isTrue(Exit.isFailure(exit), "the specification held")
    return Exit.isFailure(exit) ? String((exit.cause as { readonly error?: { message: string } }).error?.message) : ""
  })

describe("ProcessManagerSpecification", () => {
  it.effect("when an order is placed: the payment is sent, the deadline set, the process waits", () =>
    spec.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then({
      commands: [new TakePayment({ orderId: "o-1", amount: 5 })],
      deadlines: [{ name: "payment", after: "30 minutes", command: new ExpirePayment({ orderId: "o-1" }) }],
      state: { status: "awaiting-payment", amount: 5 },
      done: false
    }))

  it.effect("given an order placed, when it is paid: it ships, the deadline is cancelled, the process ends", () =>
    spec.given(new OrderPlaced({ orderId: "o-1", amount: 5 })).when(new PaymentReceived({ orderId: "o-1" })).then({
      commands: [new ShipOrder({ orderId: "o-1" })],
      deadlines: [],
      state: { status: "shipped", amount: 5 },
      done: true
    }))

  it.effect("given an order paid for, a late timeout sends nothing", () =>
    spec.given(new OrderPlaced({ orderId: "o-1", amount: 5 }), new PaymentReceived({ orderId: "o-1" }))
      .when(new PaymentTimedOut({ orderId: "o-1" }))
      .then({ commands: [], state: { status: "shipped", amount: 5 }, done: true }))

  it.effect("given an order placed, when its deadline passes: it is cancelled", () =>
    spec.given(new OrderPlaced({ orderId: "o-2", amount: 1 })).when(new PaymentTimedOut({ orderId: "o-2" })).then({
      commands: [new CancelOrder({ orderId: "o-2" })],
      done: true
    }))

  it.effect("fails, saying what differed: another command, state, end or deadline", () =>
    Effect.gen(function*() {
      const placed = {
        then: (expected: ProcessManagerSpecification.Expected<any, any>) =>
          spec.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then({
            commands: [new TakePayment({ orderId: "o-1", amount: 5 })],
            ...expected
          })
      }
      assert.match(
        yield* failure(placed.then({ commands: [new TakePayment({ orderId: "o-1", amount: 6 })] })),
        /expected commands/
      )
      // Commands left out: none expected.
      assert.match(
        yield* failure(spec.when(new OrderPlaced({ orderId: "o-1", amount: 5 })).then({ done: false })),
        /expected commands \[\]/
      )
      assert.match(yield* failure(placed.then({ state: { status: "new", amount: 5 } })), /in state/)
      assert.match(yield* failure(placed.then({ done: true })), /done/)
      assert.match(yield* failure(placed.then({ deadlines: [] })), /expected deadlines/)
      assert.match(
        yield* failure(placed.then({
          deadlines: [{ name: "payment", after: "29 minutes", command: new ExpirePayment({ orderId: "o-1" }) }]
        })),
        /due at/
      )
      assert.match(
        yield* failure(placed.then({
          deadlines: [{ name: "payment", at: DateTime.unsafeMake(0), command: new ExpirePayment({ orderId: "o-1" }) }]
        })),
        /due at/
      )
      assert.match(
        yield* failure(spec.when(new PaymentReceived({ orderId: "o-3" })).then({ done: false })),
        /not started/
      )
    }))

  it.effect("checks the process of the events of when, not one a given event left", () =>
    Effect.gen(function*() {
      // an event the manager does not take: no process is checked, so the state asked for is not there
      class CouponIssued extends DomainEvent.Class<CouponIssued>()("CouponIssued", { orderId: Schema.String }) {}
      const message = yield* failure(
        spec.given(new OrderPlaced({ orderId: "o-1", amount: 5 })).when(new CouponIssued({ orderId: "o-1" })).then({
          state: { status: "awaiting-payment", amount: 5 }
        })
      )
      assert.include(message, `no event of the scenario belongs to a process of "checkout"`)
    }))

  it.effect("tells deadlines apart by the user their command acts for", () =>
    Effect.gen(function*() {
      const asMallory = ProcessManager.make({
        name: "as mallory",
        bus: makeBus([]),
        state: CheckoutState,
        initialState: { status: "new", amount: 0 },
        events: [OrderPlaced],
        key: (event) => event.orderId
      }).on({
        OrderPlaced: (state, event) => ({
          state: { ...state, status: "awaiting-payment", amount: event.amount },
          schedule: [{
            name: "payment",
            after: "30 minutes",
            command: new ExpirePayment({ orderId: event.orderId, userId: "mallory" })
          }]
        })
      })
      const placed = ProcessManagerSpecification.make({ manager: asMallory }).when(
        new OrderPlaced({ orderId: "o-1", amount: 5 })
      )
      const deadline = (userId: string) => ({
        deadlines: [{ name: "payment", command: new ExpirePayment({ orderId: "o-1", userId }) }]
      })
      yield* placed.then(deadline("mallory"))
      assert.match(yield* failure(placed.then(deadline("alice"))), /expected deadlines .*"userId":"alice"/)
    }))
})
