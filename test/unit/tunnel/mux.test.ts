// The channel multiplexer (src/tunnel/mux.ts) between two Mux instances joined by an
// in-memory message pipe (./mux-pair.ts): channel ids, accept and refuse, byte-exact data
// both ways, half close, credit-based flow control, many channels at once, close,
// ping/pong, goodbye, and a peer that opens a channel with our parity.
//
//   Mux A (opener: odd ids) ── pipe.a ═══ frames ═══ pipe.b ── Mux B (even ids)
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decodeMux, encodeMux, MAX_DATA_BYTES, MUX, type MuxFrame } from '../../../src/protocol/mux.js'
import { Mux, type MessageStream, type OpenRequest } from '../../../src/tunnel/mux.js'
import { CHANNEL_WINDOW_BYTES, type MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { INITIAL_CHANNEL_WINDOW_BYTES } from '../../../src/tunnel/window-budget.js'
import { readAll, sha256hex } from '../helpers.js'
import { muxPairs } from './mux-pair.js'
import { settle, until, type MessagePipe, type Side } from './pipe.js'

const HEADER_BYTES = 5
/** MuxChannel's readable highWaterMark: what a paused consumer's buffer absorbs beyond the window. */
const CHANNEL_READ_BUFFER_BYTES = 1024 * 1024

const pair = muxPairs()

/** Decoded frames written by one side (for small tests; DATA payloads are kept). */
function record(pipe: MessagePipe, side: Side): MuxFrame[] {
  const frames: MuxFrame[] = []
  pipe.tap = (from, buf) => {
    if (from === side) frames.push(decodeMux(buf))
  }
  return frames
}

describe('Mux: channel ids', () => {
  it('the opener of the tunnel gets odd channel ids, the other side even ids', () => {
    const { a, b } = pair()
    expect([a.openChannel(80).id, a.openChannel(80).id, a.openChannel(443).id]).toEqual([1, 3, 5])
    expect([b.openChannel(80).id, b.openChannel(80).id]).toEqual([2, 4])
    expect(a.size).toBe(3)
    expect(b.size).toBe(2)
  })
})

describe('Mux: opening channels', () => {
  it('an accepted channel carries 10 MiB of random data both ways, byte-exact', async () => {
    const { a, b } = pair()
    const up = randomBytes(10 * 1024 * 1024)
    const down = randomBytes(10 * 1024 * 1024)
    const remoteRead = new Promise<{ sha256: string; bytes: number }>((resolve) => {
      b.on('open', (req) => {
        expect(req.port).toBe(8080)
        req.accept()
        resolve(readAll(req.channel))
        req.channel.end(down)
      })
    })
    const ch = a.openChannel(8080)
    await ch.opened
    const localRead = readAll(ch)
    ch.end(up)
    const [atB, atA] = await Promise.all([remoteRead, localRead])
    expect(atB).toEqual({ sha256: sha256hex(up), bytes: up.length })
    expect(atA).toEqual({ sha256: sha256hex(down), bytes: down.length })
    expect(a.bytesOut).toBe(up.length)
    expect(a.bytesIn).toBe(down.length)
    expect(b.bytesIn).toBe(up.length)
  })

  it('half close: the side that ended its writing still receives the reply (echo pattern)', async () => {
    const { pipe, a, b } = pair()
    const resets: MuxFrame[] = []
    pipe.tap = (_from, buf) => {
      if (buf[0] === MUX.RESET) resets.push(decodeMux(buf))
    }
    const events: string[] = []
    b.on('open', (req) => {
      req.accept()
      const got: Buffer[] = []
      req.channel.on('data', (d: Buffer) => got.push(d))
      req.channel.on('end', () => {
        events.push('b: end')
        // The request is complete; only now does the server answer and close.
        req.channel.end(Buffer.concat(got).toString().toUpperCase())
        events.push('b: replied')
      })
    })
    const ch = a.openChannel(7)
    await ch.opened
    const reply: Buffer[] = []
    ch.on('data', (d: Buffer) => reply.push(d))
    const ended = new Promise<void>((resolve) => ch.once('end', () => resolve()))
    ch.end('hello over there')
    await ended
    expect(Buffer.concat(reply).toString()).toBe('HELLO OVER THERE')
    expect(events).toEqual(['b: end', 'b: replied'])
    // Both directions finished cleanly: both sides forget the channel, and no RESET crossed.
    await until(() => a.size === 0 && b.size === 0, 'both sides to forget the channel')
    expect(resets).toEqual([])
  })

  it("req.reject('NOT_EXPOSED', …) rejects channel.opened with that code and message, with no 'error' event", async () => {
    const { a, b } = pair()
    const remoteErrors: Error[] = []
    b.on('open', (req: OpenRequest) => {
      req.channel.on('error', (e) => remoteErrors.push(e))
      req.reject('NOT_EXPOSED', 'port 22 is not exposed to alice')
    })
    const ch = a.openChannel(22)
    const errors: Error[] = []
    ch.on('error', (e) => errors.push(e))
    await expect(ch.opened).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'NOT_EXPOSED' && e.message === 'port 22 is not exposed to alice')
    await settle()
    expect(errors).toEqual([])
    expect(remoteErrors).toEqual([])
    expect(ch.destroyed).toBe(true)
    expect(a.size).toBe(0)
    expect(b.size).toBe(0)
  })

  it("with no 'open' listener every channel is refused NOT_EXPOSED", async () => {
    const { a, b } = pair()
    const ch = a.openChannel(80)
    await expect(ch.opened).rejects.toMatchObject({ code: 'NOT_EXPOSED' })
    expect(b.size).toBe(0)
  })

  it('50 concurrent channels each carry their own 256 KiB intact (echoed back)', async () => {
    const { a, b } = pair()
    b.on('open', (req) => {
      req.accept()
      req.channel.pipe(req.channel) // echo, ending when the opener ends
    })
    const results = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const payload = randomBytes(256 * 1024)
        const ch = a.openChannel(1000 + i)
        await ch.opened
        const back = readAll(ch)
        ch.end(payload)
        return { want: sha256hex(payload), got: await back }
      })
    )
    for (const r of results) expect(r.got).toEqual({ sha256: r.want, bytes: 256 * 1024 })
    await until(() => a.size === 0 && b.size === 0, 'all 50 channels to finish')
  })

  it('a peer frame opening a channel with our own parity is reset, and never offered', async () => {
    const { pipe, a } = pair()
    let offered = 0
    a.on('open', (req) => {
      offered++
      req.accept()
    })
    const fromA = record(pipe, 'a')
    // B speaks raw frames: channel 7 is odd, the opener's (A's) parity.
    pipe.b.write(encodeMux({ type: 'open', channel: 7, port: 80, window: 1024, service: '' }))
    await settle()
    expect(offered).toBe(0)
    expect(a.size).toBe(0)
    expect(fromA).toEqual([{ type: 'reset', channel: 7, code: 'BAD_REQUEST', message: expect.any(String) }])
    // The right parity is offered.
    pipe.b.write(encodeMux({ type: 'open', channel: 8, port: 80, window: 1024, service: '' }))
    await settle()
    expect(offered).toBe(1)
    // (A's delayed ACK of B's two frames may come after it.)
    expect(fromA.filter((f) => f.type !== 'ack').at(-1)).toEqual({ type: 'open-ok', channel: 8, window: INITIAL_CHANNEL_WINDOW_BYTES })
  })
})

