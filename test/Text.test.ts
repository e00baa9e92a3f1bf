/**
 * The internal text helpers, against what they stand in for.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import { compareCodePoints } from "../src/internal/text.js"

describe("compareCodePoints", () => {
  it("orders as UTF-8 bytes do (PostgreSQL's COLLATE \"C\"), not as UTF-16 units", () => {
    assert.isBelow(compareCodePoints("\uFF03", "\u{1F4E7}"), 0)
    fc.assert(
      fc.property(
        fc.string({ unit: "grapheme" }),
        fc.string({ unit: "grapheme" }),
        (a, b) => Math.sign(compareCodePoints(a, b)) === Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)))
      ),
      { numRuns: 2000 }
    )
  })
})
