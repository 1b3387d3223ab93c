/**
 * natctl's trace of its own steps (`natctl --debug`, or NATCTL_DEBUG=1 for any program
 * using ApiClient): one timestamped line on stderr per step — connect, auth.challenge,
 * the proof file written and removed, auth.prove, each call and its answer — so a
 * command that hangs shows where. natd's side of the same steps is NATD_TRACE_API=1
 * (ipc/server.ts). Lines carry no secrets: the nonce is public once used, and params are
 * not printed (a message's text, a path).
 */

/** One step: a fixed step name, then free detail. */
export type Trace = (step: string, detail?: string) => void

export const noTrace: Trace = () => undefined

/** Whether the environment asks for the trace (NATCTL_DEBUG set, not "0"). */
export function traceWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.NATCTL_DEBUG
  return v !== undefined && v !== '' && v !== '0'
}

/**
 * A trace to `write` (stderr by default): wall-clock time (to line up with natd's log)
 * and ms since the trace began (what each step cost).
 */
export function stderrTrace(write: (line: string) => void = (l) => process.stderr.write(l), now: () => number = () => performance.now()): Trace {
  const t0 = now()
  return (step, detail) => write(`natctl ${new Date().toISOString()} +${Math.round(now() - t0)}ms ${step}${detail ? ` ${detail}` : ''}\n`)
}

export function traceFromEnv(env: NodeJS.ProcessEnv = process.env): Trace {
  return traceWanted(env) ? stderrTrace() : noTrace
}
