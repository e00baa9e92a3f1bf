import { Effect, Schema } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type { Outbox } from "../src/index.js"
import { Command, CommandBus, CommandError, Handler, Idempotency, Middleware } from "../src/index.js"
import { CancelOrder, CreateOrder, OrderCommands, RestockProduct } from "../src/orders/Commands.js"
import { cancelOrder, createOrder, restockProduct } from "../src/orders/Handlers.js"
import type { InsufficientInventory, Inventory } from "../src/orders/Inventory.js"
import type { OrderAlreadyExists } from "../src/orders/Order.js"
import * as OrderBus from "../src/orders/OrderBus.js"
import type { OrderRepository } from "../src/orders/OrderRepository.js"

class NotHandled extends Command.Class<NotHandled>()("NotHandled", {
  payload: { value: Schema.String },
  success: Schema.Void,
  failure: Schema.Never
}) {}

const createOrderCommand = new CreateOrder({
  customerId: "6f1c3c0e-4a59-4a57-9d3e-5d1c7d3f2b10",
  items: [{ productId: "p-1", quantity: 1 }],
  shippingAddress: { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" }
})

describe("CommandBus types", () => {
  it("dispatch knows each command's success, errors and requirements", () => {
    const effect = OrderBus.bare.dispatch(createOrderCommand)
    expectTypeOf(effect).toEqualTypeOf<
      Effect.Effect<
        { readonly orderId: string; readonly status: "created"; readonly version: number },
        InsufficientInventory | OrderAlreadyExists | CommandError.Forbidden | CommandError.StoreUnavailable,
        Inventory | OrderRepository | Outbox.Outbox
      >
    >()
  })

  it("middleware adds exactly its errors and requirements", () => {
    const bus = OrderBus.bare.pipe(CommandBus.withMiddleware(Middleware.timeout("1 second"), Middleware.validation))
    type E = Effect.Effect.Error<ReturnType<typeof bus.dispatch<RestockProduct>>>
    expectTypeOf<E>().toEqualTypeOf<
      CommandError.CommandTimeout | CommandError.CommandValidationError | CommandError.StoreUnavailable
    >()
    const withStore = bus.pipe(CommandBus.withMiddleware(Idempotency.middleware()))
    type R = Effect.Effect.Context<ReturnType<typeof withStore.dispatch<RestockProduct>>>
    expectTypeOf<R>().toEqualTypeOf<Inventory | Outbox.Outbox | Idempotency.IdempotencyStore>()
  })

  it("dispatching a command without a handler does not compile", () => {
    // @ts-expect-error NotHandled is not a command of this bus
    OrderBus.bare.dispatch(new NotHandled({ value: "x" }))
  })

  it("a bus that misses a handler for a declared command does not compile", () => {
    // @ts-expect-error RestockProduct has no handler
    CommandBus.make(OrderCommands, { CreateOrder: createOrder, CancelOrder: cancelOrder })
  })

  it("a handler for an undeclared command does not compile", () => {
    CommandBus.make([CreateOrder, CancelOrder, RestockProduct], {
      CreateOrder: createOrder,
      CancelOrder: cancelOrder,
      RestockProduct: restockProduct,
      // @ts-expect-error NotHandled is not declared
      NotHandled: () => Effect.succeed(Handler.result(undefined))
    })
  })

  it("a handler failing with an undeclared error does not compile", () => {
    CommandBus.make([RestockProduct], {
      // @ts-expect-error RestockProduct declares no failure
      RestockProduct: (command) => Effect.fail(new CommandError.Forbidden({ reason: command.productId }))
    })
  })

  it("a handler returning the wrong success type does not compile", () => {
    CommandBus.make([RestockProduct], {
      // @ts-expect-error the success is { productId, available }
      RestockProduct: (command) => Effect.succeed(Handler.result({ productId: command.productId }))
    })
  })

  it("handlers in the record are typed by their command", () => {
    CommandBus.make([RestockProduct], {
      RestockProduct: (command) => {
        expectTypeOf(command).toEqualTypeOf<RestockProduct>()
        return Effect.succeed(Handler.result({ productId: command.productId, available: command.available }))
      }
    })
  })

  it("dispatchUnknown adds UnknownCommand and InvalidCommand", () => {
    type E = Effect.Effect.Error<ReturnType<typeof OrderBus.bare.dispatchUnknown>>
    expectTypeOf<CommandError.UnknownCommand>().toMatchTypeOf<E>()
    expectTypeOf<CommandError.InvalidCommand>().toMatchTypeOf<E>()
  })

  it("retryable names only the command's own error tags", () => {
    Command.Class<Bad>()("Bad", {
      payload: {},
      success: Schema.Void,
      failure: CommandError.ConcurrencyConflict,
      // @ts-expect-error NotAnError is not a tag of the failure schema
      retryable: ["NotAnError"]
    })
    class Bad {}
  })

  it("a command with no payload fields goes on a bus like any other", () => {
    class CloseBooks extends Command.Class<CloseBooks>()("CloseBooks", {
      payload: {},
      success: Schema.Void,
      failure: Schema.Never
    }) {}
    const bus = CommandBus.make([CloseBooks], { CloseBooks: () => Effect.succeed(Handler.result(undefined)) })
    const dispatched = bus.dispatch(new CloseBooks({}))
    expectTypeOf<Effect.Effect.Success<typeof dispatched>>().toEqualTypeOf<void>()
    // The outbox's, as of every dispatch (its events may be appended to a database).
    expectTypeOf<Effect.Effect.Error<typeof dispatched>>().toEqualTypeOf<CommandError.StoreUnavailable>()
    expectTypeOf(new CloseBooks({}).commandId).toEqualTypeOf<string>()
  })

  it("two command classes with one tag do not make a bus", () => {
    class RenewLoan extends Command.Class<RenewLoan>()("Loan", {
      payload: { loanId: Schema.String },
      success: Schema.Void,
      failure: Schema.Never
    }) {}
    class WriteOffLoan extends Command.Class<WriteOffLoan>()("Loan", {
      payload: { loanId: Schema.String, amount: Schema.Number },
      success: Schema.Void,
      failure: Schema.Never
    }) {}
    expectTypeOf<CommandBus.SharedTag<[typeof RenewLoan, typeof WriteOffLoan]>>().toEqualTypeOf<"Loan">()
    // @ts-expect-error two classes share the tag "Loan"
    CommandBus.make([RenewLoan, WriteOffLoan], { Loan: () => Effect.succeed(Handler.result(undefined)) })
    // The same class twice (lists put together) is one command, and classes
    // typed only as Command.AnyClass are not judged.
    const shared = [RenewLoan] as const
    CommandBus.make([...shared, ...shared, RestockProduct], {
      Loan: () => Effect.succeed(Handler.result(undefined)),
      RestockProduct: (command) =>
        Effect.succeed(Handler.result({ productId: command.productId, available: command.available }))
    })
    expectTypeOf<CommandBus.SharedTag<[typeof RenewLoan, typeof RenewLoan]>>().toEqualTypeOf<never>()
    expectTypeOf<CommandBus.SharedTag<readonly [Command.AnyClass, Command.AnyClass]>>().toEqualTypeOf<never>()
    // A list kept in an array (not a tuple) is judged by its element type.
    const loanCommands = [RenewLoan, WriteOffLoan]
    expectTypeOf<CommandBus.SharedTag<typeof loanCommands>>().toEqualTypeOf<"Loan">()
    // @ts-expect-error two classes share the tag "Loan"
    CommandBus.make(loanCommands, { Loan: () => Effect.succeed(Handler.result(undefined)) })
    const distinct: Array<typeof RenewLoan | typeof RestockProduct> = [RenewLoan, RestockProduct]
    CommandBus.make(distinct, {
      Loan: () => Effect.succeed(Handler.result(undefined)),
      RestockProduct: (command) =>
        Effect.succeed(Handler.result({ productId: command.productId, available: command.available }))
    })
  })

  it("a list of classes typed only Command.AnyClass makes no bus: it could not ask for their handlers", () => {
    const untyped: ReadonlyArray<Command.AnyClass> = [RestockProduct]
    // @ts-expect-error the classes' tags are any string
    CommandBus.make(untyped, {})
    // @ts-expect-error one of them untyped is enough
    CommandBus.make([RestockProduct, RestockProduct as Command.AnyClass], { RestockProduct: restockProduct })
  })

  it("a payload cannot take a metadata field's name", () => {
    Command.Class<Clash>()("Clash", {
      // @ts-expect-error userId is metadata
      payload: { userId: Schema.Number },
      success: Schema.Void,
      failure: Schema.Never
    })
    class Clash {}
  })

  it("the full order bus keeps CancelOrder's errors", () => {
    const bus = OrderBus.make()
    type E = Effect.Effect.Error<ReturnType<typeof bus.dispatch<CancelOrder>>>
    expectTypeOf<CommandError.ConcurrencyConflict>().toMatchTypeOf<E>()
    expectTypeOf<Idempotency.IdempotencyKeyMismatch>().toMatchTypeOf<E>()
  })

  it("a handler record annotated with HandlersFor keeps its requirements, which dispatch requires", () => {
    const handlers: CommandBus.HandlersFor<CreateOrder | CancelOrder | RestockProduct, Inventory | OrderRepository> = {
      CreateOrder: createOrder,
      CancelOrder: cancelOrder,
      RestockProduct: restockProduct
    }
    const bus = CommandBus.make(OrderCommands, handlers)
    type R = Effect.Effect.Context<ReturnType<typeof bus.dispatch<CreateOrder>>>
    expectTypeOf<R>().not.toBeAny()
    expectTypeOf<R>().toEqualTypeOf<Inventory | OrderRepository | Outbox.Outbox>()
    // Without the services named, a handler that requires one does not fit.
    // @ts-expect-error createOrder requires Inventory and OrderRepository
    const _unnamed: CommandBus.HandlersFor<CreateOrder> = { CreateOrder: createOrder }
  })
})
