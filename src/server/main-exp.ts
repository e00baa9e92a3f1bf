import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { checkConfig, LoggerLive, ServerLive } from "./Server.js"

const tracerOff = process.env.EXP_TRACER_OFF === "1"
NodeRuntime.runMain(
  Effect.zipRight(checkConfig, Layer.launch(ServerLive)).pipe(
    Effect.provide(LoggerLive),
    tracerOff ? Effect.withTracerEnabled(false) : (x) => x
  ),
  { disablePrettyLogger: true }
)
