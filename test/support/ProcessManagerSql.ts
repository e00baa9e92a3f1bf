/**
 * What the process manager's tests on a real database (PGlite, or the server
 * in `DATABASE_URL`) share: the SQL stores a followed process manager runs
 * on, and a wait for what its follower and runner do in the background.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import {
  SqlProcesses,
  SqlReactionCheckpoints,
  SqlReactionDeadLetters,
  SqlScheduledCommands,
  SqlStores
} from "../../src/sql/index.js"
import * as TestDatabase from "./Database.js"

/** The SQL stores, the outbox relayed every `relayPollInterval`, with a follower's and a scheduler's; no logs. */
export const followedStores = (relayPollInterval: Duration.DurationInput) =>
  Layer.mergeAll(
    SqlStores.layer({ relay: { pollInterval: relayPollInterval } }),
    SqlReactionCheckpoints.layer,
    SqlReactionDeadLetters.layer,
    SqlScheduledCommands.layer,
    SqlProcesses.layer
  ).pipe(
    Layer.provideMerge(TestDatabase.layer()),
    Layer.provideMerge(Logger.minimumLogLevel(LogLevel.None))
  )

/** `until`, for at most `seconds` seconds. */
export const untilWithin = (seconds: number) => <E, R>(what: string, check: Effect.Effect<boolean, E, R>) =>
  Effect.repeat(check, { schedule: Schedule.spaced("20 millis"), until: (done) => done }).pipe(
    Effect.timeoutFail({
      duration: Duration.seconds(seconds),
      onTimeout: () => new Error(`not reached in ${seconds} s: ${what}`)
    })
  )

/** Repeats `check` every 20 ms until it holds, for at most 20 seconds. */
export const until = untilWithin(20)
