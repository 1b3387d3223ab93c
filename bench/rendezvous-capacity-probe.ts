/**
 * Preloaded into natd-rendezvous by bench/rendezvous-capacity.ts
 * (`node --expose-gc --import ./bench/rendezvous-capacity-probe.ts dist/rendezvous/main.js`),
 * driven by lines on the server's stdin, answering one line each on stderr:
 *
 *   mark   starts a measurement: event-loop delay and GC pauses count from now
 *          -> BENCH {"kind":"mark"}
 *   stats  -> BENCH {"kind":"stats","loopDelayP99Ms":…,"loopDelayMaxMs":…,"gcMaxMs":…,"gcTotalMs":…,"gcCount":…}
 *   heap   a full GC first, then -> BENCH {"kind":"heap","heapUsed":…,"external":…,"rss":…,"rssParts":{…}}
 *          rssParts says where the RSS is (bytes): V8's heap pages (committed), the young
 *          generation's share of them, array buffers (typed arrays), and the process's
 *          anonymous and file-backed resident pages (/proc/self/smaps_rollup)
 *
 * so the bench can tell a server that stalls (GC, a long synchronous walk) from one that
 * merely waits for a CPU, and read memory per agent without garbage and heap headroom.
 * When stdin closes (the bench is gone, even killed) the server exits: nothing is left
 * running. It touches nothing else in the server.
 */
import fs from 'node:fs'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import v8 from 'node:v8'

/** Event-loop delay sampling period; the histogram holds whole periods, so it is taken off. */
const LOOP_RESOLUTION_MS = 5

const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS })
loop.enable()
let gc = { maxMs: 0, totalMs: 0, count: 0 }
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gc.maxMs = Math.max(gc.maxMs, e.duration)
    gc.totalMs += e.duration
    gc.count++
  }
}).observe({ entryTypes: ['gc'] })

function answer(fields: Record<string, unknown>): void {
  process.stderr.write(`BENCH ${JSON.stringify(fields)}\n`)
}

function run(command: string): void {
  switch (command) {
    case 'mark':
      loop.reset()
      gc = { maxMs: 0, totalMs: 0, count: 0 }
      return answer({ kind: 'mark' })
    case 'stats':
      return answer({
        kind: 'stats',
        loopDelayP99Ms: Math.max(0, loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS),
        loopDelayMaxMs: Math.max(0, loop.max / 1e6 - LOOP_RESOLUTION_MS),
        gcMaxMs: gc.maxMs,
        gcTotalMs: gc.totalMs,
        gcCount: gc.count
      })
    case 'heap': {
      ;(globalThis as { gc?: () => void }).gc?.()
      const m = process.memoryUsage()
      return answer({ kind: 'heap', heapUsed: m.heapUsed, external: m.external, rss: m.rss, rssParts: rssParts(m) })
    }
  }
}

/** Where the resident memory is: V8's heap, its young generation, array buffers, and anonymous vs file-backed pages. */
function rssParts(m: NodeJS.MemoryUsage): Record<string, number> {
  const young = v8.getHeapSpaceStatistics().filter((s) => s.space_name === 'new_space' || s.space_name === 'new_large_object_space')
  const rollup = fs.readFileSync('/proc/self/smaps_rollup', 'utf8')
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN) * 1024
  return {
    heapCommitted: m.heapTotal,
    youngCommitted: young.reduce((sum, s) => sum + s.physical_space_size, 0),
    arrayBuffers: m.arrayBuffers,
    anonymous: kb('Anonymous'),
    fileBacked: kb('Rss') - kb('Anonymous')
  }
}

let partial = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk: string) => {
  const lines = (partial + chunk).split('\n')
  partial = lines.pop()!
  for (const line of lines) run(line.trim())
})
process.stdin.on('end', () => process.exit(0))
