/**
 * TCP hole punching by simultaneous open (seeds 002/003): both agents connect to each
 * other's public TCP endpoint, and LAN candidates, from the local port of their control
 * connection to the rendezvous server (the port their NAT already maps; libuv binds
 * with SO_REUSEADDR, so a second socket can share it while the first is connected).
 * The first SYN that crosses both NATs makes the connection. A failed attempt (a router
 * that answers unsolicited SYNs with RST) is retried every TCP_RETRY_MS until the
 * deadline; a pending one is left alone (a router that drops them: the peer's SYN will
 * meet it). Every connection must authenticate the expected key (Noise) before use;
 * the first that does wins, everything else is dropped.
 */
import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import type { Clock, Logger } from '../protocol/log.js'
import type { Candidate } from './punch.js'

/**
 * Retry period for a connect attempt that failed (a router answered our SYN with RST),
 * jittered ±50%. Through RST-answering routers a side's NAT mapping lives only from its
 * SYN until the peer router's RST comes back (one round trip), so the two SYNs must
 * cross inside that window: the chance per attempt is about RTT / period. Measured in
 * the lab (RTT < 1 ms): 50 ms opened 6 of 10 within 5 s, 10 ms 20 of 20 (median 0.8 s,
 * worst 4.4 s). On real paths the RTT is longer, so the window is too. Attempts still
 * pending (a router that drops SYNs) are never retried: the peer's SYN will meet them.
 */
export const TCP_RETRY_MS = 4

export interface TcpPunchInit {
  localPort: number
  candidates: Candidate[]
  initiator: boolean
  deadlineMs: number
  expectedKey: Uint8Array
}

export interface TcpPunchComponents {
  keyPair: KeyPair
  clock: Clock
  log: Logger
}

export interface TcpPunchResult {
  session: SecretStream
  endpoint: Endpoint
  kind: Candidate['kind']
  tookMs: number
  attempts: number
}

export function punchTcp(init: TcpPunchInit, c: TcpPunchComponents, signal: AbortSignal): Promise<TcpPunchResult> {
  const started = c.clock.now()
  const sockets = new Set<net.Socket>()
  const sessions = new Set<SecretStream>()
  const lastError = new Map<string, string>()
  const timers = new Set<NodeJS.Timeout>()
  let attempts = 0
  let settled = false

  return new Promise<TcpPunchResult>((resolve, reject) => {
    const cleanup = (keep?: SecretStream): void => {
      settled = true
      for (const t of timers) clearTimeout(t)
      for (const s of sessions) if (s !== keep) s.destroy()
      for (const s of sockets) if (!keep || s !== (keep.rawStream as unknown as net.Socket)) s.destroy()
      clearTimeout(deadline)
    }
    const fail = (err: NatdError): void => {
      if (settled) return
      cleanup()
      reject(err)
    }
    const deadline = setTimeout(() => {
      const tried = init.candidates.map((cand) => `${cand.kind} ${formatEndpoint(cand.endpoint)}${lastError.has(key(cand)) ? ` (${lastError.get(key(cand))})` : ' (no answer)'}`)
      fail(new NatdError('PUNCH_FAILED', `no direct TCP path in ${init.deadlineMs} ms: ${attempts} connect attempts to ${tried.join(', ') || 'no candidates'}${lastError.size === 0 ? '; the peer\'s NAT may map per destination or drop our SYNs' : ''}`))
    }, init.deadlineMs)
    signal.addEventListener('abort', () => fail(new NatdError('PUNCH_FAILED', 'TCP punching aborted')), { once: true })
    if (init.candidates.length === 0) return fail(new NatdError('PUNCH_FAILED', 'the peer has no TCP endpoint (its control connection is down)'))

    const attempt = (cand: Candidate): void => {
      if (settled) return
      attempts++
      const sock = net.connect({ host: cand.endpoint.host, port: cand.endpoint.port, localPort: init.localPort })
      sockets.add(sock)
      sock.once('connect', () => onConnected(sock, cand))
      sock.once('error', (err: NodeJS.ErrnoException) => {
        sockets.delete(sock)
        sock.destroy()
        lastError.set(key(cand), err.code ?? err.message)
        if (settled) return
        const t = setTimeout(() => {
          timers.delete(t)
          attempt(cand)
        }, TCP_RETRY_MS * (0.5 + Math.random()))
        timers.add(t)
      })
    }

    const onConnected = (sock: net.Socket, cand: Candidate): void => {
      if (settled) {
        sock.destroy()
        return
      }
      sock.setNoDelay(true)
      const session = new SecretStream(init.initiator, sock as never, { keyPair: c.keyPair })
      sessions.add(session)
      session.on('error', () => undefined)
      session.opened.then((ok) => {
        if (settled || !ok) return session.destroy()
        if (!session.remotePublicKey || !timingSafeEqual(session.remotePublicKey, init.expectedKey)) {
          // "First authenticated wins": anything else that connected is dropped.
          c.log.warn('dropped a TCP connection with the wrong key', { from: formatEndpoint(cand.endpoint), got: session.remotePublicKey ? peerId(session.remotePublicKey).slice(0, 8) : null })
          session.destroy()
          return
        }
        cleanup(session)
        resolve({ session, endpoint: cand.endpoint, kind: cand.kind, tookMs: c.clock.now() - started, attempts })
      }, () => session.destroy())
    }

    for (const cand of init.candidates) attempt(cand)
  })
}

function key(c: Candidate): string {
  return formatEndpoint(c.endpoint)
}
