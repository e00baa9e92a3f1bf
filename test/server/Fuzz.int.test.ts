/**
 * Property-based fuzzing of every operation of the served OpenAPI document,
 * with inputs derived from its schemas (`test/server/fuzz/`): valid values,
 * boundary values (just inside and just outside each limit) and invalid
 * values, sent as the right principal and sometimes the wrong one. For
 * every request: never a 5xx; the response is documented (status, content
 * type, body schema); a request the document accepts is not refused as
 * malformed; one it refuses gets a 4xx; and a refused request (any 4xx)
 * changes no state (stock, events feed, orders).
 *
 * Runs are bounded and seeded: `FUZZ_SEED` changes the base seed, `FUZZ_RUNS`
 * scales the number of runs; a failure prints the seed and the counterexample
 * (with the label of the mutation that made it).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { kind } from "../support/Database.js"
import { type Client, client, type Principal, type Reply, type State, stateReader } from "./fuzz/Harness.js"
import { boundaries, type Hints, invalids, type Mutation, sites, valid } from "./fuzz/JsonSchemaArbitrary.js"
import {
  dereference,
  type Document,
  type Input,
  type Operation,
  operationsOf,
  responseChecker,
  toHttp,
  withMedia
} from "./fuzz/OpenApiOperations.js"
import { expectJson, layer, layerOptions, orderBody, request, TestService, token } from "./Http.js"

const baseSeed = Number(process.env.FUZZ_SEED ?? 20_261_126)
const scale = Number(process.env.FUZZ_RUNS ?? 1)
/** Random runs per property; the boundary family runs each boundary once besides. */
const runs = { valid: 40, boundary: 20, invalid: 50 } as const
type Family = keyof typeof runs

/** The committed document, to name a test per operation before the service runs (the served one is the same). */
const committed = JSON.parse(
  Fs.readFileSync(Path.join(import.meta.dirname, "generated", "openapi.json"), "utf8")
) as Document

/**
 * Who may call each operation. The document says only that an operation
 * needs a bearer token, not which role: this table does, and the first test
 * checks it names every operation.
 */
const rightPrincipal: Record<string, Principal> = {
  "orders.createOrder": "owner",
  "orders.cancelOrder": "owner",
  "orders.getOrder": "owner",
  "products.setStock": "admin",
  "products.getStock": "owner",
  "events.listEvents": "admin",
  "health.live": "anonymous",
  "health.ready": "anonymous",
  "metrics.metrics": "admin"
}

/** The products the fuzzer names: a small set, so that a snapshot of their stock is cheap. */
const stocked = ["fuzz-a", "fuzz-b", "fuzz-c", "fuzz-d"] as const
const unstocked = "fuzz-none"
const products = [...stocked, unstocked]
const initialStock = 1_000_000

/** A principal: mostly the right one, sometimes another role, sometimes none. */
const principalFor = (operation: Operation): fc.Arbitrary<Principal> => {
  const right = rightPrincipal[operation.id]!
  return fc.oneof(
    { weight: 8, arbitrary: fc.constant(right) },
    { weight: 1, arbitrary: fc.constantFrom<Principal>("admin", "owner", "other") },
    { weight: 1, arbitrary: fc.constant<Principal>("anonymous") }
  )
}

/** One generated request: its input, who sends it, and what the document says of it. */
interface Case {
  readonly label: string
  readonly expect: Mutation["expect"]
  readonly input: Input
  readonly principal: Principal
}

interface World {
  readonly document: Document
  readonly operations: ReadonlyMap<string, Operation>
  readonly http: Client
  readonly snapshot: (products: Iterable<string>, orders: Iterable<string>) => Promise<State>
  readonly awaitEvent: (from: number, aggregateId: string, type: string) => Promise<void>
  readonly check: ReturnType<typeof responseChecker>
  readonly sentinels: ReadonlyArray<string>
}