/**
 * A channel from A whose consumer at B does not read (paused): the DATA bytes A sent so
 * far, and `stalled()`, which waits until no DATA came for many turns and returns them.
 */
async function pausedChannel(): Promise<{ pipe: MessagePipe; a: Mux; b: Mux; ch: MuxChannel; remote: () => MuxChannel; sent: () => number; stalled: () => Promise<number>; fromB: MuxFrame[] }> {
  const { pipe, a, b } = pair()
  let dataBytes = 0
  /** Every frame B (the receiver) sent. */
  const fromB: MuxFrame[] = []
  pipe.tap = (from, buf) => {
    if (from === 'b') fromB.push(decodeMux(buf))
    else if (buf[0] === MUX.DATA) dataBytes += buf.length - HEADER_BYTES
  }
  let remote: MuxChannel | null = null
  b.on('open', (req) => {
    remote = req.channel
    remote.pause()
    req.accept()
  })
  const ch = a.openChannel(80)
  await ch.opened
  const stalled = async (): Promise<number> => {
    let quiet = 0
    while (quiet < 50) {
      const last = dataBytes
      await settle(1)
      quiet = dataBytes === last ? quiet + 1 : 0
    }
    return dataBytes
  }
  return { pipe, a, b, ch, remote: () => remote!, sent: () => dataBytes, stalled, fromB }
}

