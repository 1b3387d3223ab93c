// Abuse rows for what one peer, or many fresh keys, can make an agent hold (docs/SECURITY.md
// "Memory per tunnel", "Tunnels peers open"):
//
//   1. mallory: 64 channels ── Mux ═══ pipe ═══ Mux ── bob: consumers that read 4 MiB each, then stall
//   2. stranger 1..8 ── loopback UDX ──▶ bob (TunnelManager, inbound tunnels capped at 4)
//   3. the same with channels held open on every place, and alice, whom bob's allow list names
//
// Row 1 asserts the bytes bob holds for consumers that stopped reading (a local service
// behind an exposed port that stalls, a disk that stalls under accepted transfers); row 2
// the tunnels bob keeps and what a refused opener sees. The bounds are written out
// (not imported) so that the file also runs against code from before them, where it fails:
// 256 MiB held, 8 tunnels kept.
import { afterEach, describe, expect, it } from 'vitest'
import type { Tunnel } from '../../src/tunnel/tunnel.js'
import { agent, closeAgents, introducesTo, type Agent } from '../unit/tunnel/manager-agents.js'
import { muxPair } from '../unit/tunnel/mux-pair.js'
import { until } from '../unit/tunnel/pipe.js'
import { NatdError } from '../../src/protocol/errors.js'
import { pushAll } from './push-all.js'
import { recordAbuse } from './record.js'

const MiB = 1024 * 1024
const KiB = 1024
/** window-budget.ts TUNNEL_WINDOW_BUDGET_BYTES: the windows of one tunnel's channels together. */
const TUNNEL_WINDOW_BUDGET_BYTES = 64 * MiB
/** window-budget.ts MIN_CHANNEL_WINDOW_BYTES: a channel opened past the budget. */
const MIN_CHANNEL_WINDOW_BYTES = 16 * KiB
/** Channels mallory opens; each consumer reads this much, then nothing. */
const CHANNELS = 64
const READ_THEN_STALL_BYTES = 4 * MiB
/** What mallory tries to push per channel: the read part, then as much again as a window and more. */
const PUSH_BYTES = READ_THEN_STALL_BYTES + 8 * MiB

const cleanups: Array<() => void | Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
  await closeAgents()
})

