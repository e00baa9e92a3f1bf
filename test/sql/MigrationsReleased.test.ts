/**
 * A released migration never changes: a database that ran it keeps what it
 * made, and the migrator never runs it again, so a change to its text
 * reaches only new databases (as migrations 1 and 4 once did; 8 and 9 mend
 * the databases they missed). Each migration's text is held here by its
 * hash: a change goes in a new migration, and its hash is added here.
 */
import { expect, it } from "@effect/vitest"
import { createHash } from "node:crypto"
import * as Orders from "../../src/orders/Migrations.js"
import { SqlMigrations } from "../../src/sql/index.js"

const released = {
  library: {
    "1_outbox": "b26a6d3bd0883747",
    "2_idempotency_keys": "36a2e2d5d7902515",
    "3_reaction_checkpoints": "608f1bda79cf551e",
    "4_reaction_dead_letters": "29d697e4da61ac7b",
    "5_scheduled_commands": "90a13181c0046299",
    "6_scheduled_commands_retries": "7cfc966d0e904d12",
    "7_outbox_recorded_at": "f6051ab622c37d97",
    "8_reaction_dead_letters_aggregate": "f09a4c4bb9b149c1",
    "9_outbox_notify_schema": "78de680a56159d2f",
    "10_idempotency_claim_lost": "1a58623ff8c06286",
    "11_reaction_checkpoints_owner": "553e0e5af2e60ca6",
    "12_scheduled_commands_key": "5d70a6a7415d4a23",
    "13_event_streams": "df5cefebea55592e",
    "14_processes": "715551d445fec920",
    "15_processes_applying": "68551adf143ba904",
    "16_event_snapshots": "2c967e0dd986aec2",
    "17_process_applied": "6f87cf3b11b7eb75",
    "18_processes_done_index": "4ec352565af842f0",
    "19_scheduled_commands_claimed_lease": "123785234d6584a0"
  },
  orders: {
    "1_orders": "f5002859436b4fc3",
    "2_inventory": "c1b7947d402db71a"
  }
}

const hashes = (sources: Readonly<Record<string, ReadonlyArray<string>>>) =>
  Object.fromEntries(
    Object.entries(sources).map((
      [id, statements]
    ) => [id, createHash("sha256").update(JSON.stringify(statements)).digest("hex").slice(0, 16)])
  )

it("every released migration's text is as released, and new ones come after them", () => {
  for (const [set, sources] of [["library", SqlMigrations.sources], ["orders", Orders.sources]] as const) {
    const current = hashes(sources)
    // The released ones, unchanged, and in the migrator's order (by number).
    expect(Object.fromEntries(Object.keys(released[set]).map((id) => [id, current[id]])), set).toEqual(released[set])
    const numbers = Object.keys(current).map((id) => Number(id.split("_")[0]))
    expect(numbers, set).toEqual(numbers.map((_, i) => i + 1))
  }
})
