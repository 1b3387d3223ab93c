/**
 * Roaming stall (issue #15): how long a forwarded connection carrying data stops after
 * connectivity returns, when a router comes back with a new public port or a new public
 * address, when a host moves site (Wi-Fi → LTE), and after a 10 s outage; then a
 * `natctl cp` of 256 MiB across each fault (the lab test copies less to keep its budget).
 * At each RTT (delay only on every link, the lab's link emulator), daemon defaults.
 *
 *   server ── inet ──┬── r1 (easy NAT) ── alice ── forward :9000 ──┐
 *                    ├── r2 (easy NAT) ── bob   ── echo :7000 ◀────┘
 *                    └── r3 (easy NAT) ── carol (idle; the LTE network bob moves to)
 *
 * Stall after connectivity returns: the longest gap between two arrivals of echoed data
 * (test/lab/fixtures/paced-echo-client.ts), counted from when the fault ended (at once
 * for a new port, address or site). Target (issue #15): ≤ 2 s at 20 ms RTT.
 *
 *   node bench/roaming.ts [--rtts 20,100] [--reps N] [--faults new_port,…] [--cp-mib N] [--skip-cp] [--json FILE]
 *
 * Run by `npm run bench` (section `roaming`); needs root (network namespaces).
 */
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLab, labAvailable, type LabSpec } from '../test/lab/lab.ts'
import { NatdLab, waitFor } from '../test/lab/natd-lab.ts'
import { pacedEcho } from '../test/lab/paced-echo.ts'
import { partialBytes, sha256File, writeRandomFile } from '../test/lab/random-file.ts'

const argv = process.argv.slice(2)
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined)
const QUICK = argv.includes('--quick')
const RTTS = (opt('--rtts') ?? '20,100').split(',').map(Number)
const REPS = Number(opt('--reps')) || (QUICK ? 2 : 3)
const CP_MIB = Number(opt('--cp-mib')) || (QUICK ? 64 : 256)
const SKIP_CP = argv.includes('--skip-cp')
const JSON_OUT = opt('--json')
const MiB = 1024 * 1024
const ECHO_PORT = 7000
const FWD_PORT = 9000
const PACE_BYTES_PER_S = 2 * MiB
/** The paced connection runs this long; the fault comes FAULT_AFTER_MS into it. */
const PACE_SECONDS = 8
const FAULT_AFTER_MS = 2_000
const OUTAGE_MS = 10_000

type Fault = 'new_port' | 'new_address' | 'move_site' | 'outage_10s'
const ALL_FAULTS: Fault[] = ['new_port', 'new_address', 'move_site', 'outage_10s']
const FAULTS = (opt('--faults')?.split(',') ?? ALL_FAULTS) as Fault[]
for (const f of FAULTS) if (!ALL_FAULTS.includes(f)) throw new Error(`--faults: no fault ${f} (${ALL_FAULTS.join(', ')})`)

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

/** Makes `fault` happen (on bob's site wherever bob is now); resolves when connectivity is back (epoch ms). */
async function inject(n: NatdLab, fault: Fault): Promise<number> {
  const bobSite = n.lab.hosts.bob!.site // 'lte' after an odd number of moves
  switch (fault) {
    case 'new_port':
      await n.lab.renewPort(bobSite)
      break
    case 'new_address':
      await n.lab.renumber('alice')
      break
    case 'move_site':
      await n.lab.moveHost('bob', bobSite === 'bob' ? 'lte' : 'bob')
      break
    case 'outage_10s':
      await n.lab.outage(bobSite, OUTAGE_MS)
      break
  }
  return Date.now()
}

interface FaultResult {
  stall_after_ms: number[]
  stall_after_median_ms: number
  failures: number
  cp?: { mib: number; ok: boolean; ms: number; error?: string }
}

