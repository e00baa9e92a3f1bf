/**
 * The service's data directory (`DATA_DIR`): the embedded database (in its
 * `pg` directory, which `PgliteClient` keeps its owner's alone) and the
 * development JWT secret (a file of mode 0600).
 *
 * @since 0.1.0
 */
import * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { messageOf } from "../internal/cause.js"

const invalid = (path: string, message: string) =>
  Effect.fail(ConfigError.InvalidData(["DATA_DIR"], `${path} ${message}`))

/**
 * Creates `dir` and its missing parents, each for its owner alone (0700),
 * or takes the directory that is there as it is (it may be shared, or a
 * home directory). Resolves to its absolute path.
 *
 * @since 0.1.0
 * @category constructors
 */
export const ensure = (dir: string): Effect.Effect<string, ConfigError.ConfigError> =>
  Effect.suspend(() => {
    const path = Path.resolve(dir)
    let stat: Fs.Stats
    try {
      Fs.mkdirSync(path, { recursive: true, mode: 0o700 })
      stat = Fs.statSync(path)
    } catch (error) {
      return invalid(path, `cannot be created: ${messageOf(error)}`)
    }
    return stat.isDirectory() ? Effect.succeed(path) : invalid(path, "is not a directory")
  })
