/**
 * The NAT grid, shared by test/lab/auto-grid.test.ts (no delay), test/lab/grid-conditions.test.ts
 * (delay, jitter, loss; carrier-grade NAT) and bench/grid-conditions.ts (the full matrix):
 * `natctl open PEER` (auto) for each pair of NAT kinds, and the path it must give.
 *
 *                        ┌── r1 (easy)   ── alice
 *                        ├── r2 (easy)   ── bob
 *                        ├── r3 (hard)   ── carol
 *   server ── inet ──────┼── r4 (hard)   ── dave
 *   (rendezvous, relay)  ├── erin (public: no NAT)
 *                        ├── r6 (full cone) ── frank
 *                        ├── r7 (easy)   ──┬── gina     (one LAN)
 *                        │                 └── hank
 *                        ├── r8 (easy, RST) ── ivan
 *                        └── r9 (easy, RST) ── judy
 *
 * Where neither NAT maps per destination, `auto` settles on direct-tcp: the tunnel opens
 * on the first path, and TCP takes over when it lands within LATE_PATH_MS
 * (src/tunnel/path-race.ts) — at once with no delay behind r1-r7 (they drop unsolicited
 * packets: TCP lands within ~10 ms of UDP), a moment later under delay or after a lost
 * SYN. r8 and r9 answer unsolicited SYNs with RST: there TCP usually lands in ~0.3 s, but
 * not always within the window, so either direct path is right. The rows check the path
 * a tunnel settles on (both sides' `natctl tunnels`), not the one `open` returned on.
 * One lab serves every pair: each open is its own tunnel.
 *
 * The CGN grid adds home routers behind carrier-grade NATs (100.64.0.0/10) to that lab:
 *
 *   inet ─┬── cgnE (easy CGN, hairpins) ──┬── r (easy) ann
 *         │                               └── r (easy) ben
 *         ├── cgnN (easy CGN, no hairpin) ─┬── r (easy) cal
 *         │                               └── r (easy) dan
 *         └── cgnS (symmetric CGN) ── r (easy) eve
 */
import { expect } from 'vitest'
import type { LabSpec, LinkSpec } from './lab.ts'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { DIST, waitFor, type NatdLab } from './natd-lab.ts'
import type { ApiClient } from '../../src/ipc/client.js'

export interface GridRow {
  from: string
  to: string
  pair: string
  /** The path an `auto` tunnel must settle on, with delay or without; several when either is right. */
  path: string | string[]
}

export const GRID_SPEC: LabSpec = {
  sites: [
    { name: 'alice', nat: 'easy' },
    { name: 'bob', nat: 'easy' },
    { name: 'carol', nat: 'hard' },
    { name: 'dave', nat: 'hard' },
    { name: 'erin', nat: 'public' },
    { name: 'frank', nat: 'full' },
    { name: 'home', nat: 'easy', hosts: ['gina', 'hank'] },
    { name: 'ivan', nat: 'easy', unsolicited: 'reset' },
    { name: 'judy', nat: 'easy', unsolicited: 'reset' }
  ]
}

/**
 * Initiator, responder, what they are, and the path the tunnel settles on. Through routers
 * that answer unsolicited SYNs with RST, a TCP punch may not land within LATE_PATH_MS, so
 * either direct path is right there.
 */
export const GRID: GridRow[] = [
  { from: 'alice', to: 'bob', pair: 'easy×easy', path: 'direct-tcp' },
  { from: 'alice', to: 'carol', pair: 'easy×hard', path: 'direct-udp' },
  { from: 'dave', to: 'bob', pair: 'hard×easy', path: 'direct-udp' },
  { from: 'carol', to: 'dave', pair: 'hard×hard', path: 'relay' },
  { from: 'erin', to: 'alice', pair: 'public×easy', path: 'direct-tcp' },
  { from: 'erin', to: 'carol', pair: 'public×hard', path: 'direct-udp' },
  { from: 'frank', to: 'bob', pair: 'full cone×easy', path: 'direct-tcp' },
  { from: 'gina', to: 'hank', pair: 'same LAN', path: 'lan' },
  { from: 'ivan', to: 'judy', pair: 'easy×easy, RST routers', path: ['direct-udp', 'direct-tcp'] }
]

