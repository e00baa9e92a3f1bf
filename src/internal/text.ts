/**
 * The number of Unicode code points of `value`: what people, and JSON
 * Schema's `minLength`/`maxLength`, count as characters (an emoji is one).
 *
 * @internal
 */
export const codePoints = (value: string): number => {
  let count = 0
  for (const _ of value) count++
  return count
}

/**
 * `text` in at most `max` characters (code points): cut, when longer, with
 * what was cut said at its end (`… (N more characters)`, counted in the
 * `max`), and never inside a surrogate pair.
 *
 * @internal
 */
export const clipped = (text: string, max: number): string => {
  // Code points ≤ UTF-16 units.
  if (text.length <= max) return text
  const total = codePoints(text)
  if (total <= max) return text
  // The notice's own length depends on the count it states: the total's digits are enough.
  const kept = Math.max(0, max - "… ( more characters)".length - String(total).length)
  let end = 0
  for (let n = 0; n < kept; n++) end += text.codePointAt(end)! > 0xffff ? 2 : 1
  return `${text.slice(0, end)}… (${total - kept} more characters)`
}
