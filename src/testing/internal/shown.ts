import * as Predicate from "effect/Predicate"

/** A value in a specification's failure message: its tag, then its fields. */
export const describe = (value: unknown): string =>
  Predicate.hasProperty(value, "_tag") ? `${String(value._tag)} ${shown(value)}` : String(value)

// A value as a failure message shows it. Compared by `canonicalJson`, which
// writes what a `Redacted` hides; shown with it hidden (its own `toJSON`),
// as logs show it.
export const shown = (value: unknown): string => {
  try {
    return JSON.stringify(value, (_key, inner: unknown) =>
      inner instanceof Map
        ? { Map: [...inner] }
        : inner instanceof Set
        ? { Set: [...inner] }
        : inner instanceof Error
        // JSON writes `{}` for any `Error`: its name and message are not enumerable.
        ? { ...inner, name: inner.name, message: inner.message }
        : typeof inner === "bigint"
        ? `${inner}n`
        : typeof inner === "number" && !Number.isFinite(inner)
        ? String(inner)
        : inner) ?? String(value)
  } catch {
    return String(value)
  }
}
