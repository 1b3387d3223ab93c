/**
 * TCP hole punching by simultaneous open (seeds 002/003): both agents connect to each
 * other's public TCP endpoint, and LAN candidates, from the local port of their control
 * connection to the rendezvous server (the port their NAT already maps; libuv binds
 * with SO_REUSEADDR, so a second socket can share it while the first is connected).
 * The first SYN that crosses both NATs makes the connection. A failed attempt (a router
 * that answers unsolicited SYNs with RST) is retried one round trip later (at least
 * TCP_RETRY_FLOOR_MS, within the SYN budget) until the deadline; a pending one is left alone (a router that drops them: the peer's SYN will
 * meet it). Every connection must authenticate the expected key (Noise) before use;
 * the first that does wins, everything else is dropped.
 */
import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import { systemRandom, type Random, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { Candidate } from './punch.js'

/**
 * Through routers that answer unsolicited SYNs with RST, a side's NAT mapping lives only
 * from its SYN until the peer router's RST comes back, so the two SYNs must cross inside
 * that window, and the best a side can do is to have a SYN out nearly all the time: a
 * refused attempt is retried about one round trip after the last SYN left (the round
 * trip is the quickest refusal seen from that candidate: SYN out, RST back), at a
 * uniformly random point of 0-2 round trips so that the two sides cannot lock into a
 * common beat that never crosses, and on average no sooner than TCP_RETRY_FLOOR_MS.
 * On a 30 ms path that is ~33 SYNs a second; in the lab, where the routers are 15 µs
 * apart, the floor decides. Measured there: every 50 ms opened 6 of 10 within 5 s;
 * every 4 ms ±50% 9-10 of 10 (median 0.4 s); every 2 ms ±50%, 0 of 10 (timers fire on
 * a 1 ms grid and the two sides' grids never met), and 0 of 10 timed to the
 * microsecond every 0.2 ms (too many SYNs: replaced before their RST came back, they
 * left the routers' entries half-open); the 1 ms floor drawn from 0-2 ms (half the
 * retries at once, the others on the grid): 39 of 40, median 171-250 ms, a median of
 * 144-239 SYNs from the side that got through (at most 1,133; the one failure had spent
 * a burst of 1,000, now 1,500). Before the budget that same rule, with nothing else,
 * sent 75,000-95,000 SYNs in a 15 s introduction with 8 LAN candidates that refuse at
 * once: now every SYN takes a token from the punch's, the peer's and the global SYN
 * budget (budget.ts) and waits for it when there is none.
 * Attempts still pending (a router that drops SYNs) are left alone: the peer's SYN will
 * meet them.
 */
export const TCP_RETRY_FLOOR_MS = 1

/** Other failures (no route, the 4-tuple still busy, a connection that did not authenticate) are retried this often. */
export const TCP_RETRY_SLOW_MS = 100

/**
 * Once RSTs have come back from a candidate, an attempt still pending after this many
 * refusal round trips lost its RST: a router whose conntrack entry is half-open (say
 * SYN_SENT2 after an earlier near miss) marks the RST invalid and drops it. The kernel
 * would resend the SYN only after 1 s, so the attempt is replaced at once.
 */
export const TCP_PENDING_RTTS = 4

/**
 * A connection that has not authenticated this long after connecting is reset and its
 * candidate retried. Through RST-answering routers a simultaneous open can end with both
 * hosts connected while one router's conntrack entry is stuck in SYN_SENT2: it marks
 * every later segment INVALID, so the handshake never arrives (seen in the lab: both
 * sockets ESTABLISHED, the initiator's first frame retransmitted until the deadline).
 * The RST clears that entry; the next SYN starts afresh.
 */
export const TCP_HANDSHAKE_MS = 1_000

export interface TcpPunchInit {
  localPort: number
  candidates: Candidate[]
  initiator: boolean
  deadlineMs: number
  expectedKey: Uint8Array
}

export interface TcpPunchComponents {
  keyPair: KeyPair
  /** Its hrNow() times round trips of microseconds. */
  clock: TimerClock
  log: Logger
  /** The SYN budget (budget.ts): 0 when a SYN may go now (its token taken), else ms to wait. */
  synWaitMs?: () => number
  /** Retry jitter; default systemRandom. */
  random?: Random
}

export interface TcpPunchResult {
  session: SecretStream
  endpoint: Endpoint
  kind: Candidate['kind']
  tookMs: number
  /** SYNs sent (connect attempts). */
  attempts: number
}

export function punchTcp(init: TcpPunchInit, c: TcpPunchComponents, signal: AbortSignal): Promise<TcpPunchResult> {
  const started = c.clock.now()
  const sockets = new Set<net.Socket>()
  const sessions = new Set<SecretStream>()
  const lastError = new Map<string, string>()
  const timers = new Set<Timer>()
  const clock = c.clock
  let attempts = 0
  let settled = false

  return new Promise<TcpPunchResult>((resolve, reject) => {
    const cleanup = (keep?: SecretStream): void => {
      settled = true
      for (const t of timers) clock.clear(t)
      for (const s of sessions) if (s !== keep) dropSession(s)
      for (const s of sockets) if (!keep || s !== (keep.rawStream as unknown as net.Socket)) reset(s)
      clock.clear(deadline)
    }
    const fail = (err: NatdError): void => {
      if (settled) return
      cleanup()
      reject(err)
    }
    const deadline = clock.setTimeout(() => {
      const tried = init.candidates.map((cand) => `${cand.kind} ${formatEndpoint(cand.endpoint)}${lastError.has(key(cand)) ? ` (${lastError.get(key(cand))})` : ' (no answer)'}`)
      fail(new NatdError('PUNCH_TIMEOUT', `no direct TCP path in ${init.deadlineMs} ms: ${attempts} connect attempts to ${tried.join(', ') || 'no candidates'}${lastError.size === 0 ? '; the peer\'s NAT may map per destination or drop our SYNs' : ''}`))
    }, init.deadlineMs)
    signal.addEventListener('abort', () => fail(new NatdError('ABORTED', 'TCP punching aborted')), { once: true })
    if (init.candidates.length === 0) return fail(new NatdError('PUNCH_FAILED', 'the peer has no TCP endpoint (its control connection is down)'))

    const hrNow = (): number => clock.hrNow()
    const later = (ms: number, fn: () => void): void => {
      const t = clock.setTimeout(() => {
        timers.delete(t)
        if (!settled) fn()
      }, ms)
      timers.add(t)
    }
    // Per candidate: the quickest refusal seen (connect until RST), in ms.
    const refusedRtt = new Map<string, number>()

    const random = c.random ?? systemRandom
    const attempt = (cand: Candidate): void => {
      if (settled) return
      const wait = c.synWaitMs?.() ?? 0
      if (wait > 0) return later(wait, () => attempt(cand))
      attempts++
      const sentAt = hrNow()
      const sock = net.connect({ host: cand.endpoint.host, port: cand.endpoint.port, localPort: init.localPort })
      sockets.add(sock)
      sock.once('connect', () => onConnected(sock, cand))
      sock.once('error', (err: NodeJS.ErrnoException) => {
        sockets.delete(sock)
        sock.destroy()
        lastError.set(key(cand), err.code ?? err.message)
        if (settled) return
        if (err.code !== 'ECONNREFUSED') return later(TCP_RETRY_SLOW_MS, () => attempt(cand))
        const rtt = hrNow() - sentAt
        const best = Math.min(rtt, refusedRtt.get(key(cand)) ?? rtt)
        refusedRtt.set(key(cand), best)
        // One round trip after this SYN left, jittered: two sides retrying on a fixed beat can lock in step and never cross.
        later(Math.max(TCP_RETRY_FLOOR_MS, best) * 2 * random() - rtt, () => attempt(cand))
      })
      const rtt = refusedRtt.get(key(cand))
      if (rtt !== undefined) {
        later(Math.max(TCP_RETRY_FLOOR_MS, rtt) * TCP_PENDING_RTTS, () => {
          if (!sock.connecting || !sockets.has(sock)) return
          sockets.delete(sock)
          sock.destroy()
          attempt(cand)
        })
      }
    }

    const onConnected = (sock: net.Socket, cand: Candidate): void => {
      if (settled) {
        sock.destroy()
        return
      }
      sock.setNoDelay(true)
      const session = new SecretStream(init.initiator, sock, { keyPair: c.keyPair })
      sessions.add(session)
      session.on('error', () => undefined)
      // The connection failed its purpose: drop it and try the candidate again.
      const again = (why: string): void => {
        clock.clear(stuck)
        timers.delete(stuck)
        sessions.delete(session)
        sockets.delete(sock)
        dropSession(session)
        if (settled) return
        c.log.debug('a punched TCP connection did not authenticate; trying again', { to: formatEndpoint(cand.endpoint), why })
        lastError.set(key(cand), `connected, ${why}`)
        // Slowly: what answered may not be natd at all (a LAN candidate is a guess).
        later(TCP_RETRY_SLOW_MS, () => attempt(cand))
      }
      const stuck = clock.setTimeout(() => again(`no handshake in ${TCP_HANDSHAKE_MS} ms`), TCP_HANDSHAKE_MS)
      timers.add(stuck)
      session.opened.then((ok) => {
        clock.clear(stuck)
        timers.delete(stuck)
        if (settled) return dropSession(session)
        // The peer reset its end (say its own handshake timer fired): this side must go on too.
        if (!ok) return again('the handshake failed')
        if (!session.remotePublicKey || !timingSafeEqual(session.remotePublicKey, init.expectedKey)) {
          // "First authenticated wins": anything else that connected is dropped.
          c.log.warn('dropped a TCP connection with the wrong key', { from: formatEndpoint(cand.endpoint), got: session.remotePublicKey ? peerId(session.remotePublicKey).slice(0, 8) : null })
          dropSession(session)
          return
        }
        cleanup(session)
        resolve({ session, endpoint: cand.endpoint, kind: cand.kind, tookMs: c.clock.now() - started, attempts })
      }, () => again('the handshake failed'))
    }

    for (const cand of init.candidates) attempt(cand)
  })
}

/**
 * Closes a punching socket with RST rather than FIN: a FIN leaves the socket orphaned in
 * FIN_WAIT or TIME_WAIT on the one 4-tuple every later punch to this peer must use
 * (connect then fails with EADDRNOTAVAIL until it expires, minutes when the FIN is
 * never acknowledged), and leaves the routers' conntrack entries half-closed.
 */
function reset(sock: net.Socket): void {
  if (sock.destroyed) return
  if (sock.connecting) sock.destroy() // a SYN_SENT socket just goes away
  else sock.resetAndDestroy()
}

function dropSession(session: SecretStream): void {
  reset(session.rawStream as unknown as net.Socket)
  session.destroy()
}

function key(c: Candidate): string {
  return formatEndpoint(c.endpoint)
}
