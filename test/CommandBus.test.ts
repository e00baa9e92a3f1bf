import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import {
  Command,
  CommandBus,
  CommandError,
  CurrentUser,
  DomainEvent,
  EventPublisher,
  Handler,
  Middleware,
  Outbox
} from "../src/index.js"
import { InMemory } from "../src/testing/index.js"

// -----------------------------------------------------------------------------
// a small domain: accounts
// -----------------------------------------------------------------------------

class AccountClosed extends Schema.TaggedError<AccountClosed>()("AccountClosed", { accountId: Schema.String }) {}

class Deposited extends DomainEvent.Class<Deposited>()("Deposited", {
  accountId: Schema.String,
  amount: Schema.Int
}) {}

class BalanceChecked extends DomainEvent.Class<BalanceChecked>()("BalanceChecked", {
  accountId: Schema.String
}) {}

class Deposit extends Command.Class<Deposit>()("Deposit", {
  payload: { accountId: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ accountId: Schema.String, balance: Schema.Int }),
  failure: AccountClosed
}) {}

class Withdraw extends Command.Class<Withdraw>()("Withdraw", {
  payload: { accountId: Schema.String, amount: Schema.Int },
  success: Schema.Struct({ withdrawn: Schema.Int }),
  failure: AccountClosed
}) {}

const accountId = "acc-1"

const aggregate = (version: number) => ({ aggregateType: "Account", aggregateId: accountId, aggregateVersion: version })

/** A bus whose handlers record, in `ran`, which one ran and what the subscription held meanwhile. */
const makeBus = () => {
  const ran: Array<string> = []
  const bus = CommandBus.make([Deposit, Withdraw], {
    Deposit: (command) =>
      Effect.suspend(() => {
        ran.push(`Deposit ${command.amount}`)
        if (command.accountId === "closed") return Effect.fail(new AccountClosed({ accountId: command.accountId }))
        return Effect.succeed(Handler.result({ accountId: command.accountId, balance: 100 + command.amount }, [
          DomainEvent.draft(aggregate(2), new Deposited({ accountId: command.accountId, amount: command.amount })),
          DomainEvent.draft(aggregate(3), new BalanceChecked({ accountId: command.accountId }))
        ]))
      }),
    Withdraw: (command) =>
      Effect.sync(() => {
        ran.push(`Withdraw ${command.amount}`)
        return Handler.result({ withdrawn: command.amount })
      })
  })
  return { bus, ran }
}

const takeAll = <A>(queue: Queue.Dequeue<A>) => Effect.map(Queue.takeAll(queue), Chunk.toReadonlyArray)

const readOutbox = Effect.flatMap(Outbox.Outbox, (outbox) => outbox.read({ after: 0, limit: 1000 }))

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

