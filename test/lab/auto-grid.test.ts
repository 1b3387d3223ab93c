/**
 * The NAT grid, as users run it: `natctl open PEER` (no --via, so `auto`) for each pair of
 * NAT kinds, and the path it gives (topology and rows in test/lab/grid.ts). The
 * per-transport tests (tunnel, tcp, hard-nat, relay) force a path with --via; this one
 * asserts what `auto` picks.
 */
import { describe, expect, it } from 'vitest'
import { GRID, GRID_SPEC, expectedPaths, openRows, pathsOf, startAll } from './grid.js'
import { labAvailable } from './lab.js'
import { withLab } from './natd-lab.js'

describe.skipIf(!labAvailable())('the NAT grid: what `natctl open PEER` gives each pair', () => {
  it(`auto picks ${GRID.map((g) => `${g.pair} → ${[g.path].flat().join(' or ')}`).join(', ')}; both sides agree and the tunnel carries a ping`, async () => {
    await withLab(GRID_SPEC, async (n) => {
      await startAll(n)
      const got = await openRows(n, GRID)
      process.stdout.write(`auto grid: ${JSON.stringify(pathsOf(got))}\n`)
      expect(pathsOf(got)).toEqual(expectedPaths(GRID, got))
    })
  }, 240_000)
})
