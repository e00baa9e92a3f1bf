/**
 * Knowing, once per schema, when encoding a value cannot change it, so that
 * hot paths (a command's fingerprint, an event's payload) can copy fields
 * instead of running the schema over values that already passed it.
 *
 * @internal
 */
import * as Schema from "effect/Schema"
import type * as SchemaAST from "effect/SchemaAST"

/**
 * For a schema with fields (a class): the keys of its fields, less `omit`,
 * when their struct encodes every value to itself; `null` when encoding may
 * change one (a transformation, a class, a declaration, a recursive schema).
 * Worked out once per schema.
 *
 * @internal
 */
export const plainKeys = (omit: (key: string) => boolean) => {
  const cache = new WeakMap<object, ReadonlyArray<string> | null>()
  return (schema: object): ReadonlyArray<string> | null => {
    let keys = cache.get(schema)
    if (keys === undefined) {
      keys = null
      const fields = (schema as { readonly fields?: Schema.Struct.Fields }).fields
      if (fields !== undefined) {
        const kept: Record<string, Schema.Struct.Field> = {}
        for (const key of Object.keys(fields)) if (!omit(key)) kept[key] = fields[key]!
        if (encodesToItself(Schema.Struct(kept).ast)) keys = Object.keys(kept)
      }
      cache.set(schema, keys)
    }
    return keys
  }
}

/**
 * Copies `keys` of `value`, leaving out the ones it does not have, as
 * encoding leaves out an absent optional field.
 *
 * @internal
 */
export const pick = (
  value: object,
  keys: ReadonlyArray<string>,
  into: Record<string, unknown>
): Record<string, unknown> => {
  for (const key of keys) {
    if (key in value) into[key] = (value as Record<string, unknown>)[key]
  }
  return into
}

const encodesToItself = (ast: SchemaAST.AST): boolean => {
  switch (ast._tag) {
    case "StringKeyword":
    case "NumberKeyword":
    case "BooleanKeyword":
    case "Literal":
    case "Enums":
    case "TemplateLiteral":
    case "UnknownKeyword":
    case "UndefinedKeyword":
      return true
    case "Refinement":
      return encodesToItself(ast.from)
    case "Union":
      return ast.types.every(encodesToItself)
    case "TupleType":
      return ast.elements.every((element) => encodesToItself(element.type)) &&
        ast.rest.every((rest) => encodesToItself(rest.type))
    case "TypeLiteral":
      return ast.propertySignatures.every((signature) => encodesToItself(signature.type)) &&
        ast.indexSignatures.every((signature) => encodesToItself(signature.type))
    default:
      return false
  }
}
