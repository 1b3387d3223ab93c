/**
 * Abuse rows, agent side: what one registered agent can make a victim agent spend by
 * asking the server for introductions (issue "Abuse resistance": punching).
 *
 *   ┌──────────────────────────────────────────────────────────┐
 *   │ $id-h1-1  (victim host, in the NAT lab)                  │
 *   │   node punch-victim.ts: the real TunnelManager + Paths  │
 *   │   (dist/), accept() fed the attacker's introductions     │
 *   │   10.77.0.0/24: local (ip route add local … dev lo)      │
 *   │   iptables OUTPUT counters: SYNs and probes to it        │
 *   └──────────────────────────────────────────────────────────┘
 *
 * The attacker's LAN candidates (8 of them, the most an introduction carries) and its
 * "public" endpoint are 10.77.0.x: private, so the agent accepts them, and local to
 * the victim's namespace, so every SYN is refused at once (the worst case: the fastest
 * retries) and no packet leaves the namespace. A plain loopback test could not do
 * this: 127.x is not a LAN address, and 10.x would leave by the default route.
 */
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { PUNCH_BUDGET_DEFAULTS } from '../../src/tunnel/budget.js'
import { BIRTHDAY_SOCKETS } from '../../src/tunnel/punch.js'
import { createLab, labAvailable, type Lab } from '../lab/lab.js'
import { assertBuilt } from '../lab/natd-lab.js'
import { recordAbuse } from './record.js'

const VICTIM = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/punch-victim.ts')
const ATTACKER_NET = '10.77.0.0/24'
/** One introduction: the responder's punch deadline (ACCEPT_TIMEOUT_MS in daemon/agent.ts). */
const INTRO_S = 15
const B = PUNCH_BUDGET_DEFAULTS

interface VictimReport {
  cpuMs: number
  fdsBefore: number
  fdsAfter10?: number
  fdsAfter80?: number
  stillWorks?: boolean
  birthdaysAtOnce?: number
  punchingAtOnce?: number
  acted: number
  refusals: Record<string, { lines: number; count: number }>
  warnLines: number
}