/** The grid's sites plus five behind carrier-grade NATs: one lab serves both grids. */
export const GRID_CGN_SPEC: LabSpec = {
  cgns: [
    { name: 'cgnE', nat: 'easy', hairpin: true },
    { name: 'cgnN', nat: 'easy' },
    { name: 'cgnS', nat: 'hard' }
  ],
  sites: [
    ...GRID_SPEC.sites,
    { name: 'ann', nat: 'easy', cgn: 'cgnE' },
    { name: 'ben', nat: 'easy', cgn: 'cgnE' },
    { name: 'cal', nat: 'easy', cgn: 'cgnN' },
    { name: 'dan', nat: 'easy', cgn: 'cgnN' },
    { name: 'eve', nat: 'easy', cgn: 'cgnS' }
  ]
}

/** Each CGN row must give the path of the grid pair it stands for (an easy CGN adds no mapping rule of its own). */
export const CGN_GRID: GridRow[] = [
  { from: 'ann', to: 'bob', pair: 'easy+CGN×easy', path: 'direct-tcp' },
  { from: 'ann', to: 'carol', pair: 'easy+CGN×hard', path: 'direct-udp' },
  // The peer is at our public address and on none of our links: the relay starts at once
  // beside the direct attempts (path-plan.ts hairpinOnly); the hairpinned direct path takes over.
  { from: 'ann', to: 'ben', pair: 'one CGN, hairpin', path: 'direct-tcp' },
  { from: 'cal', to: 'dan', pair: 'one CGN, no hairpin', path: 'relay' }
]

/**
 * Once a finding (the relay, docs/BENCHMARKS.md 2026-12-05), opened after the other rows
 * and asserted in a test of its own: behind a symmetric CGN the per-destination mappings
 * are two hops away, where TTL-2 birthday probes died; the learnt first-probe TTL
 * (src/tunnel/hop-check.ts) clears the CGN.
 */
export const CGN_GRID_FINDINGS: GridRow[] = [{ from: 'eve', to: 'bob', pair: 'easy+symmetric CGN×easy', path: 'direct-udp' }]

/**
 * Path conditions for a target RTT between two hosts on different sites: each site's link
 * and the server's get a quarter of it one way (host ⇄ host and host ⇄ server are both
 * `rttMs` apart), jitter ±10% of that delay, and 0.5% loss per link and direction (about
 * 1% on a path that crosses two links).
 */
export function linkFor(rttMs: number, lossPercent = 0.5): LinkSpec {
  const delayMs = rttMs / 4
  return { delayMs, jitterMs: delayMs / 10, lossPercent }
}

/** `spec` with the same emulated link on every site, every CGN and the server. */
export function withLinks(spec: LabSpec, link: LinkSpec): LabSpec {
  return { ...spec, serverLink: link, sites: spec.sites.map((s) => ({ ...s, link })), cgns: spec.cgns?.map((c) => ({ ...c, link })) }
}

/**
 * The path of the agent's tunnel to `peer`, asked over the API from this process (a natctl
 * is a Node process: seconds each on a loaded machine). One connection per question: natd
 * closes API connections idle for 30 s.
 */
async function tunnelPath(n: NatdLab, key: string, peer: string): Promise<string | undefined> {
  // From dist/ (built before any lab run): the benchmark runs this file with plain node, which loads no .ts behind a .js import.
  const { ApiClient: Client } = (await import(pathToFileURL(path.join(DIST, 'ipc/client.js')).href)) as { ApiClient: typeof ApiClient }
  const c = new Client(n.agents[key]!.socket)
  try {
    await c.connect()
    return (await c.call('tunnels', {})).find((t) => t.peer === peer)?.path
  } finally {
    c.close()
  }
}

