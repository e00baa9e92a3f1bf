// What `pg` reads of a URL's query as its TLS settings, all of them at once
// in place of the `ssl` option (a CA given beside them is dropped without a
// word).
const tlsParams = ["ssl", "sslmode", "sslrootcert", "sslcert", "sslkey"]

/** The TLS settings a URL's query sets, by name. */
export const tlsParamsIn = (params: URLSearchParams): ReadonlyArray<string> =>
  tlsParams.filter((name) => params.has(name))
