// daemon/config-json.ts: config.json while natd runs. A change is checked against conf's
// schema before it is stored (a value conf refuses would stop the next start), and an API
// call waits for its change to reach the disk no longer than DURABLE_WAIT_MS.
import { describe, expect, it } from 'vitest'
import { ConfigJson, DURABLE_WAIT_MS } from '../../../src/daemon/config-json.js'
import { CALL_DEADLINE_MS } from '../../../src/ipc/call-deadline.js'
import { errorCode } from '../helpers.js'

interface Shape {
  forwards: Array<{ localPort: number; bind: string; peer: string; remotePort: number }>
  knownPeers: Record<string, string>
}
const INITIAL: Shape = { forwards: [], knownPeers: {} }

describe('ConfigJson schema', () => {
  it('set and setNow refuse what conf would refuse at the next start (INVALID_ARGUMENT), and change nothing', () => {
    const writes: string[] = []
    const c = new ConfigJson<Shape>('/nonexistent/config.json', INITIAL, (_f, text) => (writes.push(text), Promise.resolve()))
    const bad = [{ localPort: 70_000, bind: '127.0.0.1', peer: 'bob', remotePort: 22 }]
    expect(errorCode(() => c.set('forwards', bad))).toBe('INVALID_ARGUMENT')
    expect(errorCode(() => c.setNow('forwards', [{ localPort: 80, bind: 'not an ip', peer: 'bob', remotePort: 22 }]))).toBe('INVALID_ARGUMENT')
    expect(c.get('forwards')).toEqual([])
    expect(writes).toEqual([])
    c.set('forwards', [{ localPort: 8080, bind: '127.0.0.1', peer: 'bob', remotePort: 22 }])
    expect(c.get('forwards')).toHaveLength(1)
  })
})

describe('ConfigJson.durable', () => {
  it('answers within natctl deadline', () => {
    expect(DURABLE_WAIT_MS).toBeLessThan(CALL_DEADLINE_MS)
  })

  it('a write that does not end (a stalled disk, or one waiting out a retry delay) answers STATE_WRITE_FAILED after the wait, not never', async () => {
    const c = new ConfigJson<Shape>('/x/config.json', INITIAL, () => new Promise<void>(() => undefined))
    c.set('knownPeers', { bob: 'B'.repeat(52) })
    const err = await c.durable(50).then(
      () => null,
      (e: unknown) => e as { code?: string; message?: string }
    )
    expect(err?.code).toBe('STATE_WRITE_FAILED')
    expect(err?.message).toMatch(/not yet saved/)
  })
})
