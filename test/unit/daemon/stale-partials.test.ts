// StalePartials (src/daemon/stale-partials.ts): partials untouched for PARTIAL_MAX_AGE_MS
// are removed in the background, never one being received, at most one sweep at a time
// and one per SWEEP_INTERVAL_MS, without holding the event loop over a large directory.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { PARTIAL_MAX_AGE_MS, StalePartials, SWEEP_INTERVAL_MS } from '../../../src/daemon/stale-partials.js'
import { silentLogger } from '../../../src/protocol/log.js'

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

/** A partials' directory with `n` files named p0…, each `ageMs` old by the clock `now`. */
function partials(now: number, spec: Record<string, number>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-stale-'))
  dirs.push(dir)
  for (const [name, ageMs] of Object.entries(spec)) {
    const f = path.join(dir, name)
    fs.writeFileSync(f, name)
    const t = new Date(now - ageMs)
    fs.utimesSync(f, t, t)
  }
  return dir
}

const WEEK = PARTIAL_MAX_AGE_MS
const MINUTE = 60_000

describe('StalePartials', () => {
  it('removes partials untouched for a week; keeps recent ones and one being received', async () => {
    const clock = { now: () => Date.now() }
    const dir = partials(clock.now(), { old: WEEK + MINUTE, older: 3 * WEEK, recent: WEEK - MINUTE, receiving: 5 * WEEK })
    const stale = new StalePartials((key) => key === 'receiving', silentLogger, clock)
    await expect(stale.sweep(dir)).resolves.toBe(2)
    expect(fs.readdirSync(dir).sort()).toEqual(['receiving', 'recent'])
  })

  it('one sweep at a time, and at most one per SWEEP_INTERVAL_MS', async () => {
    let t = Date.now()
    const clock = { now: () => t }
    const dir = partials(t, { a: WEEK + MINUTE })
    const stale = new StalePartials(() => false, silentLogger, clock)
    const first = stale.sweep(dir)
    expect(first).not.toBeNull()
    expect(stale.sweep(dir)).toBeNull() // running
    await first
    fs.writeFileSync(path.join(dir, 'b'), 'b')
    fs.utimesSync(path.join(dir, 'b'), new Date(t - 2 * WEEK), new Date(t - 2 * WEEK))
    t += SWEEP_INTERVAL_MS - 1
    expect(stale.sweep(dir)).toBeNull() // too soon
    expect(fs.readdirSync(dir)).toEqual(['b'])
    t += 1
    await expect(stale.sweep(dir)).resolves.toBe(1)
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('a directory of 1,000 stale partials does not hold the event loop: other work runs while they go', async () => {
    const clock = { now: () => Date.now() }
    const spec: Record<string, number> = {}
    for (let i = 0; i < 1000; i++) spec[`p${i}`] = WEEK + MINUTE
    const dir = partials(clock.now(), spec)
    let removed = 0
    const log = { ...silentLogger, info: (msg: string) => (msg === 'removed a stale partial file' ? removed++ : undefined) }
    const stale = new StalePartials(() => false, log, clock)
    const seen: number[] = []
    let sweeping = true
    // A callback of the event loop's, again and again while the sweep runs: each records how many partials were gone by then.
    const tick = (): void => {
      if (!sweeping) return
      seen.push(removed)
      setImmediate(tick)
    }
    const run = stale.sweep(dir)!
    setImmediate(tick)
    await expect(run).resolves.toBe(1000)
    sweeping = false
    expect(seen[0]).toBe(0) // the sweep returned before doing the work
    expect(seen.filter((n) => n > 0 && n < 1000).length).toBeGreaterThan(10) // and the loop ran on while it went
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('says when a partial is being removed, so a new attempt of its transfer opens it only after', async () => {
    const clock = { now: () => Date.now() }
    const dir = partials(clock.now(), { k: WEEK + MINUTE })
    const stale = new StalePartials(() => false, silentLogger, clock)
    const run = stale.sweep(dir)!
    let seen: Promise<void> | undefined
    while (seen === undefined && fs.existsSync(path.join(dir, 'k'))) {
      await new Promise<void>((resolve) => setImmediate(resolve))
      seen = stale.removing('k')
    }
    if (seen) {
      await seen
      expect(fs.existsSync(path.join(dir, 'k'))).toBe(false)
    }
    await run
    expect(stale.removing('k')).toBeUndefined()
    expect(fs.existsSync(path.join(dir, 'k'))).toBe(false)
  })
})
