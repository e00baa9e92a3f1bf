/**
 * The OpenAPI document: valid OpenAPI 3.1, every path of the contract with
 * its problem+json errors, the committed copy and the client types generated
 * from it current, and that client used, with its types, against the
 * running service.
 */
import SwaggerParser from "@apidevtools/swagger-parser"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import createClient from "openapi-fetch"
import { kind } from "../support/Database.js"
import { documentFile, documentText, typesFile, typesSource } from "./ClientGeneration.js"
import type { components, paths } from "./generated/openapi.generated.js"
import {
  address,
  customerId,
  expectJson,
  expectProblem,
  layer,
  layerOptions,
  request,
  setStock,
  TestService,
  unknownOrderId,
  users
} from "./Http.js"

type Spec = Record<string, any>

/** The operations of the contract, and the statuses each must document besides 400, 413, 415 and 500. */
const operations = [
  { method: "post", path: "/api/v1/orders", statuses: [201, 401, 403, 409, 422], headers: ["idempotency-key"] },
  {
    method: "post",
    path: "/api/v1/orders/{orderId}/cancel",
    statuses: [200, 401, 403, 404, 409, 412, 422],
    headers: ["idempotency-key", "if-match"]
  },
  { method: "get", path: "/api/v1/orders/{orderId}", statuses: [200, 401, 404] },
  {
    method: "put",
    path: "/api/v1/products/{productId}/stock",
    statuses: [200, 401, 403, 422],
    headers: ["idempotency-key"]
  },
  { method: "get", path: "/api/v1/products/{productId}/stock", statuses: [200, 401] },
  { method: "get", path: "/api/v1/events", statuses: [200, 401, 403], query: ["after", "limit"] },
  { method: "get", path: "/health/live", statuses: [200] },
  { method: "get", path: "/health/ready", statuses: [200, 503] },
  { method: "get", path: "/metrics", statuses: [200, 401, 403] }
] as const

const resolve = (spec: Spec, schema: Spec): Spec =>
  typeof schema.$ref === "string"
    ? resolve(spec, schema.$ref.replace("#/", "").split("/").reduce((node: Spec, key: string) => node[key], spec))
    : schema

/** The object schemas a response schema may be (the members of an `anyOf`, each resolved). */
const alternatives = (spec: Spec, schema: Spec): Array<Spec> => {
  const resolved = resolve(spec, schema)
  return Array.isArray(resolved.anyOf)
    ? resolved.anyOf.flatMap((member: Spec) => alternatives(spec, member))
    : [resolved]
}

const served = Effect.map(request("GET", "/openapi.json"), (reply) => {
  expectJson(reply, 200)
  return reply.body as Spec
})

