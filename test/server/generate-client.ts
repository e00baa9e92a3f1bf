/**
 * `npm run generate:client`: writes the OpenAPI document of the API and the
 * client types generated from it under `test/server/generated/`.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { documentFile, documentText, typesFile, typesSource } from "./ClientGeneration.js"

const text = documentText()
Fs.mkdirSync(Path.dirname(documentFile), { recursive: true })
Fs.writeFileSync(documentFile, text)
Fs.writeFileSync(typesFile, await typesSource(Fs.readFileSync(documentFile, "utf8")))
console.log(`wrote ${Path.relative(process.cwd(), documentFile)} and ${Path.relative(process.cwd(), typesFile)}`)
