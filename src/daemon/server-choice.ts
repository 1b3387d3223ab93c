/**
 * Which instance of a deployment the agent calls home (`--server a,b,c` or a name with
 * several addresses): the one that answers fastest. Each candidate gets one TCP connect
 * at once (its SYN/SYN-ACK is the round trip; the connection is closed at once, before
 * any byte, so the server spends an accept and a close); the agent then registers with
 * the fastest (the order given breaks ties within RANK_STEP_MS), and falls back along
 * the ranking when it refuses or is lost.
 *
 * An IPv4 address that answers ranks before any IPv6 one (a name's AAAA records,
 * server-address.ts): registered over IPv4, the server sees the IPv4 mapping that IPv4
 * peers punch to, and a dual-stack agent gets its IPv6 candidate from the server's IPv6
 * socket all the same (REGISTER_ACK names it). An IPv6-only host reaches no IPv4
 * address, so it registers over IPv6.
 */
import net from 'node:net'
import { isIPv6, type Endpoint } from '../protocol/endpoint.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'

/** A candidate that has not accepted a connection in this long ranks last (it may be down). */
export const RANK_TIMEOUT_MS = 1_000
/**
 * Round trips are compared in steps of this much: closer ones count as equal and keep
 * the order the user gave (a preference), so jitter does not pick the home at random.
 */
export const RANK_STEP_MS = 5

/**
 * `servers` that answered, IPv4 before IPv6 and fastest first within a family; those that
 * did not answer within `timeoutMs` follow, in their given order. Never rejects.
 */
export async function rankServers(servers: readonly Endpoint[], timeoutMs = RANK_TIMEOUT_MS, clock: TimerClock = systemClock): Promise<Endpoint[]> {
  if (servers.length < 2) return [...servers]
  const rtts = await Promise.all(servers.map((s) => connectRtt(s, timeoutMs, clock)))
  // Sort keys: answered IPv4 (0), answered IPv6 (1), silent (2); then the round trip's step; then the order given.
  const order = servers.map((s, i) => ({ s, i, group: rtts[i] === Infinity ? 2 : isIPv6(s.host) ? 1 : 0, step: Math.floor(rtts[i]! / RANK_STEP_MS) }))
  order.sort((a, b) => a.group - b.group || (a.group === 2 ? 0 : a.step - b.step) || a.i - b.i)
  return order.map((o) => o.s)
}

/** Milliseconds to a TCP connection with `to`, or Infinity when it fails or takes longer than `timeoutMs`. */
function connectRtt(to: Endpoint, timeoutMs: number, clock: TimerClock): Promise<number> {
  const started = clock.hrNow()
  return new Promise((resolve) => {
    const socket = net.connect({ host: to.host, port: to.port })
    const done = (rtt: number): void => {
      clock.clear(timer)
      socket.destroy()
      resolve(rtt)
    }
    const timer = clock.setTimeout(() => done(Infinity), timeoutMs)
    socket.once('connect', () => done(clock.hrNow() - started))
    socket.once('error', () => done(Infinity))
  })
}
