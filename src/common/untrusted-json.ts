/**
 * Reading JSON someone else wrote (a state file an operator may have edited, a value in
 * Redis): parse without throwing, then check every field before using it. Callers bound
 * the text's length first.
 */

/** The parsed value, or null when `text` is not JSON. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return null
  }
}

/** A JSON object (not null, not an array); its fields are still unchecked. */
export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Exactly `bytes` bytes as hex digits (lower case, as we write them; `anyCase` for files people edit), or null. */
export function hexBytes(v: unknown, bytes: number, anyCase = false): Buffer | null {
  if (typeof v !== 'string' || v.length !== bytes * 2 || !(anyCase ? /^[0-9a-f]*$/i : /^[0-9a-f]*$/).test(v)) return null
  return Buffer.from(v, 'hex')
}
