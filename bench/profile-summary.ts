/**
 * Summarises V8 CPU profiles (`node --cpu-prof`, e.g. from `bench/run.ts --cpu-prof DIR`):
 * per profile, the share of wall time idle, in GC, and the functions with the most self
 * time (with their file), so the hot spots of a forward can be read without DevTools.
 *
 *   node bench/profile-summary.ts DIR_OR_FILE… [--top N]
 */
import fs from 'node:fs'
import path from 'node:path'

interface ProfileNode {
  id: number
  children?: number[]
  callFrame: { functionName: string; url: string; lineNumber: number }
}
interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

const argv = process.argv.slice(2)
const TOP = argv.includes('--top') ? Number(argv[argv.indexOf('--top') + 1]) : 20
/** --callers NAME: also print the call paths (3 frames up) that spend self time in NAME. */
const CALLERS = argv.includes('--callers') ? argv[argv.indexOf('--callers') + 1]! : null
const inputs = argv.filter((a, i) => !a.startsWith('--') && argv[i - 1] !== '--top' && argv[i - 1] !== '--callers')
const files = inputs.flatMap((p) => (fs.statSync(p).isDirectory() ? fs.readdirSync(p).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(p, f)) : [p]))

for (const file of files) {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile
  const byId = new Map(prof.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const name = (id: number): string => {
    const f = byId.get(id)!.callFrame
    return `${f.functionName || '(anonymous)'}${f.url ? `@${path.basename(f.url)}:${f.lineNumber + 1}` : ''}`
  }
  const callers = new Map<string, number>()
  const self = new Map<string, number>()
  let total = 0
  for (let i = 0; i < prof.samples.length; i++) {
    const n = byId.get(prof.samples[i]!)!
    const dt = prof.timeDeltas[i + 1] ?? 0
    const f = n.callFrame
    const key = f.url ? `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|src)\//, '$1/')}:${f.lineNumber + 1}` : f.functionName
    self.set(key, (self.get(key) ?? 0) + dt)
    total += dt
    if (CALLERS && f.functionName === CALLERS) {
      const chain: string[] = []
      for (let id = parent.get(n.id); id !== undefined && chain.length < 3; id = parent.get(id)) chain.push(name(id))
      const k = chain.join(' < ')
      callers.set(k, (callers.get(k) ?? 0) + dt)
    }
  }
  const ms = (us: number): string => `${(us / 1000).toFixed(0)} ms`
  const pct = (us: number): string => `${((us / total) * 100).toFixed(1)}%`
  const idle = self.get('(idle)') ?? 0
  const busy = total - idle
  console.log(`\n${path.basename(file)}: ${ms(total)} sampled, busy ${ms(busy)} (${pct(busy)}), GC ${pct(self.get('(garbage collector)') ?? 0)}`)
  const top = [...self.entries()].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, TOP)
  for (const [k, v] of top) console.log(`  ${((v / busy) * 100).toFixed(1).padStart(5)}% of busy  ${ms(v).padStart(8)}  ${k}`)
  if (CALLERS) {
    console.log(`  callers of ${CALLERS}:`)
    for (const [k, v] of [...callers.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log(`    ${ms(v).padStart(8)}  ${k}`)
  }
}
