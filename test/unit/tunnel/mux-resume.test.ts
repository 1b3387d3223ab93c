// The mux's sequence numbers, ACKs, replay buffer and resume (src/tunnel/mux.ts,
// replay-buffer.ts, resume.ts) over in-memory message pipes (./pipe.ts), no root:
//
//   Mux A ── pipe1.a ═══ (cut: frames dropped) ═══ pipe1.b ── Mux B
//        └── pipe2.a ═══════ the resumed session ═══ pipe2.b ──┘
//
// What a user would see: a transfer cut in the middle carries on over a new session
// byte-exact (nothing lost, nothing twice, no reset); unacknowledged data never grows
// past its bound; a peer lying about counts cannot make us resend or keep garbage.
import { createHash, randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { silentLogger } from '../../../src/protocol/log.js'
import { decodeMux, encodeMux, MAX_DATA_BYTES, type MuxFrame } from '../../../src/protocol/mux.js'
import { CHANNEL_WINDOW_BYTES, type MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { INFLIGHT_FLOOR_BYTES, RTT_PROBE_EVERY_MS, SHORT_PATH_FLOOR_BYTES, SHORT_PATH_SAMPLES } from '../../../src/tunnel/inflight-cap.js'
import { ACK_DELAY_MS, ACK_EVERY_BYTES, ACK_EVERY_BYTES_ALONE, ACK_EVERY_FRAMES } from '../../../src/tunnel/ack-pacer.js'
import { Mux, REPLAY_MAX_BYTES, type MessageStream } from '../../../src/tunnel/mux.js'
import { onFreshTunnel, onResumeRequest, SIMULTANEOUS_OPEN_MS, type ResumableTunnel } from '../../../src/tunnel/resume.js'
import { FakeClock } from '../helpers.js'
import { messagePipe, settle, until } from './pipe.js'

const MiB = 1024 * 1024
const muxes: Mux[] = []
afterEach(() => {
  for (const m of muxes.splice(0)) m.close('test over')
})

function mux(session: MessageStream, opener: boolean): Mux {
  const m = new Mux(session, opener, silentLogger)
  muxes.push(m)
  return m
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** B echoes every channel A opens. */
function echo(b: Mux): void {
  b.on('open', (req) => {
    req.accept()
    req.channel.pipe(req.channel)
  })
}

/** Reads a channel to its end. */
function collect(ch: MuxChannel): { chunks: Buffer[]; bytes: () => number; done: Promise<Buffer> } {
  const chunks: Buffer[] = []
  const done = new Promise<Buffer>((resolve, reject) => {
    ch.on('data', (d: Buffer) => chunks.push(d))
    ch.on('end', () => resolve(Buffer.concat(chunks)))
    ch.on('error', reject)
  })
  return { chunks, bytes: () => chunks.reduce((n, c) => n + c.length, 0), done }
}

describe('Mux: ACKs', () => {
  it('the receiver acknowledges in coalesced ACKs, and the sender forgets what was acknowledged', async () => {
    const pipe = messagePipe()
    const a = mux(pipe.a, true)
    const b = mux(pipe.b, false)
    echo(b)
    const frames = { sequenced: 0, acks: 0, fullFromA: 0 }
    pipe.tap = (from, frame) => {
      const f = decodeMux(frame)
      if (from === 'a') {
        if (f.type === 'data' && f.data.length === MAX_DATA_BYTES) frames.fullFromA++
        return
      }
      if (f.type === 'ack') frames.acks++
      else if (f.channel !== 0) frames.sequenced++
    }
    const ch = a.openChannel(7)
    const got = collect(ch)
    const data = randomBytes(4 * MiB)
    ch.end(data)
    expect(sha(await got.done)).toBe(sha(data))
    await until(() => a.unacknowledged.frames === 0 && b.unacknowledged.frames === 0, 'both replay buffers empty')
    expect(a.unacknowledged.bytes).toBe(0)
    // B acknowledged A's 64 full DATA frames of one channel in ACKs of ACK_EVERY_BYTES_ALONE
    // (four full frames); A's small frames (OPEN, its WINDOWs for B's echo, FIN) went with
    // them or in a delayed ACK: about one ACK per four full frames, not one per frame.
    expect(frames.fullFromA).toBe(4 * MiB / MAX_DATA_BYTES)
    expect(frames.acks).toBeGreaterThan(0)
    expect(frames.acks).toBeLessThanOrEqual(frames.fullFromA / 4 + 8)
  })

  /** ACKs B sends while A sends 4 MiB on one channel (to a sink), beside a second channel with a 1-byte write every 256 KiB when `small`. */
  async function acksOf(small: boolean): Promise<number> {
    const pipe = messagePipe()
    const a = mux(pipe.a, true)
    const b = mux(pipe.b, false)
    b.on('open', (req) => {
      req.accept()
      req.channel.resume()
    })
    let acks = 0
    pipe.tap = (from, frame) => {
      if (from === 'b' && decodeMux(frame).type === 'ack') acks++
    }
    const bulk = a.openChannel(7)
    const other = small ? a.openChannel(8) : null
    await Promise.all([bulk.opened, other?.opened])
    const data = randomBytes(4 * MiB)
    for (let at = 0; at < data.length; at += 256 * 1024) {
      bulk.write(data.subarray(at, at + 256 * 1024))
      other?.write(Buffer.from('?'))
    }
    await until(() => a.unacknowledged.frames === 0, 'A to be acknowledged', 5_000)
    return acks
  }

  it('one channel alone: the receiver acknowledges every four full frames (ACK_EVERY_BYTES_ALONE), not every frame', async () => {
    expect(ACK_EVERY_BYTES_ALONE).toBe(4 * MAX_DATA_BYTES)
    const acks = await acksOf(false)
    expect(acks).toBeGreaterThanOrEqual((4 * MiB) / (4 * MAX_DATA_BYTES))
    expect(acks).toBeLessThanOrEqual((4 * MiB) / (4 * MAX_DATA_BYTES) + 4)
  })

  it('while a second channel sends beside a bulk transfer, the receiver acknowledges every full frame (ACK_EVERY_BYTES)', async () => {
    expect(ACK_EVERY_BYTES).toBe(MAX_DATA_BYTES)
    expect(await acksOf(true)).toBeGreaterThanOrEqual((4 * MiB) / MAX_DATA_BYTES)
  })

  it('a few small frames are acknowledged after a short delay (no ACK per frame, no ACK never)', async () => {
    const pipe = messagePipe()
    const a = mux(pipe.a, true)
    const b = mux(pipe.b, false)
    echo(b)
    const acks: number[] = []
    pipe.tap = (from, frame) => {
      const f = decodeMux(frame)
      if (from === 'b' && f.type === 'ack') acks.push(f.received)
    }
    const ch = a.openChannel(7)
    ch.write(Buffer.from('hello'))
    await settle(20)
    expect(acks.length).toBeLessThan(ACK_EVERY_FRAMES)
    await until(() => a.unacknowledged.frames === 0, 'A to be acknowledged', 2_000)
    expect(acks.at(-1)).toBe(2) // OPEN and DATA
  })

  it('the delayed ACK runs on the injected clock: none before ACK_DELAY_MS of its time, one at it', async () => {
    const pipe = messagePipe()
    const clock = new FakeClock()
    const a = mux(pipe.a, true)
    const b = new Mux(pipe.b, false, silentLogger, clock)
    muxes.push(b)
    echo(b)
    const acks: number[] = []
    pipe.tap = (from, frame) => {
      const f = decodeMux(frame)
      if (from === 'b' && f.type === 'ack') acks.push(f.received)
    }
    const ch = a.openChannel(7)
    let echoed = 0
    ch.on('data', (d: Buffer) => (echoed += d.length))
    ch.on('error', () => undefined) // closed by afterEach
    ch.write(Buffer.from('hello'))
    await until(() => echoed === 5, 'the echo')
    await settle(20)
    clock.advance(ACK_DELAY_MS - 1)
    expect(acks).toEqual([])
    clock.advance(1)
    expect(acks).toEqual([2]) // OPEN and DATA
  })
})

/** A echoes `bytes` of random data off B over pipe1; `cut` moves both to a new pipe (the old one dead). */
function echoTransfer(bytes: number): { pipe1: ReturnType<typeof messagePipe>; a: Mux; b: Mux; ch: MuxChannel; got: ReturnType<typeof collect>; data: Buffer; cut: () => ReturnType<typeof messagePipe> } {
  const pipe1 = messagePipe()
  const a = mux(pipe1.a, true)
  const b = mux(pipe1.b, false)
  echo(b)
  const ch = a.openChannel(7)
  const got = collect(ch)
  const data = randomBytes(bytes)
  ch.end(data)
  const cut = (): ReturnType<typeof messagePipe> => {
    const next = messagePipe()
    const ra = a.detach()
    const rb = b.detach()
    expect(a.resumeOn(next.a, rb)).toBe(true)
    expect(b.resumeOn(next.b, ra)).toBe(true)
    return next
  }
  return { pipe1, a, b, ch, got, data, cut }
}

describe('Mux: resume on a new session', () => {
  it('a transfer cut in the middle (frames lost both ways) completes byte-exact over the new session: no loss, no duplicate, no reset', async () => {
    const { pipe1, ch, got, data, cut } = echoTransfer(6 * MiB)
    const errors: Error[] = []
    ch.on('error', (e) => errors.push(e))
    await until(() => got.bytes() > 1 * MiB, 'part of the echo')
    pipe1.up = false // the path dies: frames in flight are lost both ways
    await settle(50) // both sides keep sending into the void for a while
    cut()
    const echoed = await got.done
    expect(echoed.length).toBe(data.length)
    expect(sha(echoed)).toBe(sha(data))
    expect(errors).toEqual([])
  })

  it('resumes twice in a row (the first new session dies too) and still delivers exactly once', async () => {
    const { pipe1, got, data, cut } = echoTransfer(5 * MiB)
    await until(() => got.bytes() > 512 * 1024, 'part of the echo')
    pipe1.up = false
    const pipe2 = cut()
    await until(() => got.bytes() > 2 * MiB, 'more of the echo')
    pipe2.up = false
    await settle(20)
    cut()
    expect(sha(await got.done)).toBe(sha(data))
  })

  it('frames arriving on the old session after detach() are dropped, not delivered twice', async () => {
    const { a, b, got, data } = echoTransfer(3 * MiB)
    await until(() => got.bytes() > 256 * 1024, 'part of the echo')
    // A stops reading the old session while it still delivers (a resume raced a live path).
    const ra = a.detach()
    await settle(30)
    const rb = b.detach()
    const pipe2 = messagePipe()
    a.resumeOn(pipe2.a, rb)
    b.resumeOn(pipe2.b, ra)
    const echoed = await got.done
    expect(echoed.length).toBe(data.length)
    expect(sha(echoed)).toBe(sha(data))
  })
})

/** A peer we play by hand: everything A writes is recorded; we feed A frames. */
class HandPeer extends EventEmitter implements MessageStream {
  destroyed = false
  readonly frames: MuxFrame[] = []
  /** Bytes of each sequenced frame written, in order. */
  readonly sequencedBytes: number[] = []
  write(buf: Buffer): boolean {
    const f = decodeMux(buf)
    this.frames.push(f)
    if (f.channel !== 0) this.sequencedBytes.push(buf.length)
    return true
  }
  feed(f: MuxFrame): void {
    this.emit('data', encodeMux(f))
  }
}

describe('Mux: the in-flight limit, turns, and lying peers', () => {
  /** Sequenced frames A sent so far (what an ACK of everything names). */
  const sequenced = (peer: HandPeer): number => peer.frames.filter((f) => f.channel !== 0).length

  it(`unacknowledged data stops at the in-flight limit (${INFLIGHT_FLOOR_BYTES / MiB} MiB before a round trip is measured; never past REPLAY_MAX_BYTES, ${REPLAY_MAX_BYTES / MiB} MiB) however much window the peer grants, and flows again on its ACK`, async () => {
    const peer = new HandPeer()
    const a = mux(peer, true)
    const channels: MuxChannel[] = []
    for (let i = 0; i < 8; i++) channels.push(a.openChannel(7))
    for (const ch of channels) peer.feed({ type: 'open-ok', channel: ch.id, window: CHANNEL_WINDOW_BYTES })
    let written = 0
    for (const ch of channels) ch.write(randomBytes(CHANNEL_WINDOW_BYTES), () => (written += CHANNEL_WINDOW_BYTES))
    await settle(50)
    // 8 channels × 4 MiB of window: 32 MiB allowed by the windows, 1 MiB by the limit.
    expect(a.inflightLimit.bytes).toBe(INFLIGHT_FLOOR_BYTES)
    const held = a.unacknowledged.bytes
    expect(held).toBeGreaterThanOrEqual(INFLIGHT_FLOOR_BYTES - MAX_DATA_BYTES)
    expect(held).toBeLessThan(INFLIGHT_FLOOR_BYTES + MAX_DATA_BYTES + 1024)
    expect(written).toBeLessThan(8 * CHANNEL_WINDOW_BYTES)
    // The peer acknowledges everything it has, each time: the rest goes, never more in flight than the bound.
    let most = 0
    while (written < 8 * CHANNEL_WINDOW_BYTES) {
      peer.feed({ type: 'ack', channel: 0, received: sequenced(peer) })
      await settle(2)
      most = Math.max(most, a.unacknowledged.bytes)
    }
    expect(most).toBeLessThan(REPLAY_MAX_BYTES + MAX_DATA_BYTES + 1024)
  })

  it('a PING goes in front of the first DATA of an idle tunnel, and its PONG gives the limit a round trip', async () => {
    const peer = new HandPeer()
    const a = mux(peer, true)
    const ch = a.openChannel(7)
    peer.feed({ type: 'open-ok', channel: ch.id, window: CHANNEL_WINDOW_BYTES })
    ch.write(Buffer.from('hello'))
    await settle(5)
    const types = peer.frames.map((f) => f.type)
    expect(types.slice(-2)).toEqual(['ping', 'data'])
    const probe = peer.frames.at(-2) as Extract<MuxFrame, { type: 'ping' }>
    expect(a.inflightLimit.rttMs).toBeNull()
    const pongs: number[] = []
    a.on('pong', (seq) => pongs.push(seq))
    peer.feed({ type: 'pong', channel: 0, seq: probe.seq })
    expect(a.inflightLimit.rttMs).not.toBeNull()
    expect(pongs).toEqual([]) // the mux's own: not the tunnel's pings
    ch.write(Buffer.from('again'))
    await settle(5)
    expect(peer.frames.at(-1)!.type).toBe('data') // a fresh round trip: no second probe
  })

  it('a 1-byte write waiting behind a bulk transfer at the limit goes out on the next ACK after at most one of the bulk\'s frames', async () => {
    const peer = new HandPeer()
    const a = mux(peer, true)
    const bulk = a.openChannel(7)
    const small = a.openChannel(8)
    for (const ch of [bulk, small]) peer.feed({ type: 'open-ok', channel: ch.id, window: CHANNEL_WINDOW_BYTES })
    bulk.write(randomBytes(CHANNEL_WINDOW_BYTES))
    await settle(20)
    expect(a.congested).toBe(true)
    small.write(Buffer.from('x'))
    await settle(5)
    const smallData = (frames: MuxFrame[]): number => frames.findIndex((f) => f.type === 'data' && f.channel === small.id)
    expect(smallData(peer.frames)).toBe(-1)
    for (let round = 0; round < 2; round++) {
      // Each ACK frees the whole limit: the bulk could fill it again before the small write.
      const before = peer.frames.length
      peer.feed({ type: 'ack', channel: 0, received: sequenced(peer) })
      await settle(5)
      const data = peer.frames.slice(before).filter((f) => f.type === 'data')
      if (round === 0) expect(smallData(data)).toBe(1) // the bulk's one frame (its turn came first), then the small write
      else expect(smallData(data)).toBe(-1) // sent once, not again
      expect(data.length).toBeGreaterThan(2) // and the bulk goes on
    }
  })

  it('an older peer that acknowledges only every 1 MiB still has the next bytes on their way when it does (not stop-and-wait)', async () => {
    const peer = new HandPeer()
    const a = mux(peer, true)
    const ch = a.openChannel(7)
    peer.feed({ type: 'open-ok', channel: ch.id, window: CHANNEL_WINDOW_BYTES })
    let written = 0
    ch.write(randomBytes(CHANNEL_WINDOW_BYTES), () => (written = CHANNEL_WINDOW_BYTES))
    // The old peer: one ACK per 1 MiB of frames received (ACK_EVERY_BYTES was 1 MiB).
    let acked = 0
    let most = 0
    for (let round = 0; round < 40 && written === 0; round++) {
      await settle(5)
      let bytes = 0
      let n = acked
      while (n < peer.sequencedBytes.length && bytes < MiB) bytes += peer.sequencedBytes[n++]!
      if (bytes < MiB) continue
      acked = n
      peer.feed({ type: 'ack', channel: 0, received: acked })
      await settle(5)
      most = Math.max(most, a.unacknowledged.bytes)
    }
    // Right after an ACK of 1 MiB, another MiB or so is still in flight.
    expect(most).toBeGreaterThan(1.5 * MiB)
    expect(a.inflightLimit.bytes).toBeGreaterThanOrEqual(2 * MiB)
  })

  it('on a LAN (a probe answered in 0.3 ms) a 1-byte write behind a bulk transfer waits behind at most SHORT_PATH_FLOOR_BYTES of it, not INFLIGHT_FLOOR_BYTES', async () => {
    const peer = new HandPeer()
    const clock = new FakeClock()
    const a = new Mux(peer, true, silentLogger, clock)
    muxes.push(a)
    const bulk = a.openChannel(7)
    const small = a.openChannel(8)
    for (const ch of [bulk, small]) peer.feed({ type: 'open-ok', channel: ch.id, window: 2 * CHANNEL_WINDOW_BYTES })
    // Two requests in idle moments RTT_PROBE_EVERY_MS apart: each goes behind a probe,
    // answered in 0.3 ms (SHORT_PATH_SAMPLES round trips: a short path).
    for (let i = 0; i < SHORT_PATH_SAMPLES; i++) {
      const before = peer.frames.length
      small.write(Buffer.from('?'))
      await settle(5)
      const probe = peer.frames.slice(before).find((f) => f.type === 'ping') as Extract<MuxFrame, { type: 'ping' }>
      clock.t += 0.3
      peer.feed({ type: 'pong', channel: 0, seq: probe.seq })
      peer.feed({ type: 'ack', channel: 0, received: sequenced(peer) })
      clock.t += RTT_PROBE_EVERY_MS
    }
    bulk.write(randomBytes(2 * CHANNEL_WINDOW_BYTES))
    await settle(10)
    // The peer reads a frame every 0.6 ms (100 MB/s) and acknowledges each (ACK_EVERY_BYTES):
    // the bulk transfer keeps the limit full, and the small write comes in the middle of it.
    let smallBehind = -1
    let received = sequenced(peer) - (peer.frames.filter((f) => f.type === 'data' && f.channel === bulk.id).length)
    for (let i = 0; i < 100 && smallBehind < 0; i++) {
      clock.t += 0.6
      received = Math.min(sequenced(peer), received + 1)
      peer.feed({ type: 'ack', channel: 0, received })
      await settle(1)
      if (i === 40) small.write(Buffer.from('x'))
      if (i >= 40 && peer.frames.some((f) => f.type === 'data' && f.channel === small.id && f.data.toString() === 'x')) smallBehind = a.unacknowledged.bytes
    }
    expect(a.inflightLimit.rttMs).toBeCloseTo(0.3)
    expect(a.inflightLimit.bytes).toBeLessThan(SHORT_PATH_FLOOR_BYTES + MAX_DATA_BYTES)
    // What was sent and not yet read by the peer when the small write went: what it waits behind.
    expect(smallBehind).toBeGreaterThan(0)
    expect(smallBehind).toBeLessThan(SHORT_PATH_FLOOR_BYTES + 2 * MAX_DATA_BYTES)
  })

  it('a probe PONG that raises the limit lets waiting channels send at once (not at the next ACK)', async () => {
    const peer = new HandPeer()
    const clock = new FakeClock()
    const a = new Mux(peer, true, silentLogger, clock)
    muxes.push(a)
    const ch = a.openChannel(7)
    peer.feed({ type: 'open-ok', channel: ch.id, window: 4 * CHANNEL_WINDOW_BYTES })
    ch.write(randomBytes(4 * CHANNEL_WINDOW_BYTES))
    await settle(10)
    const probe = peer.frames.find((f) => f.type === 'ping') as Extract<MuxFrame, { type: 'ping' }>
    expect(probe).toBeDefined()
    // ACKs over 300 ms give a rate; the probe's PONG has not come yet.
    for (let i = 0; i < 3; i++) {
      clock.t += 100
      peer.feed({ type: 'ack', channel: 0, received: sequenced(peer) })
      await settle(10)
    }
    expect(a.congested).toBe(true)
    expect(a.inflightLimit.rttMs).toBeNull()
    const before = peer.frames.length
    clock.t += 200
    peer.feed({ type: 'pong', channel: 0, seq: probe.seq })
    expect(a.inflightLimit.bytes).toBeGreaterThan(INFLIGHT_FLOOR_BYTES)
    await settle(10)
    expect(peer.frames.slice(before).filter((f) => f.type === 'data').length).toBeGreaterThan(0)
  })

  it("an ACK for frames never sent breaks the tunnel ('broken'), and a resume claiming them is refused", () => {
    const peer = new HandPeer()
    const a = mux(peer, true)
    a.openChannel(7) // one sequenced frame sent
    const broken: string[] = []
    a.on('broken', (r) => broken.push(r))
    peer.feed({ type: 'ack', channel: 0, received: 1 })
    expect(broken).toEqual([])
    peer.feed({ type: 'ack', channel: 0, received: 5 })
    expect(broken).toEqual([expect.stringMatching(/never sent/)])
    const b = mux(new HandPeer(), true)
    b.openChannel(7)
    b.detach()
    expect(b.resumeOn(new HandPeer(), 2)).toBe(false)
  })
})

describe('resume decisions (pure)', () => {
  const tunnel = (over: Partial<ResumableTunnel> = {}): ResumableTunnel => ({ id: Buffer.alloc(16, 1), opener: false, introKey: '11', isUp: false, isMigrating: true, ageMs: 60_000, ...over })
  const resume = (id: Buffer): Parameters<typeof onResumeRequest>[0] => ({ type: 'resume', channel: 0, tunnelId: id, received: 0 })

  it("a RESUME naming the tunnel we hold with this peer (we did not open it) resumes it", () => {
    expect(onResumeRequest(resume(Buffer.alloc(16, 1)), tunnel())).toBe('resume')
  })

  it("a RESUME naming another tunnel, or coming when we hold none with this key, starts fresh: the manager looks tunnels up by the session's proven key, so a stranger who knows the id gets no one else's tunnel", () => {
    expect(onResumeRequest(resume(Buffer.alloc(16, 2)), tunnel())).toBe('fresh')
    expect(onResumeRequest(resume(Buffer.alloc(16, 1)), undefined)).toBe('fresh')
  })

  it('a RESUME from the side that did not open the tunnel is not honoured (only the opener resumes)', () => {
    expect(onResumeRequest(resume(Buffer.alloc(16, 1)), tunnel({ opener: true }))).toBe('fresh')
  })

  it('a fresh tunnel replaces a migrating or an established one (the peer lost it); only two fresh ones opened at once keep the tie-break', () => {
    expect(onFreshTunnel({ introKey: '22' }, tunnel())).toBe('replace')
    expect(onFreshTunnel({ introKey: '22' }, tunnel({ isUp: true, isMigrating: false }))).toBe('replace')
    expect(onFreshTunnel({ introKey: '22' }, tunnel({ isUp: true, isMigrating: false, ageMs: SIMULTANEOUS_OPEN_MS - 1 }))).toBe('keep-current')
    expect(onFreshTunnel({ introKey: '00' }, tunnel({ isUp: true, isMigrating: false, ageMs: 1 }))).toBe('replace')
  })
})
