import { isStorableText } from "../Command.js"

/**
 * Where a value stops being JSON: what `JSON.stringify` would drop, change
 * or refuse, so that a record written as JSON would not read back as itself.
 *
 * @internal
 */
export const incompatibility = (value: unknown, path: string = "$"): string | undefined => {
  switch (typeof value) {
    case "string":
      // JSON holds it, PostgreSQL's jsonb does not: refused in memory too.
      return isStorableText(value) ? undefined : `${path} is ${unstorable}`
    case "boolean":
    case "undefined":
      // An undefined property is left out, as an absent optional field is
      // (an array's undefined element is refused above).
      return undefined
    case "number":
      return Number.isFinite(value) ? undefined : `${path} is ${value}`
    case "object": {
      if (value === null) return undefined
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          // Written as `null`, which reads back as another value.
          if (value[i] === undefined) return `${path}[${i}] is undefined`
          const found = incompatibility(value[i], `${path}[${i}]`)
          if (found !== undefined) return found
        }
        return undefined
      }
      const proto = Object.getPrototypeOf(value)
      if (proto !== Object.prototype && proto !== null) {
        return `${path} is ${proto?.constructor?.name ? `a ${proto.constructor.name}` : "not a plain object"}`
      }
      for (const key of Object.keys(value)) {
        if (!isStorableText(key)) return `a key of ${path} is ${unstorable}`
        const found = incompatibility((value as Record<string, unknown>)[key], `${path}.${key}`)
        if (found !== undefined) return found
      }
      return undefined
    }
    default:
      return `${path} is a ${typeof value}`
  }
}

/**
 * Why a value `incompatibility` found cannot be stored as JSON, and what to
 * do about it, for the defect that refuses it.
 *
 * @internal
 */
export const refusal = (found: string, schemaOf: string): string =>
  found.endsWith(unstorable)
    ? `encoded, ${found}, which a database does not store: refuse such text in ${schemaOf}'s schema ` +
      "(Command.Text)"
    : `encoded, ${found}, which JSON does not hold: give ${schemaOf} a schema that encodes to JSON ` +
      "(Schema.Date rather than Schema.DateFromSelf, say)"

const unstorable = "a string with a NUL character or a lone surrogate"
