/**
 * `GET /docs`: the API reference page (Scalar) with the OpenAPI document
 * inline, as `HttpApiScalar` serves it. Scalar's script, inlined so the page
 * works offline, is 3.4 MB of JavaScript that `HttpApiScalar` holds from the
 * moment it is imported: about 30 MB of a resting service's memory. So it is
 * imported when the page is first asked for, and the page is built once.
 *
 * @since 0.1.0
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import type * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import type * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

/**
 * The page `HttpApiScalar` builds for `api`: its layer for `HttpLayerRouter`
 * registers one handler, which is taken from a router that only records it.
 */
const loadPage = (api: HttpApi.HttpApi.Any, path: `/${string}`) =>
  Effect.gen(function*() {
    const [Scalar, LayerRouter] = yield* Effect.promise(() =>
      Promise.all([import("@effect/platform/HttpApiScalar"), import("@effect/platform/HttpLayerRouter")])
    )
    let page: Effect.Effect<HttpServerResponse.HttpServerResponse> | undefined
    const recorder = {
      add: (_method: string, _path: string, handler: unknown) =>
        Effect.sync(() => {
          if (Effect.isEffect(handler)) page = handler as Effect.Effect<HttpServerResponse.HttpServerResponse>
        })
    } as unknown as HttpLayerRouter.HttpRouter
    yield* Layer.build(Scalar.layerHttpLayerRouter({ api, path })).pipe(
      Effect.provide(Context.make(LayerRouter.HttpRouter, recorder)),
      Effect.scoped
    )
    return yield* page ?? Effect.dieMessage("HttpApiScalar registered no page")
  })

/**
 * Serves the API reference at `path` on the `HttpApiBuilder` router.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: { readonly path: `/${string}` }): Layer.Layer<never, never, HttpApi.Api> =>
  HttpApiBuilder.Router.use((router) =>
    Effect.gen(function*() {
      const { api } = yield* HttpApi.Api
      const page = yield* Effect.cached(loadPage(api, options.path))
      yield* router.get(options.path, page)
    })
  )