const hintsFor = (sentinels: ReadonlyArray<string>): Hints =>
  withMedia({
    values: {
      "path.orderId": fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...sentinels) }, {
        weight: 1,
        arbitrary: fc.uuid()
      }),
      "path.productId": fc.constantFrom(...products),
      "body.items.*.product_id": fc.constantFrom(...products),
      // A few keys reused across runs: replays and mismatches as well as first uses.
      "header.idempotency-key": fc.oneof(
        { weight: 1, arbitrary: fc.constantFrom("fuzz-key-1", "fuzz-key-2") },
        { weight: 3, arbitrary: fc.stringMatching(/^[\x21-\x7e]{1,64}$/) }
      )
    },
    // One line per product: a business rule the schema cannot say.
    distinct: {
      "body.items": {
        key: (line) => line?.product_id,
        nth: (line, n) => ({ ...line, product_id: `${String(line?.product_id ?? "fuzz")}-${n}` })
      }
    },
    maxGeneratedItems: products.length
  })

interface Cases {
  readonly arbitrary: fc.Arbitrary<Case>
  /** Cases run first, whatever the seed: one per boundary, as the right principal. */
  readonly examples: ReadonlyArray<Case>
}

/** The requests of one family for an operation; `undefined` when the operation has nothing to vary. */
const casesOf = (operation: Operation, family: Family, hints: Hints, seed: number): Cases | undefined => {
  const base = valid(operation.input, hints) as fc.Arbitrary<Input>
  const right = rightPrincipal[operation.id]!
  const toCase = (input: Input, mutation: Mutation, principal: Principal): Case => ({
    label: mutation.label,
    expect: mutation.expect,
    input: mutation.apply(input) as Input,
    principal
  })
  // The parts of a request that can vary on the wire: the body and its members, each parameter.
  const places = sites(operation.input, hints).filter((site) => site.path[0] === "body" || site.path.length === 2)
  const noBody: Array<fc.Arbitrary<Mutation>> = operation.body?.required === true
    ? [fc.constant<Mutation>({
      label: "body: missing (required)",
      expect: "refuse",
      apply: (input) => ({ ...(input as Input), body: undefined })
    })]
    : []
  const bounds = family === "boundary" ? places.flatMap((site) => boundaries(site, hints)) : []
  const mutations = family === "boundary"
    ? bounds.map((mutation) => fc.constant(mutation))
    : family === "invalid"
    ? [...places.flatMap((site) => invalids(site)), ...noBody]
    : []
  if (family !== "valid" && mutations.length === 0) return undefined
  const mutation = family === "valid"
    ? fc.constant<Mutation>({ label: "valid", expect: "accept", apply: (input) => input })
    : fc.noBias(fc.oneof(...mutations))
  const bases = bounds.length === 0 ? [] : fc.sample(base, { seed, numRuns: bounds.length })
  return {
    arbitrary: fc.tuple(base, mutation, principalFor(operation)).map(([input, chosen, who]) =>
      toCase(input, chosen, who)
    ),
    examples: bounds.map((bound, i) => toCase(bases[i]!, bound, right))
  }
}

const isProductId = (value: unknown): value is string =>
  typeof value === "string" && value.length > 0 && value.length <= 100 && !/[\u0000\ud800-\udfff/]/.test(value) &&
  !/^\.+$/.test(value)

const isUuid = (value: unknown): value is string =>
  typeof value === "string" && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value)

/** The products and orders a request names, besides the fixed ones. */
const namedBy = (input: Input) => {
  const lines = (input.body as { items?: unknown } | undefined)?.items
  const named = [
    input.path?.productId,
    ...(Array.isArray(lines) && lines.length <= 5 ? lines.map((line) => line?.product_id) : [])
  ].filter(isProductId)
  return { products: [...products, ...named], orders: isUuid(input.path?.orderId) ? [input.path.orderId] : [] }
}

const problemCode = (reply: Reply) => (reply.body as { code?: unknown } | undefined)?.code

