/**
 * What the fuzz properties need of a running service: requests as one of a
 * few principals, and a cheap snapshot of its state (the stock of a small
 * set of products, the end of the events feed, a few orders) to show that a
 * refused request changed nothing.
 */
import type { HttpRequest } from "./OpenApiOperations.js"

export type Principal = "admin" | "owner" | "other" | "anonymous"

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  readonly body: unknown
}

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

export interface Client {
  readonly tokens: Readonly<Record<Exclude<Principal, "anonymous">, string>>
  readonly send: (request: HttpRequest, principal: Principal) => Promise<Reply>
  readonly get: (target: string, principal: Principal) => Promise<Reply>
}

export const client = (baseUrl: string, tokens: Client["tokens"]): Client => {
  const send = async (request: HttpRequest, principal: Principal): Promise<Reply> => {
    const headers = { ...request.headers }
    if (principal !== "anonymous") headers.authorization = `Bearer ${tokens[principal]}`
    const response = await fetch(`${baseUrl}${request.target}`, {
      method: request.method,
      headers,
      signal: AbortSignal.timeout(30_000),
      ...(request.body === undefined ? {} : { body: request.body })
    })
    const text = await response.text()
    return { status: response.status, headers: response.headers, text, body: parse(text) }
  }
  return {
    tokens,
    send,
    get: (target, principal) => send({ method: "GET", target, headers: {}, body: undefined }, principal)
  }
}

export interface State {
  readonly stock: Record<string, number>
  /** The last position of the events feed. */
  readonly feedEnd: number
  /** Each order's status, version and reason, or `missing`. */
  readonly orders: Record<string, unknown>
}

/**
 * Snapshots of a service's state. The feed is read from the last position
 * seen, so a snapshot costs one request for it whatever its length.
 */
export const stateReader = (http: Client) => {
  let cursor = 0
  const feedEnd = async (): Promise<number> => {
    for (;;) {
      const page = await http.get(`/api/v1/events?after=${cursor}&limit=1000`, "admin")
      if (page.status !== 200) throw new Error(`events feed: ${page.status} ${page.text.slice(0, 200)}`)
      const { events, next } = page.body as { events: Array<unknown>; next: number }
      cursor = next
      if (events.length < 1000) return cursor
    }
  }
  const stockOf = async (productId: string): Promise<number> => {
    const reply = await http.get(`/api/v1/products/${encodeURIComponent(productId)}/stock`, "admin")
    if (reply.status !== 200) throw new Error(`stock of ${productId}: ${reply.status} ${reply.text.slice(0, 200)}`)
    return (reply.body as { available: number }).available
  }
  const orderOf = async (orderId: string): Promise<unknown> => {
    const reply = await http.get(`/api/v1/orders/${orderId}`, "admin")
    if (reply.status === 404) return "missing"
    if (reply.status !== 200) throw new Error(`order ${orderId}: ${reply.status} ${reply.text.slice(0, 200)}`)
    const { cancel_reason, status, version } = reply.body as Record<string, unknown>
    return { status, version, cancel_reason }
  }
  /**
   * Waits until the events feed, after `from`, holds an event of this type
   * for this aggregate: the outbox relay gives events their position shortly
   * after their command committed, so a snapshot taken before then would see
   * the feed grow later.
   */
  const awaitEvent = async (from: number, aggregateId: string, type: string): Promise<void> => {
    const deadline = Date.now() + 15_000
    for (;;) {
      const page = await http.get(`/api/v1/events?after=${from}&limit=1000`, "admin")
      const events = (page.body as { events?: Array<{ aggregate_id: string; type: string }> } | undefined)?.events ?? []
      if (events.some((event) => event.aggregate_id === aggregateId && event.type === type)) return
      if (Date.now() > deadline) throw new Error(`no ${type} event for ${aggregateId} in the feed after ${from}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
  const snapshot = async (products: Iterable<string>, orders: Iterable<string>): Promise<State> => {
    const productIds = [...new Set(products)]
    const orderIds = [...new Set(orders)]
    const [stock, end, read] = await Promise.all([
      Promise.all(productIds.map(stockOf)),
      feedEnd(),
      Promise.all(orderIds.map(orderOf))
    ])
    return {
      stock: Object.fromEntries(productIds.map((id, i) => [id, stock[i]!])),
      feedEnd: end,
      orders: Object.fromEntries(orderIds.map((id, i) => [id, read[i]]))
    }
  }
  return { snapshot, awaitEvent }
}