export interface GridResult {
  /** The path the tunnel settled on (both sides agree), or the initiator's last one when they never agreed on a right one. */
  path: string
  /** The path `natctl open` returned on (the first that authenticated; it may move to a better one). */
  openPath: string
  tookMs: number
}

/** Starts the server and an agent on every host of the lab, registered. */
export async function startAll(n: NatdLab, opts: { registerTimeoutMs?: number } = {}): Promise<void> {
  await n.startServer()
  const hosts = Object.keys(n.lab.hosts)
  // One by one: parallel starts and status polls (a Node process each) starved the
  // 2 shared cores and timed registration out.
  for (const h of hosts) await n.startAgent(h)
  for (const h of hosts) await n.waitRegistered(h, opts.registerTimeoutMs)
}

/**
 * How long a row may take to settle after `open` returned: a late path lands within
 * LATE_PATH_MS (5 s, src/tunnel/path-race.ts), and `natctl tunnels` on a loaded machine
 * takes a while; generous, as a row that is right settles at its first poll or soon after.
 */
export const SETTLE_MS = 20_000

/**
 * The path both sides show for the row's tunnel, once it is one the row accepts (within
 * `settleMs`); otherwise what the initiator shows last (the assertion then says so).
 */
export async function settledPath(n: NatdLab, g: GridRow, settleMs = SETTLE_MS): Promise<string> {
  const ok = [g.path].flat()
  let last = 'none'
  try {
    await waitFor(async () => {
      const [mine, theirs] = await Promise.all([tunnelPath(n, g.from, g.to), tunnelPath(n, g.to, g.from)])
      last = mine ?? 'none'
      return mine !== undefined && mine === theirs && ok.includes(mine)
    }, settleMs, `${g.pair} to settle on ${ok.join(' or ')}`)
  } catch {
    return last
  }
  return last
}

/**
 * Opens each row (auto), waits for the tunnel to settle (both sides on the same path), and
 * checks that it carries a ping; returns the settled path and what `open` gave. Then
 * checks every row again: a settled tunnel stays on its path (no flip, say by the rule
 * that moves a lossy direct-tcp tunnel to UDP). Closes nothing: each pair is its own tunnel.
 */
export async function openRows(n: NatdLab, rows: GridRow[], opts: { settleMs?: number } = {}): Promise<Record<string, GridResult>> {
  const got: Record<string, GridResult> = {}
  for (const g of rows) {
    const r = await n.natctl(g.from, ['open', g.to])
    expect(r.code, `${g.pair}: ${r.stderr}`).toBe(0)
    const res = r.json as { path: string; tookMs: number }
    const before = Date.now()
    got[g.pair] = { path: await settledPath(n, g, opts.settleMs), openPath: res.path, tookMs: res.tookMs }
    process.stdout.write(`${g.pair}: open gave ${res.path} in ${res.tookMs} ms, settled on ${got[g.pair]!.path} (seen ${Date.now() - before} ms later)\n`)
    expect((await n.natctl(g.from, ['ping', g.to, '-c', '1'])).code, `${g.pair}: ping`).toBe(0)
  }
  for (const g of rows) {
    const now = await tunnelPath(n, g.from, g.to)
    // A row with several right paths may still move between them (RST routers: UDP, then a late TCP).
    if (now !== got[g.pair]!.path) got[g.pair]!.path = now !== undefined && [g.path].flat().includes(now) ? now : `${got[g.pair]!.path}, then ${now ?? 'none'}`
  }
  return got
}

/** What each row must give, shaped like the paths got (a row with several right paths shows the one got when it is one of them). */
export function expectedPaths(rows: GridRow[], got: Record<string, GridResult>): Record<string, string> {
  return Object.fromEntries(rows.map((g) => {
    const ok = [g.path].flat()
    const p = got[g.pair]?.path
    return [g.pair, p !== undefined && ok.includes(p) ? p : ok.join(' or ')]
  }))
}

export const pathsOf = (got: Record<string, GridResult>): Record<string, string> => Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.path]))