/** Checks one request and its answer; a refusal must leave the state as it was. */
const exercise = async (world: World, operation: Operation, testCase: Case, statuses: Map<number, number>) => {
  const named = namedBy(testCase.input)
  const orders = [...world.sentinels, ...named.orders]
  const before = await world.snapshot(named.products, orders)
  const http = toHttp(operation, testCase.input)
  const reply = await world.http.send(http, testCase.principal)
  statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1)
  const context = `${http.method} ${http.target.slice(0, 300)} as ${testCase.principal} -> ${reply.status} ${
    reply.text.slice(0, 300)
  }`
  expect(reply.status, context).toBeLessThan(500)
  expect(world.check(operation, reply.status, reply.headers.get("content-type"), reply.text), context).toEqual([])
  const right = rightPrincipal[operation.id]!
  const authorized = !operation.secured || testCase.principal === right || testCase.principal === "admin"
  if (testCase.expect === "refuse") {
    expect(reply.status, context).toBeGreaterThanOrEqual(400)
  } else if (testCase.expect === "accept") {
    if (operation.secured && testCase.principal === "anonymous") expect(reply.status, context).toBe(401)
    if (
      operation.secured && right === "admin" && testCase.principal !== "admin" && testCase.principal !== "anonymous"
    ) {
      expect(reply.status, context).toBe(403)
    }
    if (authorized) {
      // The document accepts the request: no refusal of its form, no refusal of the caller.
      expect([400, 401, 403, 413, 415], context).not.toContain(reply.status)
      if (reply.status === 404) expect(problemCode(reply), context).toBe("OrderNotFound")
    }
  }
  const created = reply.body as { order_id?: unknown; status?: unknown } | undefined
  if (
    operation.method === "POST" && reply.status < 300 && reply.headers.get("idempotent-replayed") === null &&
    typeof created?.order_id === "string"
  ) {
    await world.awaitEvent(
      before.feedEnd,
      created.order_id,
      created.status === "created" ? "OrderCreated" : "OrderCancelled"
    )
  }
  if (reply.status >= 400) {
    const after = await world.snapshot(named.products, orders)
    expect(after, `state changed by a refused request: ${context}`).toEqual(before)
  }
}

const familyDescriptions: Record<Family, string> = {
  valid: "valid inputs: documented answers, not refused as malformed",
  boundary: "boundary inputs: inside accepted as well-formed, outside refused",
  invalid: "invalid inputs: refused with a 4xx"
}

const committedOperations = operationsOf(committed)

