// Abuse rows for the tunnel's multiplexer (the in-flight limit of inflight-cap.ts, the
// channels' receive windows): a hostile peer that speaks the mux protocol by hand on its
// end of an in-memory session, against a real Mux on the other end.
//
//   victim: Mux ═══ pipe ═══ hostile peer (raw frames: lying ACKs and PONGs, data past its window)
//
// Each row records what it measured now beside what the attack did before
// (test/abuse/record.ts).
import { afterEach, describe, expect, it } from 'vitest'
import { decodeMux, encodeData, encodeMux, isSequenced, MAX_DATA_BYTES, MUX, type MuxFrame } from '../../src/protocol/mux.js'
import { silentLogger } from '../../src/protocol/log.js'
import { INFLIGHT_FLOOR_BYTES, RTT_PROBE_SEQ, isProbeSeq } from '../../src/tunnel/inflight-cap.js'
import { MAX_PONGS_UNDRAINED, Mux, REPLAY_MAX_BYTES, type MessageStream, type OpenRequest } from '../../src/tunnel/mux.js'
import { CHANNEL_WINDOW_BYTES, type ChannelSink } from '../../src/tunnel/mux-channel.js'
import { messagePipe, settle, until } from '../unit/tunnel/pipe.js'
import { recordAbuse } from './record.js'

const MiB = 1024 * 1024

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

/** A real Mux (the victim) and the raw other end of its session (the hostile peer). */
function hostile(): {
  victim: Mux
  /** Sends one raw frame to the victim. */
  send(f: MuxFrame | Buffer): void
  /** Sequenced frames the victim sent so far (what an honest ACK would carry). */
  readonly seqFromVictim: number
  /** Every frame the victim sent, decoded, in order. */
  frames: MuxFrame[]
  /** Called with each frame the victim sends. */
  onFrame: ((f: MuxFrame, raw: Buffer) => void) | null
  broken: string[]
} {
  const pipe = messagePipe()
  const victim = new Mux(pipe.a, true, silentLogger)
  let seq = 0
  const h = {
    victim,
    send: (f: MuxFrame | Buffer) => pipe.b.write(Buffer.isBuffer(f) ? f : encodeMux(f)),
    get seqFromVictim() {
      return seq
    },
    frames: [] as MuxFrame[],
    onFrame: null as ((f: MuxFrame, raw: Buffer) => void) | null,
    broken: [] as string[]
  }
  pipe.b.on('data', (raw: Buffer) => {
    if (isSequenced(raw)) seq++
    const f = decodeMux(raw)
    if (f.type !== 'data') h.frames.push(f)
    h.onFrame?.(f, raw)
  })
  victim.on('broken', (why) => h.broken.push(why))
  cleanups.push(() => {
    victim.close('test over')
    pipe.a.destroy()
    pipe.b.destroy()
  })
  return h
}

/** Resolves once the victim has read every frame sent before: its PONG to a PING sent after them came. */
async function pingThrough(h: ReturnType<typeof hostile>): Promise<void> {
  h.send({ type: 'ping', channel: 0, seq: 1 })
  await until(() => h.frames.some((f) => f.type === 'pong' && f.seq === 1), 'the PONG', 20_000)
}

