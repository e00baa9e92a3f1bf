/**
 * A `json`/`jsonb` column as the driver hands it over: `pg` parses it, a
 * client that does not hands over the text.
 */
export const json = (value: unknown): unknown => typeof value === "string" ? JSON.parse(value) : value
