/**
 * Clients that hang up before their answer is out (mid-body, or with the
 * whole body sent) leave nothing running: before, each one cut off mid-body
 * left its request fiber waiting for good on a response that could not be
 * written (about 20 KB each), until the heap ran out.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Net from "node:net"
import { layer, layerOptions, orderBody, TestService, token } from "./Http.js"

const hangUps = 200

/** Sends `head` and the first `sent` characters of `body`, then hangs up after `delayMs`. */
const hangUp = (port: number, head: string, body: string, sent: number, delayMs: number) =>
  Effect.async<void>((resume) => {
    const socket = Net.connect(port, "127.0.0.1", () => {
      socket.write(`${head}Content-Length: ${body.length}\r\n\r\n${body.slice(0, sent)}`)
      setTimeout(() => socket.destroy(), delayMs)
    })
    socket.on("error", () => {})
    socket.on("close", () => resume(Effect.void))
  })

/** The root fibers above `before`, once they stop falling (at most 10 s). */
const leftRunning = (before: number) =>
  Effect.gen(function*() {
    let left = (yield* Fiber.roots).length - before
    for (let i = 0; i < 100 && left >= 10; i++) {
      yield* Effect.sleep("100 millis")
      left = (yield* Fiber.roots).length - before
    }
    return left
  })

describe("clients that hang up", () => {
  it.layer(layer(), layerOptions)((it) => {
    it.effect("mid-body: no request fiber is left once the connection is gone", () =>
      Effect.gen(function*() {
        const port = Number(new URL((yield* TestService).baseUrl).port)
        const head = `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
          `Authorization: Bearer ${yield* token("hang-up-alice")}\r\n`
        const body = JSON.stringify(orderBody([{ product_id: "sku-1", quantity: 1 }]))
        const before = (yield* Fiber.roots).length
        yield* Effect.forEach(Array.from({ length: hangUps }), () => hangUp(port, head, body, 40, 20), {
          concurrency: 10
        })
        expect(yield* leftRunning(before)).toBeLessThan(10)
      }), { timeout: 60_000 })

    it.effect(
      "with the whole body sent, before the answer: no request fiber is left either",
      () =>
        Effect.gen(function*() {
          const port = Number(new URL((yield* TestService).baseUrl).port)
          const alice = yield* token("hang-up-alice")
          const body = JSON.stringify(orderBody([{ product_id: "sku-1", quantity: 1 }]))
          const before = (yield* Fiber.roots).length
          yield* Effect.forEach(
            Array.from({ length: hangUps }, (_, i) => i),
            (i) =>
              hangUp(
                port,
                `POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
                  `Authorization: Bearer ${alice}\r\nIdempotency-Key: hang-up-${i}\r\n`,
                body,
                body.length,
                i % 10
              ),
            { concurrency: 10 }
          )
          expect(yield* leftRunning(before)).toBeLessThan(10)
        }),
      { timeout: 60_000 }
    )
  })
})
