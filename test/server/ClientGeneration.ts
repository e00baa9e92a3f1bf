/**
 * The typed client of the order service: the OpenAPI document as the API
 * definition generates it (the one the service serves at `/openapi.json`),
 * and the TypeScript types `openapi-typescript` makes from it. Both are
 * committed under `generated/`; `npm run generate:client` rewrites them and
 * a test checks that they are current.
 */
import * as OpenApi from "@effect/platform/OpenApi"
import { fileURLToPath } from "node:url"
import openapiTS, { astToString, COMMENT_HEADER } from "openapi-typescript"
import { Api } from "../../src/server/Api.js"

/** The committed copy of the OpenAPI document. */
export const documentFile = fileURLToPath(new URL("./generated/openapi.json", import.meta.url))

/** The committed types generated from it. */
export const typesFile = fileURLToPath(new URL("./generated/openapi.generated.ts", import.meta.url))

/** The OpenAPI document of the API definition, as the service serves it. */
export const document = (): OpenApi.OpenAPISpec => OpenApi.fromApi(Api)

/** The document as committed: pretty-printed JSON with a final newline. */
export const documentText = (spec: OpenApi.OpenAPISpec = document()): string => `${JSON.stringify(spec, null, 2)}\n`

/** The TypeScript types of a document's text. */
export const typesSource = async (text: string): Promise<string> =>
  `${COMMENT_HEADER}${astToString(await openapiTS(JSON.parse(text), { silent: true }))}`