describe('abuse: memory and tunnels a peer can make us hold', () => {
  it('1. 64 channels whose consumers read 4 MiB each, then stall: bob holds at most the tunnel budget', async () => {
    const { a: muxM, b: muxB } = muxPair(cleanups)
    /** Bytes bob's consumers were handed after they stalled: held in memory (a socket's queue, a write queue). */
    let held = 0
    muxB.on('open', (req) => {
      req.accept()
      let taken = 0
      // A sink as a joined socket is (daemon/pipe.ts): false while its queue is full, which here is for ever after 4 MiB.
      req.channel.deliverTo({
        data: (buf) => {
          if (taken < READ_THEN_STALL_BYTES) {
            taken += buf.length
            return true
          }
          held += buf.length
          return false
        },
        end: () => undefined
      })
    })
    for (let i = 0; i < CHANNELS; i++) {
      const ch = muxM.openChannel(80)
      ch.on('error', () => undefined)
      void ch.opened.then(() => pushAll(ch, PUSH_BYTES), () => undefined)
    }
    // Until nothing more comes for a while: every channel waits for credit bob no longer grants.
    let last = -1
    let quiet = 0
    await until(() => {
      quiet = muxB.bytesIn === last ? quiet + 1 : 0
      last = muxB.bytesIn
      return quiet > 500
    }, 'mallory to stall', 60_000)
    expect(muxB.bytesIn).toBeGreaterThanOrEqual(CHANNELS * READ_THEN_STALL_BYTES) // every consumer read its 4 MiB
    const bound = TUNNEL_WINDOW_BUDGET_BYTES + CHANNELS * MIN_CHANNEL_WINDOW_BYTES
    expect(held).toBeLessThanOrEqual(bound)
    recordAbuse({
      row: 'a peer opens 64 channels whose consumers read 4 MiB each then stall (exposed service or disk that stops), and pushes 8 MiB more into each',
      metric: 'bytes bob holds for the stalled consumers',
      before: '268435456 (4 MiB window per channel × 64; × 4,096 channels per tunnel: 16 GiB)',
      now: held,
      unit: 'bytes',
      bound: `≤ TUNNEL_WINDOW_BUDGET_BYTES ${TUNNEL_WINDOW_BUDGET_BYTES} + ${CHANNELS} × MIN_CHANNEL_WINDOW_BYTES ${MIN_CHANNEL_WINDOW_BYTES} (whatever the channel count: 64 MiB + 4,096 × 16 KiB)`
    })
  }, 120_000)

  it('2. eight strangers (fresh keys) open tunnels to bob, whose inbound cap is 4, and leave them idle: bob keeps 4, each newcomer takes an idle one\'s place', async () => {
    const CAP = 4
    const STRANGERS = 8
    const bob: Agent = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')), undefined, 0, { inboundTunnels: CAP })
    const opened: Tunnel[] = []
    let most = 0
    for (let i = 0; i < STRANGERS; i++) {
      const stranger = agent(`stranger${i}`, introducesTo(() => bob))
      opened.push((await stranger.manager.open('bob', 'udp', 5_000)).tunnel)
      most = Math.max(most, bob.manager.list().filter((t) => t.isOpen).length)
    }
    // A tunnel that gave its place closes within a round trip, with the code bob gave.
    await until(() => opened.filter((t) => t.isOpen).length === CAP, 'the oldest to give their places', 10_000)
    const kept = bob.manager.list().filter((t) => t.isOpen).length
    expect(kept).toBe(CAP)
    expect(most).toBeLessThanOrEqual(CAP)
    expect(opened.slice(STRANGERS - CAP).every((t) => t.isOpen)).toBe(true) // the newest kept
    for (const t of opened.slice(0, STRANGERS - CAP)) expect(t.closedWith).toBe('BUSY')
    recordAbuse({
      row: 'eight fresh keys open tunnels to an agent whose inbound-tunnel cap is 4 (default 256), and leave them idle',
      metric: 'tunnels the agent keeps',
      before: '8: any registered key could open tunnels without limit (each a socket, buffers, timers and its channel windows)',
      now: kept,
      unit: 'tunnels',
      bound: `≤ inboundTunnels (${CAP} here); an idle one (no channel open) gives its place to a newcomer (closed with BUSY)`
    })
  }, 60_000)

  it('3. strangers hold every place with a channel open (review 10): a fifth stranger is refused BUSY, a peer the owner named still gets in, and keeps its place', async () => {
    const CAP = 4
    let alice: Agent | null = null
    const named = (id: string): boolean => id === alice?.id
    const hold = (_t: Tunnel, req: { accept(): void }): void => req.accept() // a consumer that keeps the channel open
    const bob: Agent = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')), hold, 0, { inboundTunnels: CAP }, named)
    alice = agent('alice', introducesTo(() => bob))
    // alice had a tunnel to bob; it closed (her agent restarted, her network changed).
    const first = (await alice.manager.open('bob', 'udp', 5_000)).tunnel
    alice.manager.close('bob', 'agent restarted')
    await until(() => !first.isOpen && bob.manager.list().every((t) => !t.isOpen), 'bob to see alice go', 10_000)
    const strangers: Tunnel[] = []
    for (let i = 0; i < CAP; i++) {
      const stranger = agent(`stranger${i}`, introducesTo(() => bob))
      const t = (await stranger.manager.open('bob', 'udp', 5_000)).tunnel
      await t.mux.openChannel(0).opened // a channel on every place
      strangers.push(t)
    }
    const late = agent('stranger-late', introducesTo(() => bob))
    const refused = (await late.manager.open('bob', 'udp', 5_000)).tunnel
    await until(() => !refused.isOpen, 'the fifth stranger to be refused', 10_000)
    expect(refused.closedWith).toBe('BUSY')
    // alice, in bob's allow list, takes the oldest stranger's place, busy or not.
    const again = (await alice.manager.open('bob', 'udp', 5_000)).tunnel
    await until(() => strangers.filter((t) => t.isOpen).length === CAP - 1, 'a stranger to give its place', 10_000)
    expect(strangers[0]!.closedWith).toBe('BUSY')
    // Another stranger, then, finds every place busy and alice's not to take.
    const later = agent('stranger-later', introducesTo(() => bob))
    const refusedToo = (await later.manager.open('bob', 'udp', 5_000)).tunnel
    await until(() => !refusedToo.isOpen, 'the next stranger to be refused', 10_000)
    await new Promise((r) => setTimeout(r, 300)) // a GOODBYE to alice would have come by now on loopback
    expect(again.isOpen).toBe(true)
    expect(again.closedWith).toBeNull()
    recordAbuse({
      row: 'strangers hold every inbound-tunnel place with a channel open; the owner\'s allow-listed peer reconnects (review 10)',
      metric: 'the allow-listed peer\'s tunnel',
      before: 'refused BUSY for as long as the strangers kept their tunnels (idle ones too)',
      now: again.isOpen ? 'open' : 'refused',
      unit: '',
      bound: 'a peer an allow list names takes the oldest stranger\'s place and is never closed for another; a stranger finding every place busy is refused BUSY'
    })
  }, 60_000)
})
