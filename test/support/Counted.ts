/** One event type, for the tests of followers: its envelopes count up. */
import * as DateTime from "effect/DateTime"
import * as Schema from "effect/Schema"
import { DomainEvent } from "../../src/index.js"

export class Counted extends DomainEvent.Class<Counted>()("Counted", { count: Schema.Int }) {}

/** A stored `Counted`, of an aggregate of its own. */
export const envelope = (count: number) =>
  new DomainEvent.Envelope({
    eventId: crypto.randomUUID(),
    type: "Counted",
    aggregateType: "Counter",
    aggregateId: `c-${count}`,
    aggregateVersion: 1,
    occurredAt: DateTime.unsafeNow(),
    correlationId: crypto.randomUUID(),
    causationId: crypto.randomUUID(),
    payload: { _tag: "Counted", count }
  })
