// Messages (src/daemon/messages.ts) between two Messages instances over a real Mux pair on
// an in-memory message pipe; the tunnel manager is a stub that hands out that one tunnel.
//
//   alice: Messages ── Mux A ═══ pipe ═══ Mux B ── Messages: bob (state dir in a temp dir)
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { Messages, MESSAGE_SERVICE, messageIdOf } from '../../../src/daemon/messages.js'
import type { MessageInfo } from '../../../src/ipc/schema.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, type Logger } from '../../../src/protocol/log.js'
import { decodeTransfer, encodeTransfer } from '../../../src/protocol/transfer.js'
import type { TunnelManager } from '../../../src/tunnel/manager.js'
import { Mux } from '../../../src/tunnel/mux.js'
import type { Tunnel } from '../../../src/tunnel/tunnel.js'
import { messagePipe, type MessagePipe } from '../tunnel/pipe.js'
import { upTunnel } from '../helpers.js'
import { asyncStateIo, type StateLogIo } from '../../../src/common/state-files.js'


const ALICE = { name: 'alice', id: 'a'.repeat(52) }
const CAROL = { name: 'carol', id: 'c'.repeat(52) }
/** A transfer ACK frame's header (magic, version, type) inside a mux DATA frame. */
const ACK_HEADER = Buffer.from([0x4e, 0x58, 0x02, 0x06])
const BOB = { name: 'bob', id: 'b'.repeat(52) }

interface World {
  pipe: MessagePipe
  dirs: { alice: string; bob: string }
  alice: Messages
  bob: () => Messages
  received: MessageInfo[]
  muxA: Mux
  /** Alice's natd restarted: a new instance on the same state dir. */
  aliceRestarted: () => Messages
  /** Another peer's tunnel to bob: its end of the mux. */
  peer: (who: { name: string; id: string }) => Mux
}

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0)) c()
})

function world(opts: { bobIo?: StateLogIo; offline?: boolean; messagesPerPeer?: number; messageBytesPerPeer?: number; inboxMax?: { messages: number; bytes: number }; log?: Logger } = {}): World {
  const pipe = messagePipe()
  const muxA = new Mux(pipe.a, true, silentLogger)
  const muxB = new Mux(pipe.b, false, silentLogger)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-msg-'))
  const dirs = { alice: path.join(tmp, 'alice'), bob: path.join(tmp, 'bob') }
  fs.mkdirSync(dirs.alice)
  fs.mkdirSync(dirs.bob)
  cleanups.push(() => {
    muxA.close('test over')
    muxB.close('test over')
    fs.rmSync(tmp, { recursive: true, force: true })
  })
  const tunnelToBob = upTunnel(BOB, muxA)
  const tunnelToAlice = upTunnel(ALICE, muxB)
  const tunnels = {
    open: async (peer: string) => {
      if (opts.offline) throw new NatdError('PEER_OFFLINE', `${peer} is offline`)
      return { tunnel: tunnelToBob, tookMs: 0, reused: true }
    }
  } as unknown as TunnelManager
  const received: MessageInfo[] = []
  const quotas = { messagesPerPeer: opts.messagesPerPeer ?? 1_000, messageBytesPerPeer: opts.messageBytesPerPeer ?? 1024 * 1024 }
  const make = (dir: string, self: { name: string; id: string }): Messages =>
    new Messages({ dir, tunnels, log: opts.log ?? silentLogger, selfName: self.name, selfId: self.id, known: { list: () => [] }, onMessage: (m) => received.push(m), quotas: () => quotas, ...(opts.inboxMax ? { inboxMax: opts.inboxMax } : {}), ...(opts.bobIo && self === BOB ? { io: opts.bobIo } : {}) })
  let bob = make(dirs.bob, BOB)
  muxB.on('open', (req) => {
    if (req.service === MESSAGE_SERVICE) bob.onChannel(tunnelToAlice, req)
  })
  return {
    pipe,
    dirs,
    alice: make(dirs.alice, ALICE),
    bob: () => {
      bob = make(dirs.bob, BOB) // a restart: a new instance on the same state dir
      return bob
    },
    received,
    muxA,
    aliceRestarted: () => make(dirs.alice, ALICE),
    peer: (who) => {
      const p = messagePipe()
      const theirs = new Mux(p.a, true, silentLogger)
      const bobs = new Mux(p.b, false, silentLogger)
      cleanups.push(() => {
        theirs.close('test over')
        bobs.close('test over')
      })
      const tunnel = upTunnel(who, bobs)
      bobs.on('open', (req) => bob.onChannel(tunnel, req))
      return theirs
    }
  }
}