describe(`fuzzing every operation of the OpenAPI document (${kind}, seed ${baseSeed})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    let world: World | undefined

    it.effect("setup: the served document, stocked products, sentinel orders; every operation has a principal", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const served = yield* request("GET", "/openapi.json")
        expectJson(served, 200)
        const document = served.body as Document
        const operations = operationsOf(yield* Effect.promise(() => dereference(document)))
        expect(operations.map((operation) => operation.id).sort()).toEqual(Object.keys(rightPrincipal).sort())
        expect(operations.map((operation) => operation.id).sort()).toEqual(
          committedOperations.map((operation) => operation.id).sort()
        )
        const tokens = {
          admin: yield* token("fuzz-admin", { admin: true }),
          owner: yield* token("fuzz-alice"),
          other: yield* token("fuzz-bob")
        }
        const http = client(service.baseUrl, tokens)
        for (const product of stocked) {
          const reply = yield* Effect.promise(() =>
            http.send({
              method: "PUT",
              target: `/api/v1/products/${product}/stock`,
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ available: initialStock })
            }, "admin")
          )
          expect(reply.status, reply.text).toBe(200)
        }
        const sentinels: Array<string> = []
        for (const product of stocked) {
          const reply = yield* Effect.promise(() =>
            http.send({
              method: "POST",
              target: "/api/v1/orders",
              headers: { "content-type": "application/json" },
              body: JSON.stringify(orderBody([{ product_id: product, quantity: 1 }]))
            }, "owner")
          )
          expect(reply.status, reply.text).toBe(201)
          sentinels.push((reply.body as { order_id: string }).order_id)
        }
        const reader = stateReader(http)
        // The relay publishes shortly after commit: a first snapshot taken
        // before the sentinels' events are in the feed would see it grow.
        for (const sentinel of sentinels) {
          yield* Effect.promise(() => reader.awaitEvent(0, sentinel, "OrderCreated"))
        }
        world = {
          document,
          operations: new Map(operations.map((operation) => [operation.id, operation])),
          http,
          ...reader,
          check: responseChecker(document),
          sentinels
        }
      }))

    committedOperations.forEach((committedOperation, index) => {
      ;(["valid", "boundary", "invalid"] as const).forEach((family, familyIndex) => {
        const seed = baseSeed + index * 10 + familyIndex
        const numRuns = Math.max(1, Math.round(runs[family] * scale))
        it.effect(
          `${committedOperation.method} ${committedOperation.path}, ${familyDescriptions[family]} (seed ${seed})`,
          () =>
            Effect.gen(function*() {
              expect(world, "the setup test ran first").toBeDefined()
              const w = world!
              const operation = w.operations.get(committedOperation.id)!
              const cases = casesOf(operation, family, hintsFor(w.sentinels), seed)
              if (cases === undefined) {
                // Nothing to bound or break (no parameters, no body): the valid family covers it.
                expect(family).not.toBe("valid")
                return
              }
              const before = yield* Effect.promise(() => w.snapshot(products, w.sentinels))
              const refusedOnly = { count: 0 }
              const statuses = new Map<number, number>()
              const started = Date.now()
              yield* Effect.promise(() =>
                fc.assert(
                  fc.asyncProperty(cases.arbitrary, async (testCase) => {
                    await exercise(w, operation, testCase, statuses)
                    if (testCase.expect === "refuse") refusedOnly.count++
                  }),
                  {
                    seed,
                    examples: cases.examples.map((testCase) => [testCase] as [Case]),
                    // Examples count among the runs.
                    numRuns: cases.examples.length +
                      (operation.parameters.length === 0 && operation.body === undefined ? 5 : numRuns),
                    endOnFailure: true
                  }
                )
              )
              const sent = [...statuses.values()].reduce((a, b) => a + b, 0)
              const byStatus = [...statuses].sort(([a], [b]) => a - b).map(([status, n]) => `${status}:${n}`).join(",")
              console.log(
                `[fuzz] ${committedOperation.method} ${committedOperation.path} ${family}: requests=${sent} ` +
                  `statuses=${byStatus} refusedByDesign=${refusedOnly.count} seed=${seed} durationMs=${
                    Date.now() - started
                  }`
              )
              // A run of invalid requests, all refused, leaves the state as it found it.
              if (family === "invalid") {
                expect(refusedOnly.count).toBeGreaterThan(0)
                const after = yield* Effect.promise(() => w.snapshot(products, w.sentinels))
                expect(after).toEqual(before)
              }
            }),
          120_000
        )
      })
    })

    // -------------------------------------------------------------------------
    // what the fuzzer found
    // -------------------------------------------------------------------------

    const stockPath = (productId: string) => `/api/v1/products/${encodeURIComponent(productId)}/stock`

    const orderToCancel = Effect.gen(function*() {
      const admin = yield* token("fuzz-admin", { admin: true })
      const alice = yield* token("fuzz-alice")
      expectJson(yield* request("PUT", stockPath("fuzz-astral"), { token: admin, json: { available: 1 } }), 200)
      const created = yield* request("POST", "/api/v1/orders", {
        token: alice,
        json: orderBody([{ product_id: "fuzz-astral", quantity: 1 }])
      })
      expectJson(created, 201)
      return { alice, orderId: created.body.order_id as string }
    })

    it.effect("a cancel reason of 250 emoji (500 UTF-16 units) is accepted and stored verbatim", () =>
      Effect.gen(function*() {
        const { alice, orderId } = yield* orderToCancel
        const reason = "\u{1f600}".repeat(250)
        expectJson(yield* request("POST", `/api/v1/orders/${orderId}/cancel`, { token: alice, json: { reason } }), 200)
        const read = yield* request("GET", `/api/v1/orders/${orderId}`, { token: alice })
        expect(read.body.cancel_reason).toBe(reason)
      }))

    // Lengths count code points, as JSON Schema's maxLength does: 300 emoji
    // (300 code points, 600 UTF-16 units) are within the documented 500.
    it.effect(
      "a cancel reason of 300 emoji (300 code points, within the documented maxLength 500) is accepted",
      () =>
        Effect.gen(function*() {
          const { alice, orderId } = yield* orderToCancel
          const reason = "\u{1f600}".repeat(300)
          const reply = yield* request("POST", `/api/v1/orders/${orderId}/cancel`, { token: alice, json: { reason } })
          expectJson(reply, 200)
        })
    )

    // The router takes path parameters long enough for 100 code points,
    // percent-encoded: 51 emoji (102 UTF-16 units) are a product id.
    it.effect(
      "a product id of 51 emoji (51 code points, within the documented maxLength 100) is stocked over its path",
      () =>
        Effect.gen(function*() {
          const admin = yield* token("fuzz-admin", { admin: true })
          const reply = yield* request("PUT", stockPath("\u{1f600}".repeat(51)), {
            token: admin,
            json: { available: 1 }
          })
          expectJson(reply, 200)
        })
    )
  })
})
