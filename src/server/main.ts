/**
 * `npm start`: runs the order service until SIGINT/SIGTERM.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Layer from "effect/Layer"
import { LoggerLive, ServerLive } from "./Server.js"

NodeRuntime.runMain(Layer.launch(ServerLive.pipe(Layer.provide(LoggerLive))), { disablePrettyLogger: true })
