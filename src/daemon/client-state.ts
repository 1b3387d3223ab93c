/**
 * The rendezvous client's states (rendezvous-client.ts draws the moves) and the one log
 * line each move writes; retries inside a state log at debug only.
 */
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import type { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'

export type ClientState =
  | { kind: 'connecting'; attempt: number }
  | { kind: 'registered'; since: number; udp: Endpoint | null; tcp: Endpoint | null }
  | { kind: 'backoff'; attempt: number; until: number; error: NatdError }
  | { kind: 'stopped' }

/** Logs the move from `prev` to `next` once; `home` is the server instance we registered with. */
export function logClientMove(log: Logger, prev: ClientState, next: ClientState, server: string, home: Endpoint | null): void {
  if (prev.kind === next.kind) {
    if (next.kind === 'backoff') log.debug('retrying server', { attempt: next.attempt, err: next.error.message })
    return
  }
  switch (next.kind) {
    case 'registered':
      log.info('registered', { server, home: formatEndpoint(home), publicUdp: formatEndpoint(next.udp), publicTcp: formatEndpoint(next.tcp) })
      break
    case 'backoff': {
      const level = next.error.code === 'NAME_TAKEN' || next.error.code === 'UNAUTHORIZED' || next.error.code === 'SERVER_KEY_MISMATCH' || next.error.code === 'BAD_VERSION' ? 'error' : 'warn'
      log[level](prev.kind === 'registered' ? 'lost the server, retrying' : 'cannot register, retrying', { server, code: next.error.code, err: next.error.message })
      break
    }
    case 'connecting':
      if (prev.kind === 'backoff') break // the retry loop: logged once when backoff began
      log.info('connecting', { server })
      break
    case 'stopped':
      log.info('stopped')
      break
  }
}