async function atRtt(rttMs: number): Promise<Record<string, FaultResult>> {
  const link = { delayMs: rttMs / 4, jitterMs: 0, lossPercent: 0 }
  const spec: LabSpec = {
    serverLink: link,
    sites: [
      { name: 'alice', nat: 'easy', link },
      { name: 'bob', nat: 'easy', link },
      { name: 'lte', nat: 'easy', hosts: ['carol'], link }
    ]
  }
  const n = new NatdLab(await createLab(spec))
  let failed = true
  const out: Record<string, FaultResult> = {}
  try {
    await n.startServer([])
    await n.startAgent('alice')
    await n.startAgent('bob')
    await n.waitRegistered('alice', 60_000)
    await n.waitRegistered('bob', 60_000)
    await n.startEcho('bob', ECHO_PORT)
    await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'alice'])
    await n.natctl('alice', ['forward', 'add', String(FWD_PORT), `bob:${ECHO_PORT}`])
    const open = await n.natctl('alice', ['open', 'bob'], { timeoutMs: 60_000 })
    if (open.code !== 0) throw new Error(`open failed: ${open.stderr}`)
    const inbox = path.join(n.agents.bob!.stateDir, 'inbox')
    for (const fault of FAULTS) {
      const stalls: number[] = []
      let failures = 0
      for (let i = 0; i < REPS; i++) {
        const echo = pacedEcho(n, 'alice', FWD_PORT, PACE_SECONDS * PACE_BYTES_PER_S, PACE_BYTES_PER_S)
        await sleep(FAULT_AFTER_MS)
        const backAt = await inject(n, fault)
        const e = await echo
        if (!e.ok) {
          failures++
          process.stderr.write(`${rttMs} ms ${fault}: connection failed: ${JSON.stringify(e)}\n`)
          continue
        }
        stalls.push(e.maxGapEndedAt >= backAt ? e.maxGapEndedAt - backAt : 0)
        // Every gap after the fault (ms after it: length), to tell the resume's gap from a later one.
        const gaps = (e.gaps ?? []).filter((g) => g.endedAt >= backAt).map((g) => `+${g.endedAt - backAt}:${g.ms}`).join(' ')
        process.stderr.write(`${rttMs} ms ${fault}: stall after connectivity returned ${stalls.at(-1)} ms (longest gap ${e.maxGapMs} ms; gaps ended at +ms:ms ${gaps}; fault ended ${new Date(backAt).toISOString()})\n`)
        await sleep(1_000)
      }
      out[fault] = { stall_after_ms: stalls, stall_after_median_ms: stalls.length ? median(stalls) : -1, failures }
      if (SKIP_CP) continue
      // One copy of CP_MIB across the same fault, once a part of it has arrived.
      const file = path.join(n.dir, `cp-${fault}.bin`)
      const sha = writeRandomFile(file, CP_MIB * MiB)
      const started = Date.now()
      const cp = n.natctl('alice', ['cp', file, 'bob:'], { timeoutMs: 600_000 })
      await waitFor(() => partialBytes(inbox) >= (CP_MIB * MiB) / 8, 120_000, 'bob has part of the file')
      await inject(n, fault)
      const c = await cp
      const got = path.join(inbox, path.basename(file))
      const ok = c.code === 0 && (c.json as { sha256?: string } | null)?.sha256 === sha && fs.existsSync(got) && sha256File(got) === sha
      out[fault]!.cp = { mib: CP_MIB, ok, ms: Date.now() - started, ...(ok ? {} : { error: c.stderr.trim() }) }
      process.stderr.write(`${rttMs} ms ${fault}: cp ${CP_MIB} MiB ${ok ? 'intact' : `FAILED ${c.stderr.trim()}`} in ${Date.now() - started} ms\n`)
      fs.rmSync(got, { force: true })
      fs.rmSync(file, { force: true })
    }
    failed = false
    return out
  } finally {
    // ROAMING_LOG_DIR: keep the agents' and the server's logs (where the stall went).
    const keep = process.env.ROAMING_LOG_DIR
    if (keep) for (const f of fs.readdirSync(n.dir).filter((f) => f.endsWith('.log'))) fs.copyFileSync(path.join(n.dir, f), path.join(keep, `${rttMs}ms-${f}`))
    await n.teardown(failed)
  }
}

if (!labAvailable()) {
  console.error('bench/roaming.ts needs root (network namespaces)')
  process.exit(2)
}
const out: Record<string, unknown> = { date: new Date().toISOString(), reps: REPS, pace_MiBps: PACE_BYTES_PER_S / MiB }
for (const rtt of RTTS) out[`rtt_${rtt}ms`] = await atRtt(rtt)
console.log(JSON.stringify(out, null, 2))
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 2) + '\n')
