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

/**
 * Orders strings by code point, which is UTF-8's byte order and so
 * PostgreSQL's `COLLATE "C"` in a UTF-8 database. JavaScript's `<` compares
 * UTF-16 units, which puts U+E000–U+FFFF after every character above U+FFFF.
 *
 * @internal
 */
export const compareCodePoints = (a: string, b: string): number => {
  if (a === b) return 0
  const length = Math.min(a.length, b.length)
  let i = 0
  while (i < length && a.charCodeAt(i) === b.charCodeAt(i)) i++
  if (i === length) return a.length - b.length
  // Where they first differ, both are units of the same position: a high
  // surrogate reads as its whole character; a low one follows equal highs.
  return a.codePointAt(i)! - b.codePointAt(i)!
}
