/**
 * Prints the abuse suite's figures (test/abuse/record.ts) as a table: attack, metric,
 * before, now, bound. Usage: node scripts/abuse-report.ts bench/results/abuse-latest.jsonl
 */
import fs from 'node:fs'

const file = process.argv[2] ?? 'bench/results/abuse-latest.jsonl'
if (!fs.existsSync(file)) {
  console.log(`no abuse figures in ${file}`)
  process.exit(0)
}
const rows = fs
  .readFileSync(file, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l) as { row: string; metric: string; before: string; now: number | string; unit: string; bound: string })
const cells = rows.map((r) => [r.row, r.metric, r.before, `${r.now} ${r.unit}`.trim(), r.bound])
const head = ['ATTACK', 'METRIC', 'BEFORE', 'NOW', 'BOUND']
const widths = head.map((h, i) => Math.min(60, Math.max(h.length, ...cells.map((c) => c[i]!.length))))
const line = (c: string[]): string => c.map((v, i) => (v.length > widths[i]! ? v.slice(0, widths[i]! - 1) + '…' : v.padEnd(widths[i]!))).join('  ').trimEnd()
console.log(line(head))
for (const c of cells) console.log(line(c))
