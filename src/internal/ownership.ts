import type * as Fs from "node:fs"

/**
 * What makes a file or directory not this process user's alone, the rule
 * for what holds secrets or PGlite's world-readable files: another user's
 * (with that user's uid), or open to others (any group or other permission,
 * with its mode in octal). Undefined when it is this user's alone. Windows
 * has no such uids or permission bits.
 *
 * @internal
 */
export const notPrivate = (
  stat: Fs.Stats
):
  | { readonly _tag: "AnotherUser"; readonly uid: number }
  | { readonly _tag: "Open"; readonly mode: string }
  | undefined =>
{
  if (process.platform === "win32") return undefined
  const uid = process.getuid?.()
  if (uid !== undefined && stat.uid !== uid) return { _tag: "AnotherUser", uid: stat.uid }
  return (stat.mode & 0o077) === 0 ? undefined : { _tag: "Open", mode: (stat.mode & 0o777).toString(8) }
}
