/**
 * The idempotency contract on the in-memory store, on the `TestClock`.
 */
import * as Layer from "effect/Layer"
import { EventPublisher, Idempotency, Outbox, UnitOfWork } from "../../src/index.js"
import { contract } from "./StoreContract.js"

// The store of `InMemory.layer`, without its background pruning.
const Services = Layer.mergeAll(
  Outbox.layerMemory,
  UnitOfWork.layerNone,
  Layer.effect(Idempotency.IdempotencyStore, Idempotency.makeMemory)
).pipe(Layer.provide(EventPublisher.layerMemory))

contract("idempotency contract (memory)", Services, { clock: "test", undoesFailedCommit: false })