describe('abuse: the tunnel multiplexer', () => {
  it('1. a peer that ACKs frames never sent: the tunnel is broken at once, nothing is freed', async () => {
    const h = hostile()
    const ch = h.victim.openChannel(0, 'x')
    await until(() => h.seqFromVictim === 1, 'the OPEN')
    h.send({ type: 'ack', channel: 0, received: 5 }) // 1 was sent
    await until(() => h.broken.length > 0, 'broken')
    expect(h.broken[0]).toMatch(/never sent/)
    expect(h.victim.unacknowledged.frames).toBe(1)
    ch.destroy()
    recordAbuse({ row: 'mux: an ACK for frames never sent', metric: 'tunnel broken', before: '(new row)', now: 'broken', unit: '', bound: 'the tunnel closes; the replay buffer is never "freed" past what was sent' })
  })

  it('2. a liar that ACKs in ever larger spans, answers probes late, then stops ACKing: what we hold stays ≤ the replay bound', async () => {
    const h = hostile()
    const ch = h.victim.openChannel(0, 'x')
    let span = INFLIGHT_FLOOR_BYTES
    let unackedAtPeer = 0
    let acking = true
    let maxHeld = 0
    let maxLimit = 0
    h.onFrame = (f, raw) => {
      if (f.type === 'open') h.send({ type: 'open-ok', channel: f.channel, window: 0xffffffff }) // all the credit it wants
      // Probes answered 300 ms late: a long "round trip" makes rate × rtt (and the limit) large.
      if (f.type === 'ping' && isProbeSeq(f.seq)) setTimeout(() => h.send({ type: 'pong', channel: 0, seq: f.seq }), 300)
      if (!isSequenced(raw)) return
      maxHeld = Math.max(maxHeld, h.victim.unacknowledged.bytes)
      maxLimit = Math.max(maxLimit, h.victim.inflightLimit.bytes)
      unackedAtPeer += raw.length
      // One ACK per `span` bytes, each span twice the last: the floor (2 × the largest span) doubles.
      if (acking && unackedAtPeer >= span) {
        h.send({ type: 'ack', channel: 0, received: h.seqFromVictim })
        unackedAtPeer = 0
        span *= 2
        if (span > REPLAY_MAX_BYTES) acking = false // then never again
      }
    }
    await ch.opened
    const chunk = Buffer.alloc(MAX_DATA_BYTES, 7)
    let written = 0
    const started = Date.now()
    // Writes until the victim's channel waits for good (the liar stopped ACKing), or 256 MiB.
    // 4 s without a drain means "for good" even on a loaded machine (a 1.5 s wait once ended the loop early in a parallel run).
    while (written < 256 * MiB && Date.now() - started < 20_000) {
      if (!ch.write(chunk)) {
        const drained = await Promise.race([new Promise<boolean>((r) => ch.once('drain', () => r(true))), new Promise<boolean>((r) => setTimeout(() => r(false), 4_000))])
        if (!drained) break
      }
      written += chunk.length
    }
    await settle(20)
    const heldAtEnd = h.victim.unacknowledged.bytes
    expect(acking).toBe(false) // the liar went through all its spans
    expect(h.broken).toEqual([])
    // One frame and the OPEN may go out past the limit (the check is before a send).
    expect(maxLimit).toBeLessThanOrEqual(REPLAY_MAX_BYTES)
    expect(maxHeld).toBeLessThanOrEqual(REPLAY_MAX_BYTES + 2 * (MAX_DATA_BYTES + 5))
    expect(heldAtEnd).toBeLessThanOrEqual(REPLAY_MAX_BYTES + 2 * (MAX_DATA_BYTES + 5))
    expect(maxLimit).toBeGreaterThan(INFLIGHT_FLOOR_BYTES) // the lies did move the limit: the bound is what held it
    recordAbuse({ row: 'mux: a liar that ACKs in doubling spans, answers probes 300 ms late, then stops ACKing', metric: 'unacknowledged bytes the victim held at most', before: '(new row; the limit is from issue 18)', now: maxHeld, unit: 'bytes', bound: `≤ REPLAY_MAX_BYTES ${REPLAY_MAX_BYTES} + 2 frames; the channel then waits (its own tunnel only); control frames to REPLAY_HARD_MAX_BYTES break the tunnel` })
  }, 45_000)

  it('3. probe PONGs nobody asked for and ACKs of nothing, 10,000 each: no round trip is learnt, the limit stays at the floor', async () => {
    const h = hostile()
    const t0 = process.cpuUsage()
    for (let i = 0; i < 10_000; i++) {
      h.send({ type: 'pong', channel: 0, seq: RTT_PROBE_SEQ })
      h.send({ type: 'ack', channel: 0, received: 0 })
    }
    await pingThrough(h)
    const cpu = process.cpuUsage(t0)
    expect(h.broken).toEqual([])
    expect(h.victim.inflightLimit).toEqual({ bytes: INFLIGHT_FLOOR_BYTES, rttMs: null, bytesPerMs: 0 })
    recordAbuse({ row: 'mux: 10,000 unsolicited probe PONGs + 10,000 ACKs of nothing', metric: 'in-flight limit after', before: '(new row)', now: h.victim.inflightLimit.bytes, unit: 'bytes', bound: `the floor (${INFLIGHT_FLOOR_BYTES}), no round trip learnt; ${Math.round((cpu.user + cpu.system) / 1000)} ms of CPU for 20,000 frames` })
  }, 30_000)

  it('4. a peer that sends past the window it was granted, into a consumer that does not read: the channel is reset at the window', async () => {
    const h = hostile()
    let taken = 0
    let req: OpenRequest | null = null
    // A consumer that never drains (a forwarded socket whose reader stopped, a file on a stalled disk).
    const stalled: ChannelSink = { data: (b) => ((taken += b.length), false), end: () => undefined }
    h.victim.on('open', (r) => {
      req = r
      r.accept()
      r.channel.deliverTo(stalled)
    })
    h.send({ type: 'open', channel: 2, port: 0, window: CHANNEL_WINDOW_BYTES, service: 'x' })
    await until(() => req !== null, 'the OPEN')
    const payload = Buffer.alloc(MAX_DATA_BYTES, 1)
    const sent = 4 * CHANNEL_WINDOW_BYTES
    for (let i = 0; i < sent / MAX_DATA_BYTES; i++) h.send(encodeData(2, payload))
    await pingThrough(h)
    const reset = h.frames.find((f) => f.type === 'reset')
    expect(taken).toBeLessThanOrEqual(CHANNEL_WINDOW_BYTES)
    expect(reset).toMatchObject({ channel: 2, message: expect.stringMatching(/window/) })
    expect(h.broken).toEqual([])
    recordAbuse({ row: 'mux: 16 MiB of DATA past the granted window into a consumer that does not read', metric: 'bytes the consumer was handed (held in memory)', before: '16777216 (all of it): the window was not enforced on receipt', now: taken, unit: 'bytes', bound: `≤ CHANNEL_WINDOW_BYTES ${CHANNEL_WINDOW_BYTES}; the channel is reset` })
  }, 30_000)

  it('5. a peer that sends PINGs and never reads its session: PONGs stop at MAX_PONGS_UNDRAINED until it drains', async () => {
    // A session whose peer does not read: every write() says "wait for a drain", which never
    // comes (over loopback TCP, once the kernels' ~4 MB of buffers are full, each 20,000
    // PINGs then added 580 KB to our socket's queue: docs/SECURITY.md).
    let onData: ((buf: Buffer) => void) | null = null
    let written = 0
    let pongs = 0
    let drain: (() => void) | null = null
    const stuck: MessageStream = {
      write: (buf) => {
        written += buf.length
        if (buf[0] === MUX.PONG) pongs++
        return false
      },
      once: (_event, fn) => (drain = fn),
      on: (_event, fn) => (onData = fn),
      destroyed: false
    }
    const victim = new Mux(stuck, true, silentLogger)
    cleanups.push(() => victim.close('test over'))
    const ping = encodeMux({ type: 'ping', channel: 0, seq: 1 })
    for (let i = 0; i < 100_000; i++) onData!(ping)
    const pongsStuck = pongs
    expect(pongsStuck).toBeLessThanOrEqual(MAX_PONGS_UNDRAINED + 1)
    expect(written).toBeLessThan((MAX_PONGS_UNDRAINED + 1) * 64)
    // Once the peer reads again (the session drains), PINGs are answered again.
    drain!()
    onData!(ping)
    expect(pongs).toBe(pongsStuck + 1)
    recordAbuse({ row: 'a peer that sends 100,000 PINGs and never reads its session', metric: 'PONGs queued in our session', before: '100,000 (over loopback TCP: +580 KB per 20,000 once the kernel buffers were full, without limit)', now: pongsStuck, unit: 'frames', bound: `≤ MAX_PONGS_UNDRAINED (${MAX_PONGS_UNDRAINED}) + 1 until the session drains` })
  })

  it('5b. an honest peer under a saturated send: every drain counts its PINGs afresh, so PONGs never stop', () => {
    // Each drain is followed at once by more of our own bytes (the session is full again)
    // before the peer's next keepalive PING comes: needDrain is set at every PING.
    let onData: ((buf: Buffer) => void) | null = null
    let pongs = 0
    let drain: (() => void) | null = null
    const saturated: MessageStream = {
      write: (buf) => {
        if (buf[0] === MUX.PONG) pongs++
        return false
      },
      once: (_event, fn) => (drain = fn),
      on: (_event, fn) => (onData = fn),
      destroyed: false
    }
    const victim = new Mux(saturated, true, silentLogger)
    cleanups.push(() => victim.close('test over'))
    victim.ping(1) // fills the session: needDrain
    const ping = encodeMux({ type: 'ping', channel: 0, seq: 7 })
    const rounds = 2 * MAX_PONGS_UNDRAINED
    for (let i = 0; i < rounds; i++) {
      onData!(ping)
      const d = drain!
      drain = null
      d()
      victim.ping(1) // more of our bytes right after the drain: full again
    }
    expect(pongs).toBe(rounds)
  })

  it('6. a peer that sends 100,000 channel frames and never reads its session: no ACK is queued until it drains, then one with the whole count', async () => {
    let onData: ((buf: Buffer) => void) | null = null
    let drain: (() => void) | null = null
    let stuck = true
    const acks: number[] = []
    const session: MessageStream = {
      write: (buf) => {
        if (buf[0] === MUX.ACK) acks.push((decodeMux(buf) as Extract<MuxFrame, { type: 'ack' }>).received)
        return !stuck
      },
      once: (_event, fn) => (drain = fn),
      on: (_event, fn) => (onData = fn),
      destroyed: false
    }
    const victim = new Mux(session, true, silentLogger)
    cleanups.push(() => victim.close('test over'))
    // Sequenced frames (DATA on a channel of the peer's parity that was never opened: counted, then dropped).
    const data = encodeData(2, Buffer.alloc(16))
    const FRAMES = 100_000
    for (let i = 0; i < FRAMES; i++) onData!(data)
    const acksStuck = acks.length
    expect(acksStuck).toBeLessThanOrEqual(1) // the first write finds the session full; nothing after it
    // Once the peer reads again, one ACK with the count of every frame (ACKs are cumulative).
    stuck = false
    drain!()
    expect(acks.slice(acksStuck)).toEqual([FRAMES])
    recordAbuse({ row: 'a peer that sends 100,000 small channel frames and never reads its session', metric: 'ACKs queued in our session', before: `${FRAMES / 32} (one per 32 frames: ~3% of what it sent, without limit)`, now: acksStuck, unit: 'frames', bound: '≤ 1 until the session drains, then one cumulative ACK' })
  })
})