describe('Mux: flow control', () => {
  it('a sender stops after at most CHANNEL_WINDOW_BYTES while the consumer does not read, and resumes when it does', async () => {
    const { ch, remote, sent, stalled } = await pausedChannel()
    const payload = randomBytes(3 * CHANNEL_WINDOW_BYTES)
    let flushed = false
    ch.write(payload, () => (flushed = true))
    ch.end()

    // Let the transfer run until it stalls (no DATA for many turns).
    const dataBytes = await stalled()
    // In flight: the window (grown by what the Readable side took, window-budget.ts); the
    // paused consumer's buffer absorbs at most its highWaterMark more.
    expect(dataBytes).toBeGreaterThanOrEqual(CHANNEL_READ_BUFFER_BYTES + INITIAL_CHANNEL_WINDOW_BYTES)
    expect(dataBytes).toBeLessThanOrEqual(CHANNEL_WINDOW_BYTES + CHANNEL_READ_BUFFER_BYTES + MAX_DATA_BYTES)
    expect(flushed).toBe(false)
    expect(remote()).not.toBeNull()
    const r = remote()
    expect(r.readableLength).toBe(dataBytes) // everything sent is waiting, unread, at the receiver

    const got = readAll(r) // reading resumes the flow
    await expect(got).resolves.toEqual({ sha256: sha256hex(payload), bytes: payload.length })
    expect(flushed).toBe(true)
    expect(sent()).toBe(payload.length)
  })

  it('a paused channel handed to a full sink (deliverTo, a joined socket) grants no credit until the sink calls release()', async () => {
    const { ch, remote, stalled } = await pausedChannel()
    ch.write(randomBytes(4 * CHANNEL_WINDOW_BYTES))
    const before = await stalled()
    const r = remote()
    let sunk = 0
    // A sink whose queue is full from the first byte (a local socket that reads nothing).
    expect(r.deliverTo({ data: (buf) => ((sunk += buf.length), false), end: () => undefined })).toBe(true)
    expect(sunk).toBe(before) // what the Readable side held went to the sink
    // The bound: the window plus the Readable side's buffer, never a second window on top.
    expect(await stalled()).toBe(before)
    expect(before).toBeLessThanOrEqual(CHANNEL_WINDOW_BYTES + CHANNEL_READ_BUFFER_BYTES + MAX_DATA_BYTES)
    r.release() // the sink's queue drained
    expect(await stalled()).toBeGreaterThan(before)
  })

  it('a write waiting for window fails with TUNNEL_CLOSED when the mux closes', async () => {
    const { a, b } = pair()
    b.on('open', (req) => {
      req.channel.pause()
      req.accept()
    })
    const ch = a.openChannel(80)
    await ch.opened
    const writeErr = new Promise<Error | null | undefined>((resolve) => ch.write(randomBytes(2 * CHANNEL_WINDOW_BYTES), resolve))
    await settle(20)
    a.close('tunnel closed by user')
    await expect(writeErr).resolves.toMatchObject({ code: 'TUNNEL_CLOSED' })
  })
})

