/**
 * Helpers of the observability tests: tracing into memory, and requests to
 * whole URLs (the API's port or the metrics listener's). The service itself
 * starts as every in-process test starts it, `test/support/Service.ts`.
 */
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import * as Observability from "../../src/server/Observability.js"
import * as Http from "../server/Http.js"

/** Tracing on, every span kept in memory as it ends. */
export const inMemoryTracing = () => {
  const exporter = new InMemorySpanExporter()
  const layer = Observability.layerTracing({
    spanProcessor: () => new SimpleSpanProcessor(exporter),
    serviceName: "orders-service-test"
  })
  return { exporter, layer }
}

/** One request to `url` (GET unless `method` says otherwise), bounded in time. */
export const request = (url: string, options: Http.RequestOptions & { readonly method?: string } = {}) =>
  Http.requestUrl(options.method ?? "GET", url, options)

/** A valid `POST /api/v1/orders` body with one line. */
export const orderBody = (productId: string, quantity = 1) => Http.orderBody([{ product_id: productId, quantity }])