describe('messages', () => {
  it('send resolves once the receiver stored the message (0600, fsynced); the inbox lists it and a restart keeps it', async () => {
    const w = world()
    const r = await w.alice.send('bob', 'hello bob ✓', 2_000)
    expect(r).toMatchObject({ peer: 'bob', id: expect.stringMatching(/^[0-9a-f]{32}$/) })
    expect(w.received).toEqual([expect.objectContaining({ id: r.id, from: 'alice', fromId: ALICE.id, text: 'hello bob ✓' })])
    const file = path.join(w.dirs.bob, 'messages.jsonl')
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    const bob = w.bob()
    expect(bob.list()).toEqual([expect.objectContaining({ id: r.id, text: 'hello bob ✓' })])
    await w.alice.send('bob', 'second', 2_000)
    expect(bob.list().map((m) => m.text)).toEqual(['hello bob ✓', 'second'])
    expect(bob.list('alice', 1).map((m) => m.text)).toEqual(['second'])
    expect(bob.list('carol')).toEqual([])
    expect(bob.list(ALICE.id.slice(0, 8))).toHaveLength(2)
  })

  it('an offline peer is PEER_OFFLINE, yourself and oversized text are INVALID_ARGUMENT', async () => {
    await expect(world({ offline: true }).alice.send('bob', 'hi', 1_000)).rejects.toMatchObject({ code: 'PEER_OFFLINE' })
    const w = world()
    await expect(w.alice.send('alice', 'hi', 1_000)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
    await expect(w.alice.send('bob', 'x'.repeat(20_000), 1_000)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
  })

  it('a peer that never acknowledges makes send fail with TIMEOUT, not hang', async () => {
    const w = world()
    w.pipe.up = false
    await expect(w.alice.send('bob', 'hi', 300)).rejects.toMatchObject({ code: 'TIMEOUT' })
  })

  it('a retried message (same id) is acknowledged but stored once; garbage on the channel is refused', async () => {
    const w = world()
    const id = Buffer.alloc(16, 7)
    for (let i = 0; i < 2; i++) {
      const ch = w.muxA.openChannel(0, MESSAGE_SERVICE)
      await ch.opened
      ch.write(encodeTransfer({ type: 'message', messageId: id, sentAt: 1, text: 'once' }))
      const reply = await new Promise<Buffer>((resolve) => ch.once('data', resolve))
      expect(decodeTransfer(reply)).toEqual({ type: 'ack', messageId: expect.anything(), duplicate: i === 1 })
    }
    expect(w.bob().list().map((m) => m.text)).toEqual(['once'])
    const bad = w.muxA.openChannel(0, MESSAGE_SERVICE)
    await bad.opened
    bad.write(encodeTransfer({ type: 'accept', offset: 0 }))
    const reply = await new Promise<Buffer>((resolve) => bad.once('data', resolve))
    expect(decodeTransfer(reply)).toMatchObject({ type: 'refuse', code: 'BAD_REQUEST' })
  })

  it('a peer past its quota (count or bytes) is refused with QUOTA_EXCEEDED; clearing its messages frees room', async () => {
    const w = world({ messagesPerPeer: 3, messageBytesPerPeer: 10 })
    await w.alice.send('bob', 'one', 2_000)
    await w.alice.send('bob', 'two', 2_000)
    await expect(w.alice.send('bob', 'eleven byte', 2_000)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/bob refused the message: alice already has 2 messages \(6 bytes\)/) })
    await w.alice.send('bob', 'six', 2_000)
    await expect(w.alice.send('bob', 'x', 2_000)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED' })
    const bob = w.bob()
    expect(bob.list().map((m) => m.text)).toEqual(['one', 'two', 'six'])
    expect(await bob.clear('alice')).toEqual({ removed: 3 })
    expect(bob.list()).toEqual([])
    await w.alice.send('bob', 'again', 2_000)
    expect(w.bob().list().map((m) => m.text)).toEqual(['again'])
  })

  it('fresh keys, each within its own quota, cannot fill the inbox past what all peers together may hold', async () => {
    // A key is free to make: strangers 0..5, 2 messages each, against a per-peer quota of 3.
    const w = world({ messagesPerPeer: 3, inboxMax: { messages: 7, bytes: 1024 } })
    const sendRaw = async (mux: Mux, text: string): Promise<unknown> => {
      const ch = mux.openChannel(0, MESSAGE_SERVICE)
      await ch.opened
      ch.write(encodeTransfer({ type: 'message', messageId: randomBytes(16), sentAt: 1, text }))
      return decodeTransfer(await new Promise<Buffer>((resolve) => ch.once('data', resolve)))
    }
    const answers: string[] = []
    for (let k = 0; k < 6; k++) {
      const stranger = w.peer({ name: `s${k}`, id: String.fromCharCode(100 + k).repeat(52) })
      for (let i = 0; i < 2; i++) answers.push(((await sendRaw(stranger, `m${k}.${i}`)) as { type: string; code?: string }).code ?? 'ack')
    }
    expect(answers).toEqual([...Array(7).fill('ack'), ...Array(5).fill('QUOTA_EXCEEDED')])
    expect(w.bob().list()).toHaveLength(7)
    // The bytes bound too, and clearing frees room for everyone.
    const bytes = world({ inboxMax: { messages: 100, bytes: 10 } })
    await bytes.alice.send('bob', '0123456789', 2_000)
    await expect(bytes.alice.send('bob', 'x', 2_000)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/inbox is full/) })
    await bytes.bob().clear()
    await bytes.alice.send('bob', 'x', 2_000)
  })

  it('a peer sending 300 messages past its quota gets 300 refusals and one log line, not 300', async () => {
    const warns: Array<Record<string, unknown>> = []
    const log: Logger = { ...silentLogger, warn: (_m: string, f?: Record<string, unknown>) => void warns.push(f ?? {}), child: () => log }
    const w = world({ messagesPerPeer: 1, log })
    await w.alice.send('bob', 'the one that fits', 2_000)
    const codes = new Set<string>()
    for (let i = 0; i < 300; i++) {
      const ch = w.muxA.openChannel(0, MESSAGE_SERVICE)
      await ch.opened
      ch.write(encodeTransfer({ type: 'message', messageId: randomBytes(16), sentAt: 1, text: `flood ${i}` }))
      codes.add(String((decodeTransfer(await new Promise<Buffer>((resolve) => ch.once('data', resolve))) as { code?: string }).code))
    }
    expect([...codes]).toEqual(['QUOTA_EXCEEDED'])
    expect(warns).toEqual([expect.objectContaining({ what: 'message', code: 'QUOTA_EXCEEDED', from: 'alice' })])
  })

  it('an ACK lost on the way back: the send fails saying how to retry; running it again reuses the ID and bob stores it once; the same text after a success is a new message', async () => {
    const w = world()
    // Drop everything from bob once his ACK for the message leaves: stored, never acknowledged.
    w.pipe.tap = (from, frame) => {
      if (from === 'b' && frame.includes(ACK_HEADER)) w.pipe.up = false
    }
    const failed = (await w.alice.send('bob', 'deploy done', 300).then(() => null, (e: unknown) => e)) as NatdError
    expect(failed).toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/may have reached bob: run the same command again .*--id [0-9a-f]{32}; bob stores it once/) })
    expect(w.bob().list().map((m) => m.text)).toEqual(['deploy done'])
    w.pipe.tap = null
    w.pipe.up = true
    const again = await w.alice.send('bob', 'deploy done', 2_000)
    expect(again.duplicate).toBe(true)
    expect(failed.message).toContain(again.id)
    expect(w.bob().list().map((m) => m.text)).toEqual(['deploy done'])
    // Settled: the same words later are a message of their own.
    const later = await w.alice.send('bob', 'deploy done', 2_000)
    expect(later).toMatchObject({ duplicate: false, id: expect.not.stringMatching(again.id) })
    expect(w.bob().list().map((m) => m.text)).toEqual(['deploy done', 'deploy done'])
  })

  it('the unsettled ID survives the sender\'s restart (natd killed mid-send); a caller that went away keeps it too', async () => {
    const w = world()
    w.pipe.tap = (from, frame) => {
      if (from === 'b' && frame.includes(ACK_HEADER)) w.pipe.up = false
    }
    await expect(w.alice.send('bob', 'ship it', 300)).rejects.toMatchObject({ code: 'TIMEOUT' })
    w.pipe.tap = null
    w.pipe.up = true
    const restarted = w.aliceRestarted()
    // The caller goes away as bob acknowledges: the send stops (ABORTED), unsettled.
    const caller = new AbortController()
    w.pipe.tap = (from, frame) => {
      if (from === 'b' && frame.includes(ACK_HEADER)) caller.abort()
    }
    await expect(restarted.send('bob', 'ship it', 2_000, { signal: caller.signal })).rejects.toMatchObject({ code: 'ABORTED' })
    w.pipe.tap = null
    // natctl was interrupted and never printed anything: its rerun is still the same message.
    expect((await restarted.send('bob', 'ship it', 2_000)).duplicate).toBe(true)
    expect((await restarted.send('bob', 'ship it', 2_000)).duplicate).toBe(false)
    expect(w.bob().list().map((m) => m.text)).toEqual(['ship it', 'ship it'])
  })

  it('--id: the same key is the same message, across a receiver restart and a clear of its inbox; a printed ID is taken as it is', async () => {
    const w = world()
    const first = await w.alice.send('bob', 'v1.2 released', 2_000, { id: 'release-1.2' })
    expect(first).toMatchObject({ id: messageIdOf('release-1.2'), duplicate: false })
    expect(await w.bob().clear()).toEqual({ removed: 1 })
    const again = await w.alice.send('bob', 'v1.2 released', 2_000, { id: first.id })
    expect(again).toMatchObject({ id: first.id, duplicate: true })
    expect(w.bob().list()).toEqual([])
    expect(messageIdOf('A'.repeat(32))).toBe('a'.repeat(32))
    expect(messageIdOf('release-1.2')).toMatch(/^[0-9a-f]{32}$/)
    expect(messageIdOf('release-1.3')).not.toBe(messageIdOf('release-1.2'))
  })

  it('IDs are scoped per sender: another peer sending alice\'s ID neither is dropped nor suppresses alice\'s message', async () => {
    const w = world()
    const id = Buffer.alloc(16, 9)
    const sendRaw = async (mux: Mux, text: string): Promise<unknown> => {
      const ch = mux.openChannel(0, MESSAGE_SERVICE)
      await ch.opened
      ch.write(encodeTransfer({ type: 'message', messageId: id, sentAt: 1, text }))
      return decodeTransfer(await new Promise<Buffer>((resolve) => ch.once('data', resolve)))
    }
    // carol (another tunnel to bob) uses the ID first
    const carol = w.peer(CAROL)
    expect(await sendRaw(carol, 'from carol')).toMatchObject({ type: 'ack', duplicate: false })
    expect(await sendRaw(w.muxA, 'from alice')).toMatchObject({ type: 'ack', duplicate: false })
    expect(await sendRaw(carol, 'from carol')).toMatchObject({ type: 'ack', duplicate: true })
    const bob = w.bob()
    expect(bob.list().map((m) => `${m.from}: ${m.text}`)).toEqual(['carol: from carol', 'alice: from alice'])
    // Clearing one sender's messages leaves the other's with the same ID.
    expect(await bob.clear('carol')).toEqual({ removed: 1 })
    expect(bob.list().map((m) => m.from)).toEqual(['alice'])
  })

  it('a tunnel that dies under the message (its ACK lost) is reopened within the send: the same ID again, bob stores it once', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-msg-'))
    cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }))
    const quotas = { messagesPerPeer: 10, messageBytesPerPeer: 1024 }
    const make = (dir: string, self: typeof ALICE, tunnels: TunnelManager): Messages => {
      fs.mkdirSync(dir, { recursive: true })
      return new Messages({ dir, tunnels, log: silentLogger, selfName: self.name, selfId: self.id, known: { list: () => [] }, onMessage: () => undefined, quotas: () => quotas })
    }
    const bob = make(path.join(tmp, 'bob'), BOB, {} as TunnelManager)
    let opened = 0
    let current: Mux | null = null
    const tunnels = {
      open: async () => {
        if (!current || closed.has(current)) {
          opened++
          const pipe = messagePipe()
          const a = new Mux(pipe.a, true, silentLogger)
          const b = new Mux(pipe.b, false, silentLogger)
          b.on('open', (req) => bob.onChannel({ peer: ALICE, mux: b } as unknown as Tunnel, req))
          cleanups.push(() => {
            a.close('test over')
            b.close('test over')
          })
          if (opened === 1) {
            // The path dies as bob's ACK leaves: dropped, and the tunnel closes.
            pipe.tap = (from, frame) => {
              if (from === 'b' && frame.includes(ACK_HEADER)) {
                pipe.up = false
                setImmediate(() => {
                  closed.add(a)
                  a.close('path died')
                })
              }
            }
          }
          current = a
        }
        return { tunnel: upTunnel(BOB, current), tookMs: 0, reused: false }
      }
    } as unknown as TunnelManager
    const closed = new Set<Mux>()
    const alice = make(path.join(tmp, 'alice'), ALICE, tunnels)
    const r = await alice.send('bob', 'through the outage', 3_000)
    expect(opened).toBe(2)
    expect(r.duplicate).toBe(true)
    expect(bob.list().map((m) => ({ id: m.id, text: m.text }))).toEqual([{ id: r.id, text: 'through the outage' }])
  })

  // Issue 17: bob's inbox is fsynced before his ACK; a disk that stalls (29 s in CI) must
  // hold that ACK, never bob's event loop (heartbeats, tunnels, natctl).
  it('a disk that stalls holds the ACK, not the agent: a retry meanwhile waits for the first copy and is stored once; a failed write is STATE_WRITE_FAILED and frees its quota', async () => {
    const held: Array<{ go: () => void; fail: (err: Error) => void }> = []
    let appended = 0
    const io: StateLogIo = {
      ...asyncStateIo,
      append: (file, text, sync) => {
        if (!file.endsWith('messages.jsonl')) return asyncStateIo.append(file, text, sync)
        appended++
        return new Promise<void>((resolve, reject) => held.push({ go: () => void asyncStateIo.append(file, text, sync).then(resolve, reject), fail: reject }))
      }
    }
    const w = world({ bobIo: io, messagesPerPeer: 2 })
    const turn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20)) // the event loop keeps turning
    const untilHeld = async (): Promise<void> => {
      for (let i = 0; i < 100 && held.length === 0; i++) await turn()
      expect(held.length).toBeGreaterThan(0)
    }
    let sent = false
    const first = w.alice.send('bob', 'slow disk', 5_000, { id: 'k1' }).then((r) => ((sent = true), r))
    await untilHeld()
    await turn()
    expect(sent).toBe(false) // not acknowledged before it is on disk
    expect(w.received).toEqual([])
    const retry = w.alice.send('bob', 'slow disk', 5_000, { id: 'k1' }) // the same ID while the first copy is written
    await turn()
    expect(appended).toBe(1) // waits for the first copy, does not write a second
    held.shift()!.go()
    expect(await first).toMatchObject({ duplicate: false })
    expect(await retry).toMatchObject({ duplicate: true })
    expect(w.received.map((m) => m.text)).toEqual(['slow disk'])
    // A write that fails: refused, nothing kept, and its place in the quota given back.
    const failed = w.alice.send('bob', 'lost', 5_000)
    await untilHeld()
    held.shift()!.fail(new Error('EIO'))
    await expect(failed).rejects.toMatchObject({ code: 'STATE_WRITE_FAILED', message: expect.stringMatching(/could not save the message/) })
    const third = w.alice.send('bob', 'third', 5_000)
    await untilHeld()
    held.shift()!.go()
    await third // the second of messagesPerPeer: 2
    expect(w.bob().list().map((m) => m.text)).toEqual(['slow disk', 'third'])
  })
})
