/**
 * What failed path attempts tell the user (the manager races them, manager.ts): the most
 * telling error of several, with every failure kept as its cause. Pure.
 */
import { NatdError, toNatdError, type ErrorCode } from '../protocol/errors.js'

/**
 * Most telling first: someone else answered; a refusal the user can act on (a path that
 * cannot work, the relay's limits); a path that could not be tried, with its reason; a
 * deadline; our own budget; last, attempts given up because another path won (never
 * shown when anything else failed). Codes not listed rank between the refusals and
 * PUNCH_FAILED.
 */
const TELLING: readonly ErrorCode[] = ['KEY_MISMATCH', 'PEER_MISMATCH', 'UNSUPPORTED_PATH', 'RELAY_LIMIT', 'RATE_LIMITED']
const UNTELLING: readonly ErrorCode[] = ['PUNCH_FAILED', 'PUNCH_TIMEOUT', 'BUSY', 'ABORTED']

function rank(code: ErrorCode): number {
  const i = TELLING.indexOf(code)
  if (i >= 0) return i
  const j = UNTELLING.indexOf(code)
  return j >= 0 ? TELLING.length + 1 + j : TELLING.length
}

/**
 * What failed attempts tell the user: the most telling one's code and message (pure).
 * With several, the error keeps them all as its `cause` (an AggregateError, in the
 * order the attempts were made), so logs and debuggers see every path's reason.
 */
export function mostTelling(failures: readonly unknown[]): NatdError {
  const errors = failures.map((e) => toNatdError(e))
  if (errors.length === 0) return new NatdError('INTERNAL', 'no path was attempted')
  const best = errors.reduce((a, b) => (rank(b.code) < rank(a.code) ? b : a))
  if (errors.length === 1) return best
  return new NatdError(best.code, best.message, { cause: new AggregateError(errors, `${errors.length} paths failed: ${errors.map((e) => e.code).join(', ')}`) })
}

/** Resolves with the first attempt that succeeds; when all fail, rejects with the most telling error. */
export async function firstOf<T>(attempts: Array<Promise<T>>): Promise<T> {
  try {
    return await Promise.any(attempts)
  } catch (err) {
    throw mostTelling((err as AggregateError).errors)
  }
}

