/**
 * `npm start`: runs the order service until SIGINT/SIGTERM.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Config from "./Config.js"
import { checkConfig, LoggerLive, reportFailure, ServerLive } from "./Server.js"

NodeRuntime.runMain(
  Effect.zipRight(checkConfig, Layer.launch(ServerLive)).pipe(
    Effect.tapErrorCause(reportFailure),
    Effect.provide(LoggerLive),
    Effect.withConfigProvider(Config.environment())
  ),
  // reportFailure says why it stopped; the exit code is still 1.
  { disablePrettyLogger: true, disableErrorReporting: true }
)
