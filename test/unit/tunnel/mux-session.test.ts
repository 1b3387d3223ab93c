// The mux over a session that behaves like secret-stream (a streamx stream): write()
// returns false once a message is queued, 'drain' follows, there is no
// writableNeedDrain. Delivered messages are copies (as after encryption).
//
//   Mux A ── FakeSession a ═══ one message per turn ═══ FakeSession b ── Mux B
//
// What a user would see: a ping answered promptly while a channel streams (the session's
// queue stays at a frame or two), small writes leaving as full frames, and DATA frames
// built where the replay buffer keeps them (no extra copy).
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { silentLogger } from '../../../src/protocol/log.js'
import { decodeMux, MAX_DATA_BYTES, MUX } from '../../../src/protocol/mux.js'
import { Mux, type MessageStream } from '../../../src/tunnel/mux.js'
import { SLAB_BYTES } from '../../../src/tunnel/replay-buffer.js'
import { readAll, sha256hex } from '../helpers.js'
import { until } from './pipe.js'

/** streamx's default writable highWaterMark: one 64 KiB frame is already over it. */
const STREAMX_HIGH_WATER_MARK = 16 * 1024

class FakeSession extends EventEmitter implements MessageStream {
  peer!: FakeSession
  destroyed = false
  private queue: Buffer[] = []
  private queued = 0
  private flushing = false
  /** Most bytes ever waiting in this session's queue. */
  maxQueuedBytes = 0
  /** Written DATA frames that lie in a replay slab (built there, not copied there). */
  inSlab = 0
  written = 0
  /** Of those, DATA frames (an ACK or a probe PING is no queue ahead of a ping). */
  dataWritten = 0

  write(buf: Buffer): boolean {
    this.written++
    if (buf[0] === MUX.DATA) this.dataWritten++
    if (buf[0] === MUX.DATA && buf.buffer.byteLength === SLAB_BYTES) this.inSlab++
    this.queue.push(Buffer.from(buf))
    this.queued += buf.length
    this.maxQueuedBytes = Math.max(this.maxQueuedBytes, this.queued)
    if (!this.flushing) {
      this.flushing = true
      setImmediate(() => this.flush())
    }
    return this.queued < STREAMX_HIGH_WATER_MARK
  }

  /** Delivers one message per turn of the event loop, like a path slower than the sender. */
  private flush(): void {
    const buf = this.queue.shift()
    if (!buf || this.destroyed) return
    this.queued -= buf.length
    this.peer.emit('data', buf)
    if (this.queue.length > 0) setImmediate(() => this.flush())
    else {
      this.flushing = false
      this.emit('drain')
    }
  }
}

function sessions(): { a: FakeSession; b: FakeSession } {
  const a = new FakeSession()
  const b = new FakeSession()
  a.peer = b
  b.peer = a
  return { a, b }
}

const muxes: Mux[] = []
afterEach(() => {
  for (const m of muxes.splice(0)) m.close('test over')
})

function pair(): { sa: FakeSession; sb: FakeSession; a: Mux; b: Mux } {
  const { a: sa, b: sb } = sessions()
  const a = new Mux(sa, true, silentLogger)
  const b = new Mux(sb, false, silentLogger)
  muxes.push(a, b)
  return { sa, sb, a, b }
}

describe('Mux over a streamx-like session', () => {
  it('a channel streaming 8 MiB keeps at most two frames queued in the session, and a ping sent meanwhile is answered within a few frames', async () => {
    const { sa, a, b } = pair()
    const payload = randomBytes(8 * 1024 * 1024)
    const received = new Promise<{ sha256: string; bytes: number }>((resolve) => {
      b.on('open', (req) => {
        req.accept()
        resolve(readAll(req.channel))
      })
    })
    const ch = a.openChannel(80)
    await ch.opened
    ch.end(payload)
    // Past 4 MiB the channel's window has grown to its full size (window-budget.ts): B's
    // WINDOWs come every 1 MiB, as they did when it started there.
    await until(() => a.bytesOut > 4 * 1024 * 1024, '4 MiB sent')
    const sentAtPing = sa.dataWritten
    let pongAt = -1
    a.once('pong', () => (pongAt = sa.dataWritten))
    a.ping(7)
    await expect(received).resolves.toEqual({ sha256: sha256hex(payload), bytes: payload.length })
    expect(sa.maxQueuedBytes).toBeLessThanOrEqual(2 * (MAX_DATA_BYTES + 5))
    expect(pongAt).toBeGreaterThan(0)
    // DATA frames A wrote between the ping and its pong: the queue ahead of the ping, one
    // round trip. B acknowledges every full DATA frame (ACK_EVERY_BYTES); this session
    // delivers one message per turn, so B's ACKs ahead of its PONG take a turn each (over
    // TCP they share the write of the frames around them): 7 where it was 6.
    expect(pongAt - sentAtPing).toBeLessThanOrEqual(7)
  })

  it('small writes made while the channel waits leave as full DATA frames, built in the replay buffer', async () => {
    const { sa, a, b } = pair()
    const frames: number[] = []
    const origEmit = sa.peer.emit.bind(sa.peer)
    sa.peer.emit = (event: string, ...args: unknown[]): boolean => {
      if (event === 'data' && (args[0] as Buffer)[0] === MUX.DATA) {
        const f = decodeMux(args[0] as Buffer)
        if (f.type === 'data') frames.push(f.data.length)
      }
      return origEmit(event, ...args)
    }
    const received = new Promise<{ sha256: string; bytes: number }>((resolve) => {
      b.on('open', (req) => {
        req.accept()
        resolve(readAll(req.channel))
      })
    })
    const ch = a.openChannel(80)
    // 256 writes of 1 KiB before the peer accepts: they wait in the channel's buffer.
    const chunks = Array.from({ length: 256 }, () => randomBytes(1024))
    for (const c of chunks) ch.write(c)
    ch.end()
    const all = Buffer.concat(chunks)
    await expect(received).resolves.toEqual({ sha256: sha256hex(all), bytes: all.length })
    expect(frames.reduce((x, y) => x + y, 0)).toBe(all.length)
    // The first write goes alone (it was waiting for the window); the rest fill whole frames.
    expect(frames.length).toBeLessThanOrEqual(1 + Math.ceil((all.length - 1024) / MAX_DATA_BYTES))
    expect(sa.inSlab).toBe(frames.length)
  })
})