describe('Mux: a channel whose consumer reads no more (discardInput)', () => {
  it('frees what the Readable side holds at once, drops the DATA that follows and grants no credit back: the peer stops at its window', async () => {
    const { ch, remote: r, fromB, sent: dataToB } = await pausedChannel()
    const remote = r()
    const payload = randomBytes(3 * CHANNEL_WINDOW_BYTES)
    ch.write(payload)
    await until(() => remote.readableLength >= CHANNEL_READ_BUFFER_BYTES, 'the buffer to fill')
    remote.discardInput()
    expect(remote.readableLength).toBe(0)
    const windowsBefore = fromB.filter((f) => f.type === 'window').length
    await settle(200)
    expect(remote.readableLength).toBe(0) // what came after is dropped, not queued
    expect(fromB.filter((f) => f.type === 'window').length).toBe(windowsBefore)
    // Everything granted was sent, nothing more: the first window and the grants made before the discard.
    const granted = INITIAL_CHANNEL_WINDOW_BYTES + fromB.reduce((sum, f) => sum + (f.type === 'window' ? f.increment : 0), 0)
    expect(dataToB()).toBe(granted)
    expect(dataToB()).toBeLessThan(payload.length)
    expect(remote.destroyed).toBe(false) // still open for our answer
  })

  it('a peer that sends past its window after the discard is still reset (BAD_REQUEST)', async () => {
    const { pipe, ch, remote: r, sent: dataToB } = await pausedChannel()
    const remote = r()
    ch.write(randomBytes(2 * CHANNEL_WINDOW_BYTES))
    remote.discardInput()
    await until(() => dataToB() >= INITIAL_CHANNEL_WINDOW_BYTES, 'the window to be sent')
    const closed = new Promise<Error | undefined>((resolve) => remote.once('error', resolve))
    pipe.a.write(encodeMux({ type: 'data', channel: ch.id, data: randomBytes(MAX_DATA_BYTES) }))
    await expect(closed).resolves.toMatchObject({ code: 'BAD_REQUEST' })
  })

  it("the peer's FIN and our end then close the channel without a RESET, and the mux forgets it", async () => {
    const { a, b, ch, remote: r, fromB } = await pausedChannel()
    const remote = r()
    ch.write(randomBytes(64 * 1024))
    await until(() => remote.readableLength > 0, 'the data')
    remote.discardInput()
    const closed = new Promise<void>((resolve) => remote.once('close', () => resolve()))
    remote.end(Buffer.from('answer'))
    ch.end()
    const answer = readAll(ch)
    await closed
    await expect(answer).resolves.toMatchObject({ bytes: 6 })
    expect(fromB.some((f) => f.type === 'reset')).toBe(false)
    expect(b.size).toBe(0)
    expect(a.size).toBe(0)
  })

  it('deliverTo() after discardInput() is refused: nothing reaches a sink', async () => {
    const { ch, remote: r } = await pausedChannel()
    const remote = r()
    remote.discardInput()
    let sunk = 0
    expect(remote.deliverTo({ data: (buf) => ((sunk += buf.length), true), end: () => undefined })).toBe(false)
    ch.write(randomBytes(64 * 1024))
    await settle(50)
    expect(sunk).toBe(0)
  })
})

describe('Mux: close', () => {
  it('close(reason) destroys every channel with TUNNEL_CLOSED, and sends nothing afterwards', async () => {
    const { pipe, a, b } = pair()
    b.on('open', (req) => {
      if (req.port === 1) req.accept() // port 2 is never answered: its channel stays pending
    })
    const open = a.openChannel(1)
    await open.opened
    const pending = a.openChannel(2)
    await settle()
    const openErrors: Error[] = []
    open.on('error', (e) => openErrors.push(e))

    a.close('tunnel to bob closed by user')
    await expect(pending.opened).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'TUNNEL_CLOSED' && e.message === 'tunnel to bob closed by user')
    await settle()
    expect(open.destroyed).toBe(true)
    expect(pending.destroyed).toBe(true)
    expect(openErrors).toHaveLength(1)
    expect(openErrors[0]).toMatchObject({ code: 'TUNNEL_CLOSED', message: 'tunnel to bob closed by user' })
    expect(a.size).toBe(0)

    let sent = 0
    pipe.tap = (from) => {
      if (from === 'a') sent++
    }
    a.ping(1)
    a.goodbye('again')
    a.close('twice') // idempotent
    expect(() => a.openChannel(3)).toThrow(expect.objectContaining({ code: 'TUNNEL_CLOSED' }))
    await settle()
    expect(sent).toBe(0)
  })

  // Bug (reported): Mux.onMessage keeps handling frames after close(). An OPEN that
  // arrives in the moments before the session is destroyed (Tunnel.close waits 100 ms)
  // creates a channel in the closed mux and is offered to the 'open' listener, which
  // connects to the exposed local port; the channel is never destroyed. Fix: ignore
  // frames once closed (`if (this.closed) return` at the top of onMessage).
  it('after close(), an OPEN from the peer is not offered to the open listener', async () => {
    const { a, b } = pair()
    const offered: number[] = []
    b.on('open', (req) => {
      offered.push(req.channel.id)
      req.accept()
    })
    // Positive control: before close(), the same OPEN is offered.
    const before = a.openChannel(81)
    await until(() => offered.length === 1, 'the OPEN before close to be offered')
    expect(offered).toEqual([before.id])
    b.close('shutting down')
    a.openChannel(80)
    await settle()
    expect(offered).toEqual([before.id])
    expect(b.size).toBe(0)
  })
})

