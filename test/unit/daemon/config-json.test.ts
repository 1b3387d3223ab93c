// daemon/config-json.ts: config.json while natd runs. An API call waits for its change to
// reach the disk no longer than DURABLE_WAIT_MS.
import { describe, expect, it } from 'vitest'
import { ConfigJson, DURABLE_WAIT_MS } from '../../../src/daemon/config-json.js'
import { CALL_DEADLINE_MS } from '../../../src/ipc/call-deadline.js'

interface Shape {
  forwards: Array<{ localPort: number; bind: string; peer: string; remotePort: number }>
  knownPeers: Record<string, string>
}
const INITIAL: Shape = { forwards: [], knownPeers: {} }

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