describe(`OpenAPI document and typed client (${kind})`, () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("/openapi.json is an OpenAPI 3.1 document that swagger-parser validates", () =>
      Effect.gen(function*() {
        const spec = yield* served
        expect(spec.openapi).toMatch(/^3\.1\.\d+$/)
        const validated = yield* Effect.promise(() => SwaggerParser.validate(structuredClone(spec) as any))
        expect(validated.info.title).toBe("Orders service (effect-command-bus reference)")
        expect(spec.components.securitySchemes.bearer).toEqual({ type: "http", scheme: "bearer" })
      }))

    it.effect("documents every path of the contract, with its parameters and security", () =>
      Effect.gen(function*() {
        const spec = yield* served
        const documented = Object.entries(spec.paths as Spec).flatMap(([path, item]) =>
          Object.keys(item).map((method) => `${method} ${path}`)
        )
        expect(documented.sort()).toEqual(operations.map(({ method, path }) => `${method} ${path}`).sort())
        for (const operation of operations) {
          const documentedOperation = spec.paths[operation.path][operation.method]
          expect(documentedOperation.operationId, operation.path).toEqual(expect.any(String))
          const parameters = (documentedOperation.parameters ?? []) as Array<Spec>
          for (const name of operation.path.match(/(?<=\{)\w+(?=\})/g) ?? []) {
            expect(parameters, `${operation.path} documents ${name}`).toContainEqual(
              expect.objectContaining({ name, in: "path", required: true })
            )
          }
          for (const name of "headers" in operation ? operation.headers : []) {
            expect(parameters).toContainEqual(expect.objectContaining({ name, in: "header", required: false }))
          }
          for (const name of "query" in operation ? operation.query : []) {
            expect(parameters).toContainEqual(expect.objectContaining({ name, in: "query", required: false }))
          }
          const secured = operation.path.startsWith("/api/") || operation.path === "/metrics"
          expect(documentedOperation.security ?? [], operation.path).toEqual(secured ? [{ bearer: [] }] : [])
        }
        const body = (path: string, method: string) =>
          resolve(spec, spec.paths[path][method].requestBody.content["application/json"].schema)
        expect(body("/api/v1/orders", "post").required.sort()).toEqual(["customer_id", "items", "shipping_address"])
        expect(body("/api/v1/orders", "post").additionalProperties).toBe(false)
        expect(body("/api/v1/orders/{orderId}/cancel", "post").properties.reason).toMatchObject({
          minLength: 1,
          maxLength: 500
        })
        expect(body("/api/v1/products/{productId}/stock", "put").required).toEqual(["available"])
      }))

    it.effect("documents the error responses of every operation as problems (type, title, status, detail, code)", () =>
      Effect.gen(function*() {
        const spec = yield* served
        for (const operation of operations) {
          const responses = spec.paths[operation.path][operation.method].responses as Spec
          const statuses = Object.keys(responses).map(Number)
          for (const status of [...operation.statuses, 400, 413, 415, 500]) {
            expect(statuses, `${operation.method} ${operation.path} documents ${status}`).toContain(status)
          }
          for (const status of statuses.filter((status) => status >= 400)) {
            const content = responses[status].content as Spec
            const schemas = Object.values(content).flatMap((media: Spec) => alternatives(spec, media.schema))
            expect(schemas.length, `${operation.path} ${status}`).toBeGreaterThan(0)
            for (const schema of schemas) {
              expect(schema.type).toBe("object")
              expect(schema.required).toEqual(expect.arrayContaining(["type", "title", "status", "detail", "code"]))
            }
          }
        }
        const codesOf = (path: string, method: string, status: number) =>
          Object.values(spec.paths[path][method].responses[status].content as Spec).flatMap((media: Spec) =>
            alternatives(spec, media.schema).map((schema) => schema.description)
          )
        expect(codesOf("/api/v1/orders", "post", 409)).toEqual(
          expect.arrayContaining(["Insufficient inventory", "Idempotency key in flight"])
        )
        expect(codesOf("/api/v1/orders/{orderId}/cancel", "post", 412)).toEqual(["Precondition failed"])
        expect(codesOf("/api/v1/orders", "post", 422)).toEqual(["Idempotency key reused"])
        expect(codesOf("/api/v1/events", "get", 401)).toEqual(["Unauthorized"])
      }))

    // Where several errors share a status, @effect/platform's generator gives
    // their union `application/json`; src/server/Api.ts corrects the document.
    it.effect("documents every error response under application/problem+json, as the service sends them", () =>
      Effect.gen(function*() {
        const spec = yield* served
        for (const operation of operations) {
          const responses = spec.paths[operation.path][operation.method].responses as Spec
          for (const [status, response] of Object.entries(responses)) {
            if (Number(status) < 400) continue
            expect(Object.keys(response.content), `${operation.method} ${operation.path} ${status}`).toEqual([
              "application/problem+json"
            ])
          }
        }
      }))

    it.effect("documents the response headers the service sets, and the service sets them", () =>
      Effect.gen(function*() {
        const spec = yield* served
        const documented = (path: string, method: string, status: number) =>
          Object.keys(spec.paths[path][method].responses[String(status)].headers ?? {}).map((name) =>
            name.toLowerCase()
          )
        const { admin, alice } = yield* users
        yield* setStock("headers-1", 5, admin)
        const body = {
          customer_id: customerId,
          items: [{ product_id: "headers-1", quantity: 1 }],
          shipping_address: address
        }
        const send = () =>
          request("POST", "/api/v1/orders", { token: alice, json: body, headers: { "idempotency-key": "headers-key" } })
        const checked = (
          reply: { readonly status: number; readonly headers: Headers },
          path: string,
          method: string
        ) => {
          const names = documented(path, method, reply.status)
          for (const name of names) {
            // Only a replay says Idempotent-Replayed; every other documented header is on every answer.
            if (name !== "idempotent-replayed") {
              expect(reply.headers.get(name), `${method} ${path} ${reply.status} ${name}`).not.toBeNull()
            }
          }
          return names
        }
        const created = yield* send()
        expect(checked(created, "/api/v1/orders", "post")).toEqual(
          expect.arrayContaining(["location", "x-correlation-id", "idempotent-replayed"])
        )
        const replayed = yield* send()
        expect(replayed.headers.get("idempotent-replayed")).toBe("true")
        const orderPath = created.headers.get("location")!
        const read = yield* request("GET", orderPath, { token: alice })
        expect(checked(read, "/api/v1/orders/{orderId}", "get")).toContain("etag")
        const unauthenticated = yield* request("GET", orderPath)
        expect(checked(unauthenticated, "/api/v1/orders/{orderId}", "get")).toContain("www-authenticate")
        // Cancelling another's order is the command's own answer (403), stored with the key and replayed.
        const { bob } = yield* users
        const cancelAsBob = () =>
          request("POST", `${orderPath}/cancel`, {
            token: bob,
            json: { reason: "not mine" },
            headers: { "idempotency-key": "headers-cancel-key" }
          })
        expectProblem(yield* cancelAsBob(), 403, "Forbidden")
        const refusedAgain = yield* cancelAsBob()
        expectProblem(refusedAgain, 403, "Forbidden")
        expect(refusedAgain.headers.get("idempotent-replayed")).toBe("true")
        expect(checked(refusedAgain, "/api/v1/orders/{orderId}/cancel", "post")).toContain("idempotent-replayed")
      }))

    it.effect("the committed document is the one the service serves", () =>
      Effect.gen(function*() {
        const spec = yield* served
        const committed = Fs.readFileSync(documentFile, "utf8")
        expect(JSON.parse(committed)).toEqual(spec)
        expect(committed).toBe(documentText(spec as any))
      }))

    it.effect(
      "the committed client types are current: regenerated into a temp file, they are the same",
      () =>
        Effect.gen(function*() {
          const dir = yield* Effect.acquireRelease(
            Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "ecb-client-"))),
            (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
          )
          const regeneratedDocument = Path.join(dir, "openapi.json")
          const regeneratedTypes = Path.join(dir, "openapi.generated.ts")
          Fs.writeFileSync(regeneratedDocument, documentText())
          const source = yield* Effect.promise(() => typesSource(Fs.readFileSync(regeneratedDocument, "utf8")))
          Fs.writeFileSync(regeneratedTypes, source)
          const stale = "is stale: run `npm run generate:client` and commit the result"
          expect(Fs.readFileSync(documentFile, "utf8"), `${documentFile} ${stale}`).toBe(
            Fs.readFileSync(regeneratedDocument, "utf8")
          )
          expect(Fs.readFileSync(typesFile, "utf8"), `${typesFile} ${stale}`).toBe(
            Fs.readFileSync(regeneratedTypes, "utf8")
          )
        }).pipe(Effect.scoped),
      60_000
    )

    it.effect("the typed client (openapi-fetch) sets stock, creates an order, reads it and its errors", () =>
      Effect.gen(function*() {
        const service = yield* TestService
        const { admin, alice, bob } = yield* users
        const client = (bearer: string) =>
          createClient<paths>({ baseUrl: service.baseUrl, headers: { authorization: `Bearer ${bearer}` } })

        const stock = yield* Effect.promise(() =>
          client(admin).PUT("/api/v1/products/{productId}/stock", {
            params: { path: { productId: "typed-1" }, header: { "idempotency-key": "typed-stock" } },
            body: { available: 5 }
          })
        )
        expect(stock.response.status).toBe(200)
        const stockView: components["schemas"]["Stock"] | undefined = stock.data
        expect(stockView).toEqual({ product_id: "typed-1", available: 5 })

        const line: components["schemas"]["OrderLine"] = { product_id: "typed-1", quantity: 2 }
        const created = yield* Effect.promise(() =>
          client(alice).POST("/api/v1/orders", {
            body: { customer_id: customerId, items: [line], shipping_address: { ...address, line2: "Apt 4" } }
          })
        )
        expect(created.response.status).toBe(201)
        expect(created.error).toBeUndefined()
        const createdBody: { readonly order_id: string; readonly status: "created" } = created.data!
        expect(createdBody.status).toBe("created")
        expect(created.response.headers.get("location")).toBe(`/api/v1/orders/${createdBody.order_id}`)

        const read = yield* Effect.promise(() =>
          client(alice).GET("/api/v1/orders/{orderId}", { params: { path: { orderId: createdBody.order_id } } })
        )
        expect(read.response.status).toBe(200)
        const order: components["schemas"]["Order"] = read.data!
        const status: "created" | "cancelled" = order.status
        expect(status).toBe("created")
        expect(order.items).toEqual([line])
        expect(order.shipping_address.line2).toBe("Apt 4")
        expect(order.version).toBe(1)
        expect(read.response.headers.get("etag")).toBe("\"1\"")

        const cancelled = yield* Effect.promise(() =>
          client(alice).POST("/api/v1/orders/{orderId}/cancel", {
            params: { path: { orderId: order.order_id }, header: { "if-match": "\"1\"" } },
            body: { reason: "typed client" }
          })
        )
        expect(cancelled.data).toEqual({ order_id: order.order_id, status: "cancelled" })

        const hidden = yield* Effect.promise(() =>
          client(bob).GET("/api/v1/orders/{orderId}", { params: { path: { orderId: unknownOrderId } } })
        )
        expect(hidden.response.status).toBe(404)
        expect(hidden.data).toBeUndefined()
        expect(hidden.error).toMatchObject({ status: 404, code: "OrderNotFound", title: "Order not found" })

        const page = yield* Effect.promise(() =>
          client(admin).GET("/api/v1/events", { params: { query: { after: 0, limit: 10 } } })
        )
        expect(page.response.status).toBe(200)
        const next: number = page.data!.next
        expect(next).toBeGreaterThanOrEqual(0)
      }))

    it.effect("/docs is an HTML page that embeds the served document", () =>
      Effect.gen(function*() {
        const spec = yield* served
        const docs = yield* request("GET", "/docs")
        expect(docs.status).toBe(200)
        expect(docs.headers.get("content-type")).toMatch(/^text\/html\b/)
        expect(docs.text).toMatch(/<html[\s>]/i)
        expect(docs.text).toContain(`<title>${spec.info.title}</title>`)
        expect(docs.text).toContain("\"openapi\":\"3.1.0\"")
        // Scalar's script is inline, so the page works offline; loaded with
        // the first request, then the same page every time.
        expect(docs.text).not.toMatch(/<script src=/)
        expect(docs.text.length).toBeGreaterThan(1_000_000)
        const again = yield* request("GET", "/docs")
        expect(again.status).toBe(200)
        expect(again.text).toBe(docs.text)
        const problem = yield* request("GET", "/docs/nothing")
        expectProblem(problem, 404, "RouteNotFound")
      }))
  })
})