describe('Mux: channel 0', () => {
  it('ping(seq) makes the same side emit pong with that seq; the peer emits none', async () => {
    const { a, b } = pair()
    const pongsA: number[] = []
    const pongsB: number[] = []
    a.on('pong', (s) => pongsA.push(s))
    b.on('pong', (s) => pongsB.push(s))
    a.ping(42)
    a.ping(0xffffffff)
    await until(() => pongsA.length === 2, 'two pongs')
    expect(pongsA).toEqual([42, 0xffffffff])
    expect(pongsB).toEqual([])
  })

  it('goodbye(reason) emits goodbye with that reason at the peer', async () => {
    const { a, b } = pair()
    const atA: string[] = []
    const atB: string[] = []
    a.on('goodbye', (r) => atA.push(r))
    b.on('goodbye', (r) => atB.push(r))
    a.goodbye('daemon shutting down')
    await until(() => atB.length === 1, 'the goodbye')
    expect(atB).toEqual(['daemon shutting down'])
    expect(atA).toEqual([])
  })

  it("any valid frame emits 'frame' (what the tunnel's liveness check listens to); garbage does not", async () => {
    const { pipe, b } = pair()
    let frames = 0
    b.on('frame', () => frames++)
    pipe.a.write(Buffer.from([0xff, 0, 0, 0, 0]))
    pipe.a.write(encodeMux({ type: 'pong', channel: 0, seq: 9 }))
    await settle()
    expect(frames).toBe(1)
  })

  it('an ACK due while the session waits for a drain is held, then sent once with the whole count (on a drain, or on the next session after a switch)', () => {
    interface FakeSession {
      s: MessageStream
      acks: number[]
      full: boolean
      drain(): void
      feed(buf: Buffer): void
    }
    /** A session that takes writes but says "full" while `full`, recording our ACKs. */
    const session = (): FakeSession => {
      const t = { acks: [], full: true, drain: () => undefined, feed: () => undefined } as unknown as FakeSession
      t.s = {
        write: (buf) => {
          if (buf[0] === MUX.ACK) t.acks.push((decodeMux(buf) as Extract<MuxFrame, { type: 'ack' }>).received)
          return !t.full
        },
        once: (_e, fn) => (t.drain = fn),
        on: (_e, fn) => (t.feed = fn),
        destroyed: false
      }
      return t
    }
    const data = encodeMux({ type: 'data', channel: 2, data: Buffer.alloc(8) })
    const first = session()
    const mux = new Mux(first.s, true, silentLogger)
    try {
      for (let i = 0; i < 100; i++) first.feed(data)
      expect(first.acks).toEqual([32]) // the write that found the session full
      first.full = false
      first.drain()
      expect(first.acks).toEqual([32, 100]) // the count at the drain
      first.full = true
      for (let i = 0; i < 64; i++) first.feed(data)
      expect(first.acks).toEqual([32, 100, 132]) // full again after this one: 164 is held
      const next = session()
      mux.switchTo(next.s)
      expect(next.acks).toEqual([164])
    } finally {
      mux.close('test over')
    }
  })
})