describe("CommandBus", () => {
  describe("dispatch", () => {
    it.effect("routes each command to its own handler and returns its value", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const deposited = yield* bus.dispatch(new Deposit({ accountId, amount: 5 }))
        const withdrawn = yield* bus.dispatch(new Withdraw({ accountId, amount: 7 }))
        assert.deepStrictEqual(deposited, { accountId, balance: 105 })
        assert.deepStrictEqual(withdrawn, { withdrawn: 7 })
        assert.deepStrictEqual(ran, ["Deposit 5", "Withdraw 7"])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("fails with the handler's typed error", () =>
      Effect.gen(function*() {
        const { bus } = makeBus()
        const error = yield* Effect.flip(bus.dispatch(new Deposit({ accountId: "closed", amount: 5 })))
        assert.deepStrictEqual(error, new AccountClosed({ accountId: "closed" }))
      }).pipe(Effect.provide(InMemory.layer)))

    // A handler that returns a finished effect takes the bus's shortcut (no
    // flatMap): its value, events and failure must come out the same.
    it.effect("handles a handler that is done already like any other, with or without middleware", () =>
      Effect.gen(function*() {
        const done = CommandBus.make([Deposit, Withdraw], {
          Deposit: (command) =>
            command.accountId === "closed"
              ? Effect.fail(new AccountClosed({ accountId: command.accountId }))
              : Effect.succeed(Handler.result({ accountId: command.accountId, balance: command.amount }, [
                DomainEvent.draft(aggregate(2), new Deposited({ accountId, amount: command.amount }))
              ])),
          Withdraw: (command) => Exit.succeed(Handler.result({ withdrawn: command.amount }))
        })
        const wrapped = done.pipe(CommandBus.withMiddleware(Middleware.make("noop", (self) => self)))
        for (const [i, bus] of [done, wrapped].entries()) {
          assert.deepStrictEqual(yield* bus.dispatch(new Deposit({ accountId, amount: i + 1 })), {
            accountId,
            balance: i + 1
          })
          assert.deepStrictEqual(yield* bus.dispatch(new Withdraw({ accountId, amount: 3 })), { withdrawn: 3 })
          const error = yield* Effect.flip(bus.dispatch(new Deposit({ accountId: "closed", amount: 5 })))
          assert.deepStrictEqual(error, new AccountClosed({ accountId: "closed" }))
        }
        const stored = yield* readOutbox
        assert.deepStrictEqual(stored.map((event) => event.event.payload), [
          { _tag: "Deposited", accountId, amount: 1 },
          { _tag: "Deposited", accountId, amount: 2 }
        ])
      }).pipe(Effect.provide(InMemory.layer)))

    it.scoped("publishes a handler's events once it has succeeded, in order", () =>
      Effect.gen(function*() {
        const publisher = yield* EventPublisher.EventPublisher
        const subscription = yield* publisher.subscribe
        let seenDuringHandler = -1
        const bus = CommandBus.make([Deposit], {
          Deposit: (command) =>
            Effect.map(Queue.size(subscription), (size) => {
              seenDuringHandler = size
              return Handler.result({ accountId: command.accountId, balance: command.amount }, [
                DomainEvent.draft(aggregate(2), new Deposited({ accountId, amount: command.amount })),
                DomainEvent.draft(aggregate(3), new BalanceChecked({ accountId }))
              ])
            })
        })
        yield* bus.dispatch(new Deposit({ accountId, amount: 5 }))
        assert.strictEqual(seenDuringHandler, 0)
        const published = yield* takeAll(subscription)
        assert.deepStrictEqual(published.map((event) => event.type), ["Deposited", "BalanceChecked"])
        assert.deepStrictEqual(published[0]!.payload, { _tag: "Deposited", accountId, amount: 5 })
        assert.deepStrictEqual(published[1]!.payload, { _tag: "BalanceChecked", accountId })
        const stored = yield* readOutbox
        assert.deepStrictEqual(stored.map((event) => event.position), [1, 2])
        assert.deepStrictEqual(stored.map((event) => event.event), published)
      }).pipe(Effect.provide(InMemory.layer)))

    it.scoped("publishes and appends nothing when the handler fails", () =>
      Effect.gen(function*() {
        const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        const { bus } = makeBus()
        const exit = yield* Effect.exit(bus.dispatch(new Deposit({ accountId: "closed", amount: 5 })))
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(yield* Queue.size(subscription), 0)
        assert.strictEqual((yield* readOutbox).length, 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.scoped("publishes nothing for a handler that returns no events", () =>
      Effect.gen(function*() {
        const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        const { bus } = makeBus()
        yield* bus.dispatch(new Withdraw({ accountId, amount: 1 }))
        assert.strictEqual(yield* Queue.size(subscription), 0)
        assert.strictEqual((yield* readOutbox).length, 0)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("turns a handler that throws into a defect of the dispatch, with or without middleware", () =>
      Effect.gen(function*() {
        const boom = new Error("handler bug")
        const bare = CommandBus.make([Withdraw], {
          Withdraw: (): Effect.Effect<Handler.Result<{ readonly withdrawn: number }>> => {
            throw boom
          }
        })
        const wrapped = bare.pipe(CommandBus.withMiddleware(Middleware.make("noop", (self) => self)))
        for (const bus of [bare, wrapped]) {
          const exit = yield* Effect.exit(bus.dispatch(new Withdraw({ accountId, amount: 1 })))
          assert.deepStrictEqual(exit, Exit.die(boom))
        }
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("runs the handler's work again each time a dispatch effect runs", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const dispatch = bus.dispatch(new Withdraw({ accountId, amount: 3 }))
        assert.deepStrictEqual(ran, [])
        yield* dispatch
        yield* dispatch
        assert.deepStrictEqual(ran, ["Withdraw 3", "Withdraw 3"])
      }).pipe(Effect.provide(InMemory.layer)))

    const at = Date.UTC(2024, 4, 1, 12, 0, 0)

    it.scoped("stamps envelopes with ids, aggregate, time and the command's correlation", () =>
      Effect.gen(function*() {
        const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        const { bus } = makeBus()
        const command = new Deposit({
          accountId,
          amount: 5,
          correlationId: "5d0e8f6c-2b8a-4b0e-8c57-3a7d9d2f6e11",
          causationId: "9a3c6f1e-7d2b-4e5a-b8c9-1f0e2d3c4b5a"
        })
        yield* bus.dispatch(command)
        const [first, second] = yield* takeAll(subscription)
        assert.isDefined(first)
        assert.isDefined(second)
        for (const envelope of [first!, second!]) {
          assert.instanceOf(envelope, DomainEvent.Envelope)
          assert.match(envelope.eventId, uuid)
          assert.strictEqual(envelope.aggregateType, "Account")
          assert.strictEqual(envelope.aggregateId, accountId)
          assert.strictEqual(DateTime.toEpochMillis(envelope.occurredAt), at)
          assert.strictEqual(envelope.correlationId, command.correlationId)
          assert.strictEqual(envelope.causationId, command.commandId)
          assert.notStrictEqual(envelope.causationId, command.causationId)
        }
        assert.strictEqual(first!.aggregateVersion, 2)
        assert.strictEqual(second!.aggregateVersion, 3)
        assert.notStrictEqual(first!.eventId, second!.eventId)
        // Envelopes are valid by their own schema (they are built without validation).
        yield* Schema.validate(DomainEvent.Envelope)(first!)
      }).pipe(
        Effect.provide(InMemory.layer),
        // Set before the layer starts its pruner, which would otherwise step through every minute since 1970.
        (self) => Effect.zipRight(TestClock.setTime(at), self)
      ))
  })

  it.layer(InMemory.layer)("dispatchUnknown", (it) => {
    it.effect("fails with UnknownCommand for a tag the bus does not handle", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const error = yield* Effect.flip(bus.dispatchUnknown({ _tag: "Transfer", accountId, amount: 1 }))
        assert.deepStrictEqual(error, new CommandError.UnknownCommand({ commandType: "Transfer" }))
        assert.deepStrictEqual(ran, [])
      }))

    it.effect("fails with UnknownCommand for input without a tag", () =>
      Effect.gen(function*() {
        const { bus } = makeBus()
        for (const input of [{ accountId }, null, "Deposit", 42, { _tag: 1 }]) {
          const error = yield* Effect.flip(bus.dispatchUnknown(input))
          assert.deepStrictEqual(error, new CommandError.UnknownCommand({ commandType: "" }))
        }
      }))

    it.effect("fails with InvalidCommand listing every bad field", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const error = yield* Effect.flip(
          bus.dispatchUnknown({ _tag: "Deposit", amount: 1.5, commandId: "nope" })
        )
        assert.strictEqual(error._tag, "InvalidCommand")
        if (error._tag !== "InvalidCommand") return
        assert.strictEqual(error.commandType, "Deposit")
        const paths = new Set(error.issues.map((issue) => issue.path.join(".")))
        assert.sameMembers([...paths], ["commandId", "accountId", "amount"])
        assert.isTrue(error.issues.every((issue) => issue.message.length > 0))
        for (const issue of error.issues) assert.instanceOf(issue, Command.ValidationIssue)
        assert.deepStrictEqual(ran, [])
      }))

    it.effect("fails with InvalidCommand naming an extra field", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const error = yield* Effect.flip(bus.dispatchUnknown({ _tag: "Deposit", accountId, amount: 1, admin: true }))
        assert.strictEqual(error._tag, "InvalidCommand")
        if (error._tag !== "InvalidCommand") return
        assert.deepStrictEqual(error.issues.map((issue) => issue.path), [["admin"]])
        assert.deepStrictEqual(ran, [])
      }))

    it.effect("decodes and dispatches a valid encoded command, metadata included", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const command = new Deposit({ accountId, amount: 9, userId: "u-1" })
        const wire = JSON.parse(JSON.stringify(yield* Schema.encode(Deposit)(command))) as unknown
        const subscription = yield* Effect.flatMap(EventPublisher.EventPublisher, (publisher) => publisher.subscribe)
        const value = yield* bus.dispatchUnknown(wire)
        assert.deepStrictEqual(value, { accountId, balance: 109 })
        assert.deepStrictEqual(ran, ["Deposit 9"])
        const [first] = yield* takeAll(subscription)
        assert.strictEqual(first?.causationId, command.commandId)
        assert.strictEqual(first?.correlationId, command.correlationId)
      }).pipe(Effect.scoped))

    it.effect("dispatches a minimal input, generating the metadata", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const value = yield* bus.dispatchUnknown({ _tag: "Withdraw", accountId, amount: 3 })
        assert.deepStrictEqual(value, { withdrawn: 3 })
        assert.deepStrictEqual(ran, ["Withdraw 3"])
      }))

    it.effect("runs the bus's middleware for decoded input", () =>
      Effect.gen(function*() {
        const seen: Array<string> = []
        const { bus } = makeBus()
        const wrapped = bus.pipe(
          CommandBus.withMiddleware(Middleware.make("spy", (self, dispatch) => {
            seen.push(dispatch.command._tag)
            return self
          }))
        )
        yield* wrapped.dispatchUnknown({ _tag: "Withdraw", accountId, amount: 3 })
        assert.deepStrictEqual(seen, ["Withdraw"])
      }))
  })

  describe("middleware", () => {
    const recording = (name: string, log: Array<string>) =>
      Middleware.make(name, (self) =>
        Effect.suspend(() => {
          log.push(`${name}>`)
          return Effect.ensuring(self, Effect.sync(() => log.push(`<${name}`)))
        }))

    it.effect("runs the first listed outermost, and a later withMiddleware outside earlier ones", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const bus = CommandBus.make([Withdraw], {
          Withdraw: (command) =>
            Effect.sync(() => {
              log.push("handler")
              return Handler.result({ withdrawn: command.amount })
            })
        }).pipe(
          CommandBus.withMiddleware(recording("A", log), recording("B", log)),
          CommandBus.withMiddleware(recording("C", log))
        )
        assert.deepStrictEqual(bus.middleware.map((m) => m.name), ["C", "A", "B"])
        yield* bus.dispatch(new Withdraw({ accountId, amount: 1 }))
        assert.deepStrictEqual(log, ["C>", "A>", "B>", "handler", "<B", "<A", "<C"])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("sees the dispatch: command, definition, events and attempts", () =>
      Effect.gen(function*() {
        const seen: Array<Middleware.Dispatch> = []
        const { bus } = makeBus()
        const wrapped = bus.pipe(CommandBus.withMiddleware(Middleware.make("spy", (self, dispatch) => {
          seen.push(dispatch)
          return self
        })))
        const command = new Deposit({ accountId, amount: 1 })
        yield* wrapped.dispatch(command)
        assert.strictEqual(seen.length, 1)
        assert.strictEqual(seen[0]!.command, command)
        assert.strictEqual(seen[0]!.definition, Deposit)
        assert.strictEqual(seen[0]!.events, 2)
        assert.strictEqual(seen[0]!.attempts, 1)
        assert.isFalse(seen[0]!.replayed)
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("Middleware.only applies to the listed commands only", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const only = Middleware.only([Deposit], recording("D", log))
        assert.strictEqual(only.name, "D(Deposit)")
        const { bus, ran } = makeBus()
        const wrapped = bus.pipe(CommandBus.withMiddleware(only))
        yield* wrapped.dispatch(new Withdraw({ accountId, amount: 1 }))
        assert.deepStrictEqual(log, [])
        yield* wrapped.dispatch(new Deposit({ accountId, amount: 1 }))
        assert.deepStrictEqual(log, ["D>", "<D"])
        assert.deepStrictEqual(ran, ["Withdraw 1", "Deposit 1"])
      }).pipe(Effect.provide(InMemory.layer)))

    it.effect("a middleware can refuse a dispatch before the handler runs", () =>
      Effect.gen(function*() {
        const { bus, ran } = makeBus()
        const refuse = Middleware.make<CommandError.Forbidden>(
          "refuse",
          (self, dispatch) =>
            dispatch.command._tag === "Deposit" ? Effect.fail(new CommandError.Forbidden({ reason: "no" })) : self
        )
        const wrapped = bus.pipe(CommandBus.withMiddleware(refuse))
        const error = yield* Effect.flip(wrapped.dispatch(new Deposit({ accountId, amount: 1 })))
        assert.deepStrictEqual(error, new CommandError.Forbidden({ reason: "no" }))
        assert.deepStrictEqual(ran, [])
        assert.strictEqual((yield* readOutbox).length, 0)
      }).pipe(Effect.provide(InMemory.layer)))
  })

  it.effect("two classes with one tag, given from untyped code: their dispatch dies, neither runs as the other", () =>
    Effect.gen(function*() {
      class RenewLoan extends Command.Class<RenewLoan>()("Loan", {
        payload: { loanId: Schema.String },
        success: Schema.String,
        failure: Schema.Never
      }) {}
      class WriteOffLoan extends Command.Class<WriteOffLoan>()("Loan", {
        payload: { loanId: Schema.String, amount: Schema.Number },
        success: Schema.String,
        failure: Schema.Never,
        requiredRole: "admin"
      }) {}
      const ran: Array<string> = []
      // Typed code cannot build it (CommandBus.test-d.ts): the cast stands for code that is not.
      const bus = CommandBus.make([RenewLoan, WriteOffLoan] as Array<typeof RenewLoan>, {
        Loan: (command) => Effect.sync(() => ran.push(command.loanId)).pipe(Effect.as(Handler.result("done")))
      })
      const exit = yield* Effect.exit(bus.dispatch(new RenewLoan({ loanId: "l-1" })))
      assert.isTrue(Exit.isFailure(exit) && String(Cause.squash(exit.cause)).includes("share the tag Loan"))
      const unknown = yield* Effect.exit(bus.dispatchUnknown({ _tag: "Loan", loanId: "l-2", amount: 5 }))
      assert.isTrue(Exit.isFailure(unknown) && Cause.isDie(unknown.cause))
      assert.deepStrictEqual(ran, [])
      // The same class listed twice is one command, and runs.
      const twice = CommandBus.make([RenewLoan, RenewLoan] as Array<typeof RenewLoan>, {
        Loan: (command) => Effect.sync(() => ran.push(command.loanId)).pipe(Effect.as(Handler.result("done")))
      })
      assert.strictEqual(yield* twice.dispatch(new RenewLoan({ loanId: "l-3" })), "done")
      assert.deepStrictEqual(ran, ["l-3"])
    }).pipe(Effect.provide(InMemory.layer)))

  it.effect("a subclass of a command dies on its parent's bus, with or without middleware: it would run under the parent's role and rules", () =>
    Effect.gen(function*() {
      class Restock extends Command.Class<Restock>()("Restock", {
        payload: { sku: Schema.String },
        success: Schema.String,
        failure: Schema.Never
      }) {}
      class AdminRestock extends Restock {
        static override readonly requiredRole = "admin"
      }
      const ran: Array<string> = []
      const bare = CommandBus.make([Restock], {
        Restock: (command) => Effect.sync(() => ran.push(command.sku)).pipe(Effect.as(Handler.result("done")))
      })
      for (const bus of [bare, bare.pipe(CommandBus.withMiddleware(Middleware.authorization))]) {
        const exit = yield* Effect.exit(bus.dispatch(new AdminRestock({ sku: "s-1" })))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
        const message = Exit.isFailure(exit) ? String(Cause.squash(exit.cause)) : ""
        assert.include(message, "AdminRestock is not the class this bus has for the tag Restock (Restock)")
        // The parent's own instances run.
        assert.strictEqual(yield* bus.dispatch(new Restock({ sku: "s-2" })), "done")
      }
      assert.deepStrictEqual(ran, ["s-2", "s-2"])
    }).pipe(Effect.provide(Layer.merge(InMemory.layer, Layer.succeed(CurrentUser.CurrentUser, Option.none())))))
})
