/**
 * What every natctl command shares: the global options, one API call, printing the result
 * (a table for people, JSON with --json), and checking arguments (a bad one is a UsageError:
 * exit 2). The *-commands.ts files declare the commands; main.ts runs them.
 */
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import type { MethodName, Params, Result } from '../ipc/schema.js'
import { parseDuration } from '../protocol/duration.js'
import { jsonOut, shownOutput } from './format.js'

/** The options every command takes. */
export interface Global {
  socket?: string | undefined
  json: boolean
}

/** A bad command line: exit 2 with the message, like yargs' own usage errors. */
export class UsageError extends Error {}

export function port(value: unknown, what: string): number {
  const n = typeof value === 'number' ? value : Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`${what} must be a port number 1-65535, not ${JSON.stringify(value)}`)
  return n
}

/** The one duration syntax natd, natd-rendezvous and natctl share (protocol/duration.ts): 500ms, 10s, 5m, 1h, or seconds. */
export function duration(value: string, what: string): number {
  try {
    return parseDuration(value)
  } catch {
    throw new UsageError(`${what} must be a duration like 500ms, 10s, 5m or 1h, not ${JSON.stringify(value)}`)
  }
}

export function peerPort(value: string): { peer: string; remotePort: number } {
  const i = value.lastIndexOf(':')
  if (i <= 0) throw new UsageError(`expected PEER:PORT, not ${JSON.stringify(value)}`)
  return { peer: value.slice(0, i), remotePort: port(value.slice(i + 1), 'the remote port') }
}

/** One call on its own connection to natd. */
export async function call<M extends MethodName>(g: Global, method: M, params: Params<M>): Promise<Result<M>> {
  const client = new ApiClient(resolveSocketPath(g.socket))
  await client.connect()
  try {
    return await client.call(method, params)
  } finally {
    client.close()
  }
}

/** Prints a result: JSON with --json, else the human text (through shownOutput: no terminal control gets out). */
export function out(g: Global, value: unknown, human: () => string): void {
  process.stdout.write((g.json ? jsonOut(value, 2) : shownOutput(human())) + '\n')
}
