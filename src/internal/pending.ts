/**
 * The events of the in-memory unit of work open in a fiber: the in-memory
 * outbox holds them there until that unit commits, so that in memory, as in
 * SQL, a dispatch that fails publishes nothing.
 *
 * @internal
 */
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import type * as DomainEvent from "../DomainEvent.js"

/** @internal */
export const currentPending: FiberRef.FiberRef<Array<DomainEvent.Envelope> | undefined> = globalValue(
  Symbol.for("effect-command-bus/internal/pending"),
  () => FiberRef.unsafeMake<Array<DomainEvent.Envelope> | undefined>(undefined)
)