async function withVictim(fn: (lab: Lab, ns: string) => Promise<void>): Promise<void> {
  assertBuilt()
  const lab = await createLab({ sites: [{ name: 'victim', nat: 'hard' }] })
  try {
    const ns = lab.hosts.victim!.ns
    const run = async (args: string[]): Promise<void> => {
      const r = await lab.exec(ns, args)
      if (r.code !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`)
    }
    await run(['ip', 'route', 'add', 'local', ATTACKER_NET, 'dev', 'lo'])
    await run(['iptables', '-I', 'OUTPUT', '-p', 'tcp', '--syn', '-d', ATTACKER_NET, '-m', 'comment', '--comment', 'natd-syn', '-j', 'ACCEPT'])
    await run(['iptables', '-I', 'OUTPUT', '-p', 'udp', '-d', ATTACKER_NET, '-m', 'comment', '--comment', 'natd-udp', '-j', 'ACCEPT'])
    await fn(lab, ns)
  } finally {
    await lab.teardown()
  }
}

/** Packets counted by our OUTPUT rules since the last zeroing. */
async function counters(lab: Lab, ns: string): Promise<{ syn: number; udp: number }> {
  const out = (await lab.exec(ns, ['iptables', '-L', 'OUTPUT', '-v', '-x', '-n'])).stdout
  const count = (tag: string): number => Number(out.split('\n').find((l) => l.includes(tag))?.trim().split(/\s+/)[0] ?? NaN)
  return { syn: count('natd-syn'), udp: count('natd-udp') }
}

async function victim(lab: Lab, ns: string, mode: string): Promise<VictimReport> {
  await lab.exec(ns, ['iptables', '-Z', 'OUTPUT'])
  const r = await lab.exec(ns, [process.execPath, VICTIM, mode], { timeoutMs: 40_000 })
  if (r.code !== 0) throw new Error(`punch-victim ${mode} exited ${r.code}: ${r.stderr}`)
  const report = JSON.parse(r.stdout.trim().split('\n').pop()!) as VictimReport
  process.stdout.write(`punch-victim ${mode}: ${JSON.stringify(report)}\n`)
  return report
}

/** Log lines of refusals, whatever their count: one at once, then one per 10 s window. */
function refusalLines(r: VictimReport): number {
  return Object.values(r.refusals).reduce((n, x) => n + x.lines, 0)
}

describe.skipIf(!labAvailable())('abuse: punching (agent side)', () => {
  it('one hostile introduction with 8 LAN candidates that refuse at once: SYNs (via tcp) and probes (via udp) the victim sends in 15 s', async () => {
    await withVictim(async (lab, ns) => {
      const tcp = await victim(lab, ns, 'tcp')
      const syns = (await counters(lab, ns)).syn
      process.stdout.write(`hostile introduction via tcp: ${syns} SYNs in ${INTRO_S} s, ${tcp.cpuMs} ms CPU\n`)
      // Per punch: its burst, then its rate; the peer's and global buckets are larger.
      const synBound = B.punchSynBurst + B.punchSynsPerS * (INTRO_S + 1) // + 1 s: the deadline fires a moment after 15 s
      recordAbuse({ row: 'hostile introduction via tcp, 8 LAN candidates', metric: 'SYNs sent by the victim in 15 s', before: '75,000-95,000 (4.5-5.7 MB)', now: syns, unit: 'SYNs', bound: `<= ${synBound} (burst ${B.punchSynBurst}, then ${B.punchSynsPerS}/s)` })
      recordAbuse({ row: 'hostile introduction via tcp, 8 LAN candidates', metric: 'victim CPU in 15 s', before: '6.5 s', now: tcp.cpuMs, unit: 'ms', bound: '< 2,000 ms' })
      expect(syns).toBeGreaterThan(0)
      expect(syns).toBeLessThanOrEqual(synBound)
      expect(tcp.cpuMs).toBeLessThan(2_000)
      expect(refusalLines(tcp)).toBeLessThanOrEqual(3) // "refused" once, "refused again" per 10 s

      await victim(lab, ns, 'udp')
      const probes = (await counters(lab, ns)).udp
      process.stdout.write(`hostile introduction via udp: ${probes} probes in ${INTRO_S} s\n`)
      // 4 LAN candidates for 1 s every 20 ms (plus the first), the public one every 20 ms for 2 s then every 100 ms.
      const probeBound = 4 * (1 + 1_000 / 20) + (1 + 2_000 / 20 + (INTRO_S * 1000 - 2_000) / 100) + 20
      recordAbuse({ row: 'hostile introduction via udp, 8 LAN candidates', metric: 'probes sent by the victim in 15 s', before: '1,760', now: probes, unit: 'probes', bound: `<= ${probeBound}` })
      expect(probes).toBeGreaterThan(0)
      expect(probes).toBeLessThanOrEqual(probeBound)
    })
  }, 90_000)

  it('introductions from strangers claiming nat=easy to a hard-NAT victim: open fds after 10 and after 80, and the victim still opens files and sockets', async () => {
    await withVictim(async (lab, ns) => {
      const r = await victim(lab, ns, 'birthday')
      const bound = r.fdsBefore + B.birthdayPunches * BIRTHDAY_SOCKETS + 50
      recordAbuse({ row: 'introductions to a hard-NAT victim claiming nat=easy', metric: 'victim open fds after 10 introductions', before: '2,586', now: r.fdsAfter10!, unit: 'fds', bound: `< ${bound}` })
      recordAbuse({ row: 'introductions to a hard-NAT victim claiming nat=easy', metric: 'victim open fds after 80 introductions', before: '20,000 (the limit: local API refused, config reads failed)', now: r.fdsAfter80!, unit: 'fds', bound: `< ${bound}` })
      expect(r.fdsAfter10).toBeLessThan(bound)
      expect(r.fdsAfter80).toBeLessThan(bound)
      expect(r.fdsAfter80).toBeLessThan(600)
      expect(r.birthdaysAtOnce).toBeLessThanOrEqual(B.birthdayPunches)
      expect(r.stillWorks).toBe(true)
      // 80 strangers, 78 refused: a line at once and a count per window, not a line each.
      expect(refusalLines(r)).toBeLessThanOrEqual(4)
    })
  }, 60_000)

  it('one peer asks for 50 introductions in a second: the victim acts on the first few, refuses the rest, and logs that once', async () => {
    await withVictim(async (lab, ns) => {
      const r = await victim(lab, ns, 'flood')
      const bound = B.peerIntroBurst + Math.ceil(B.peerIntrosPerS * 1)
      recordAbuse({ row: 'one peer floods introductions (50 in 1 s)', metric: 'introductions the victim acts on in that second', before: '50 (all)', now: r.acted, unit: 'introductions', bound: `<= ${bound} (burst ${B.peerIntroBurst}, then ${B.peerIntrosPerS}/s; ${B.peerPunches} punching at once)` })
      expect(r.acted).toBeLessThanOrEqual(bound)
      expect(r.acted).toBeGreaterThanOrEqual(B.peerIntroBurst)
      expect(r.punchingAtOnce).toBeLessThanOrEqual(B.peerPunches)
      // "refused" at once, "refused again" with the count when the window ends (here: at shutdown).
      expect(r.refusals['RATE_LIMITED introductions']).toEqual({ lines: 2, count: 50 - r.acted })
      expect(refusalLines(r)).toBeLessThanOrEqual(4)
    })
  }, 60_000)
})

// The fixture imports dist/: make sure this is not an old build (npm test builds first).
if (labAvailable()) execFileSync('test', ['-f', path.join(path.dirname(VICTIM), '../../../dist/tunnel/budget.js')])
