/**
 * How long an API client waits for natd's answer to one call before it gives up with
 * TIMEOUT (naming the step it was in). Without one, a call natd never answers (a frame
 * lost, a daemon whose event loop is stuck) hung natctl until whoever ran it killed it,
 * with nothing said about where (issue 17's 3-site lab test).
 */
import type { MethodName, Params } from './schema.js'

/**
 * A method natd answers from what it holds (status, peers, forward.add, …) waits on
 * nothing but natd's event loop and, for a config change, its state file on disk: ms when
 * healthy. 20 s is far beyond that on a loaded machine, and a disk stall longer than this
 * is worth an error that says so.
 */
export const CALL_DEADLINE_MS = 20_000
/** Connecting to the socket: local, so a refusal is immediate; a long wait is a full backlog. */
export const CONNECT_DEADLINE_MS = 10_000
/**
 * What a method with its own `timeoutMs` (open, ping, message.send) may take beyond it:
 * natd pauses such a deadline while the tunnel migrates, up to 90 s per operation
 * (tunnel/migration-deadline.ts MIGRATION_PAUSE_MAX_MS), plus CALL_DEADLINE_MS of slack.
 */
export const MIGRATION_ALLOWANCE_MS = 90_000
/**
 * How many times its `timeoutMs` a method may spend, each phase with a budget of its own:
 * `ping` to a peer with no tunnel opens one (timeoutMs, api-handlers.ts), then pings across
 * it (timeoutMs again). `open` and `message.send` share one budget across their phases
 * (tunnel/manager.ts open(), daemon/messages.ts send()). With one timeoutMs allowed, a
 * `natctl ping --timeout` above ~110 s could be cut by natctl while natd still worked on it.
 */
const TIMEOUT_PHASES: Partial<Record<MethodName, number>> = { ping: 2 }
/** netcheck runs STUN and port-mapping probes (each bounded by a few seconds). */
export const NETCHECK_DEADLINE_MS = 60_000

/**
 * The deadline for one call, or null for none: `file.send` lasts as long as its file
 * takes to cross (natd bounds each of its phases itself), and `subscribe`'s answer is
 * immediate but what follows is a stream.
 */
export function callDeadlineMs<M extends MethodName>(method: M, params: Params<M>): number | null {
  if (method === 'file.send') return null
  if (method === 'netcheck') return NETCHECK_DEADLINE_MS
  const own = (params as { timeoutMs?: unknown } | null)?.timeoutMs
  if (typeof own === 'number' && Number.isFinite(own) && own > 0) return own * (TIMEOUT_PHASES[method] ?? 1) + MIGRATION_ALLOWANCE_MS + CALL_DEADLINE_MS
  return CALL_DEADLINE_MS
}
