// TCP hole punching (src/tunnel/tcp-punch.ts) on loopback, with real sockets: a connection
// from our fixed port is used only once it authenticates as the expected key; a peer with
// another key is dropped with RST; refused attempts are retried one round trip later (on
// loopback: the TCP_RETRY_FLOOR_MS floor, jittered), each SYN within the budget, until
// the deadline, and leave nothing on the port; abort stops at once.
import net from 'node:net'
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, type KeyPair } from '../../../src/protocol/identity.js'
import { silentLogger, systemClock, type Logger } from '../../../src/protocol/log.js'
import { PunchBudget } from '../../../src/tunnel/budget.js'
import { punchTcp, type TcpPunchResult } from '../../../src/tunnel/tcp-punch.js'
import { freePort } from '../helpers.js'
import { tcpPeer } from './tcp-peer.js'

const clock = systemClock

function punch(from: number, to: number, me: KeyPair, them: KeyPair, initiator: boolean, deadlineMs: number, signal = new AbortController().signal, synWaitMs?: () => number): Promise<TcpPunchResult> {
  return punchTcp(
    { localPort: from, candidates: [{ endpoint: { host: '127.0.0.1', port: to }, kind: 'public' }], initiator, deadlineMs, expectedKey: them.publicKey },
    { keyPair: me, clock, log: silentLogger, ...(synWaitMs ? { synWaitMs } : {}) },
    signal
  )
}

function recordingLogger(): { log: Logger; warnings: string[] } {
  const warnings: string[] = []
  const log: Logger = { ...silentLogger, warn: (m: string) => void warnings.push(m), child: () => log }
  return { log, warnings }
}

// Two agents meeting by simultaneous open is the NAT lab's test (test/lab/tcp.test.ts):
// on loopback a SYN is refused before the other side can send its own.
describe('TCP punching', () => {
  it('a candidate that answers gives a connection authenticated as the expected key, from our fixed port', async () => {
    const [alice, bob] = [generateKeyPair(), generateKeyPair()]
    const peer = await tcpPeer(bob)
    const pa = await freePort()
    try {
      const r = await punch(pa, peer.port, alice, bob, true, 3_000)
      expect(r).toMatchObject({ endpoint: { host: '127.0.0.1', port: peer.port }, kind: 'public', attempts: 1 })
      expect((r.session.rawStream as unknown as net.Socket).localPort).toBe(pa)
      const got = new Promise<Buffer>((resolve) => peer.sessions[0]!.once('data', resolve))
      r.session.write(Buffer.from('over the punched path'))
      expect((await got).toString()).toBe('over the punched path')
      r.session.destroy()
    } finally {
      peer.close()
    }
  }, 15_000)

  it('a peer with another key is dropped, its connection reset; the punch fails at its deadline, naming what it tried', async () => {
    const [alice, bob, mallory] = [generateKeyPair(), generateKeyPair(), generateKeyPair()]
    const peer = await tcpPeer(mallory)
    const pa = await freePort()
    const { log, warnings } = recordingLogger()
    try {
      const started = Date.now()
      const err = await punchTcp(
        { localPort: pa, candidates: [{ endpoint: { host: '127.0.0.1', port: peer.port }, kind: 'public' }], initiator: true, deadlineMs: 1_000, expectedKey: bob.publicKey },
        { keyPair: alice, clock, log },
        new AbortController().signal
      ).then(() => null, (e: unknown) => e)
      expect(err).toBeInstanceOf(NatdError)
      expect(err).toMatchObject({ code: 'PUNCH_TIMEOUT', message: expect.stringMatching(new RegExp(`no direct TCP path in 1000 ms: 1 connect attempts to public 127\\.0\\.0\\.1:${peer.port}`)) })
      expect(Date.now() - started).toBeGreaterThanOrEqual(900)
      expect(warnings).toEqual(['dropped a TCP connection with the wrong key'])
      expect(peer.sessions).toHaveLength(1)
      expect(peer.sessions[0]!.destroyed).toBe(true)
    } finally {
      peer.close()
    }
  }, 15_000)

  it('a refused candidate is retried about every TCP_RETRY_FLOOR_MS until the deadline, never faster', async () => {
    const [pa, closed] = [await freePort(), await freePort()]
    const err = await punch(pa, closed, generateKeyPair(), generateKeyPair(), true, 300).then(() => null, (e: unknown) => e)
    expect(err).toMatchObject({ code: 'PUNCH_TIMEOUT', message: expect.stringContaining('ECONNREFUSED') })
    const attempts = Number(/(\d+) connect attempts/.exec((err as Error).message)?.[1])
    expect(attempts).toBeGreaterThan(20)
    // Jittered over 0-2 floors; the event loop (setImmediate) is the bound below one floor.
    expect(attempts).toBeLessThan(300 * 20)
    // Nothing is left on the port: it connects again at once.
    const server = net.createServer((s) => s.destroy())
    await new Promise<void>((resolve) => server.listen(closed, '127.0.0.1', resolve))
    try {
      const sock = net.connect({ host: '127.0.0.1', port: closed, localPort: pa })
      await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject))
      sock.destroy()
    } finally {
      server.close()
    }
  }, 15_000)

  it('SYNs wait for the budget: a burst of 20 then 50 a second gives about 20 + 50 × 0.5 in half a second', async () => {
    const [pa, closed] = [await freePort(), await freePort()]
    const budget = new PunchBudget(clock, { punchSynBurst: 20, punchSynsPerS: 50 })
    const err = await punch(pa, closed, generateKeyPair(), generateKeyPair(), true, 500, undefined, budget.synGate('peer')).then(() => null, (e: unknown) => e as Error)
    const attempts = Number(/(\d+) connect attempts/.exec(err!.message)?.[1])
    expect(attempts).toBeGreaterThanOrEqual(30)
    expect(attempts).toBeLessThanOrEqual(20 + 50 * 0.5 + 2)
  }, 15_000)

  it('abort stops at once with ABORTED', async () => {
    const [pa, closed] = [await freePort(), await freePort()]
    const abort = new AbortController()
    const started = Date.now()
    const p = punch(pa, closed, generateKeyPair(), generateKeyPair(), true, 10_000, abort.signal)
    setTimeout(() => abort.abort(), 50)
    await expect(p).rejects.toMatchObject({ code: 'ABORTED', message: 'TCP punching aborted' })
    expect(Date.now() - started).toBeLessThan(2_000)
  }, 15_000)
})
