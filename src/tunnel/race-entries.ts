/**
 * What to race for an introduction: the path plan (path-plan.ts) for our NAT and the
 * peer's, turned into the attempts of paths.ts, each with its own AbortController so the
 * race (path-race.ts) can stop each when it can no longer help. The relay starts at once,
 * or once every direct attempt failed or RELAY_FALLBACK_MS passed, or not at all.
 */
import { NatdError } from '../protocol/errors.js'
import { planPaths, type PathPlan } from './path-plan.js'
import type { AttemptKind, RaceEntry } from './path-race.js'
import { offersMapping, offersV6, type Established, type Introduction, type PathComponents, type Paths } from './paths.js'

/**
 * `auto` starts the relay when every direct attempt has failed, or after this long
 * without a direct path (birthday punching measured median 0.1-0.3 s, worst 0.6 s).
 */
export const RELAY_FALLBACK_MS = 2_000

/** What planning needs of the agent (tunnel/manager.ts TunnelManagerComponents). */
export interface RaceEntriesComponents extends Pick<PathComponents, 'clock' | 'natVerdict' | 'hasPortMapping' | 'hasIPv6'> {
  /** Our public IPv4 address as the rendezvous server sees it; null while unknown. */
  publicAddress?(): string | null
  /** Whether any of these addresses (a peer's LAN candidates) is on a link of ours (its subnet). */
  onOurLinks?(hosts: string[]): boolean
}

/** The plan for `intro` and its attempts, started; throws UNSUPPORTED_PATH when the plan has none. */
export function raceEntries(intro: Introduction, timeoutMs: number, paths: Paths, c: RaceEntriesComponents): { plan: PathPlan; entries: Array<RaceEntry<Established>> } {
  const mapped = (c.hasPortMapping?.() ?? false) || offersMapping(intro.peer)
  const v6 = (c.hasIPv6?.() ?? false) && offersV6(intro.peer)
  const plan = planPaths({ via: intro.via, mine: c.natVerdict(), theirs: intro.peer.nat, initiator: intro.initiator, mapped, v6, hairpinOnly: hairpinOnly(intro, c) })
  if (plan.impossible !== null) throw new NatdError('UNSUPPORTED_PATH', plan.impossible)
  // One controller per attempt: the race (path-race.ts) stops each when it can no longer help.
  const entries: Array<RaceEntry<Established>> = []
  const add = (kind: AttemptKind, start: (signal: AbortSignal) => Promise<Established>, lan = false, costly = false): void => {
    const abort = new AbortController()
    entries.push({ kind, lan, costly, attempt: start(abort.signal), abort })
  }
  const reach = paths.lanReach(intro)
  const udp = plan.udp
  if (udp) add('udp', (s) => paths.udp(intro, udp, timeoutMs, s, plan.search), reach.udp, udp !== 'normal' || plan.search !== null)
  if (plan.tcp) add('tcp', (s) => paths.tcp(intro, timeoutMs, s), reach.tcp)
  const direct = entries.map((e) => e.attempt)
  if (plan.relay === 'now') add('relay', (s) => paths.relay(intro, timeoutMs, s))
  if (plan.relay === 'fallback') {
    // Both sides run the same rule, so both bind to the relay at about the same time.
    const started = c.clock.now()
    const allFailed = Promise.allSettled(direct).then((r) => r.every((x) => x.status === 'rejected'))
    add('relay', (s) =>
      Promise.race([allFailed.then(() => undefined), c.clock.sleep(RELAY_FALLBACK_MS, s)]).then(() => {
        if (s.aborted) throw new NatdError('ABORTED', 'a direct path won')
        return paths.relay(intro, Math.max(1, timeoutMs - (c.clock.now() - started)), s)
      })
    )
  }
  return { plan, entries }
}

/**
 * Whether the peer's only direct path needs our NAT to hairpin: its public address is
 * ours (one NAT, or one CGN, in front of both) and none of its LAN candidates is on a
 * link of ours. Many NATs, and most CGNs, do not hairpin (path-plan.ts).
 */
export function hairpinOnly(intro: Introduction, c: Pick<RaceEntriesComponents, 'publicAddress' | 'onOurLinks'>): boolean {
  const ours = c.publicAddress?.() ?? null
  if (ours === null || intro.peer.udp?.host !== ours) return false
  return !(c.onOurLinks?.(intro.peer.lan.map((e) => e.host)) ?? true)
}
