// Reading a secret-stream's messages on its raw stream (src/tunnel/session-reader.ts),
// against real secret-streams joined by an in-memory wire whose bytes the test holds and
// hands to the reader in pieces of its choosing:
//
//   SecretStream a ── write() ──▶ wire (held) ──▶ feed(pieces) ──▶ SecretStream b ── readMessages()
//
// What must hold: the messages a wrote come out whole and in order, whatever the split of
// the bytes into reads (every split point of a two-message run, byte by byte, a large
// message across many reads, a message secret-stream had half read when the reader took
// over); corrupted or too-short messages destroy the session with secret-stream's own
// error; a length above MAX_MESSAGE_BYTES is refused before anything is gathered. Over
// TCP, a slab whose messages were released (delivery-lease.ts) is read into again, and a
// message its consumer kept is never overwritten.
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { Duplex } from 'node:stream'
import SecretStream from '@hyperswarm/secret-stream'
import { afterEach, describe, expect, it } from 'vitest'
import { released } from '../../../src/tunnel/delivery-lease.js'
import { MAX_MESSAGE_BYTES, readMessages } from '../../../src/tunnel/session-reader.js'
import { tcpSessions, type TcpSessions } from './secret-stream-pair.js'

/** One end of an in-memory wire: what one side writes comes out of the other as 'data', unless held. */
class Wire extends Duplex {
  peer!: Wire
  /** Bytes written to this end's peer while held (the test feeds them). */
  held: Buffer[] | null = null
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const p = this.peer
    const copy = Buffer.from(chunk)
    if (p.held) p.held.push(copy)
    else queueMicrotask(() => p.emit('data', copy))
    cb()
  }
  /** Delivers bytes as one read. */
  feed(bytes: Uint8Array): void {
    this.emit('data', Buffer.from(bytes))
  }
}

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0)) c()
})

interface Pair {
  a: SecretStream
  b: SecretStream
  wireB: Wire
  errors: Error[]
}

/** Two sessions, set up (both headers exchanged), b's incoming bytes held from now on. */
async function pair(): Promise<Pair> {
  const wireA = new Wire()
  const wireB = new Wire()
  wireA.peer = wireB
  wireB.peer = wireA
  const a = new SecretStream(true, wireA)
  const b = new SecretStream(false, wireB)
  const errors: Error[] = []
  a.on('error', () => undefined)
  b.on('error', (err: Error) => errors.push(err))
  cleanups.push(() => {
    a.destroy()
    b.destroy()
  })
  await Promise.all([a.opened, b.opened])
  // The stream headers follow the handshake: one message each way sets both up.
  const first = new Promise((resolve) => b.once('data', resolve))
  a.write(Buffer.from('hello'))
  await first
  wireB.held = []
  return { a, b, wireB, errors }
}

/** Writes `messages` on a and returns the bytes they became on the wire. */
async function wireBytes(p: Pair, messages: Buffer[]): Promise<Buffer> {
  for (const m of messages) p.a.write(m)
  const total = messages.reduce((n, m) => n + 3 + m.length + 17, 0)
  for (let i = 0; i < 100 && p.wireB.held!.reduce((n, c) => n + c.length, 0) < total; i++) await new Promise((r) => setImmediate(r))
  const wire = Buffer.concat(p.wireB.held!)
  p.wireB.held = []
  expect(wire.length).toBe(total)
  return wire
}

function reader(p: Pair): Buffer[] {
  const got: Buffer[] = []
  readMessages(p.b, (m) => got.push(Buffer.from(m)))
  return got
}

const gone = (s: SecretStream): boolean => s.destroyed || (s as unknown as { destroying: boolean }).destroying

/** The reader parses b's raw stream (secret-stream's parser is off it). */
const taken = (p: Pair): boolean => !p.wireB.listeners('data').some((f) => f.name === 'bound _onrawdata')

const tick = (): Promise<void> => new Promise((r) => setImmediate(r))

describe('readMessages on a secret-stream', () => {
  it('takes over the raw stream: secret-stream parses no more, and each message is delivered within the read', async () => {
    const p = await pair()
    const got = reader(p)
    expect(taken(p)).toBe(true)
    const wire = await wireBytes(p, [Buffer.from('one'), Buffer.from('two')])
    p.wireB.feed(wire)
    // Synchronously: streamx would have emitted them on a later tick.
    expect(got.map(String)).toEqual(['one', 'two'])
  })

  it('delivers two messages whole and in order at every split point of their bytes', async () => {
    const messages = [randomBytes(40), randomBytes(25)]
    const first = await pair()
    const wire = await wireBytes(first, messages)
    for (let cut = 0; cut <= wire.length; cut++) {
      const p = cut === 0 ? first : await pair()
      const got = reader(p)
      const w = cut === 0 ? wire : await wireBytes(p, messages)
      p.wireB.feed(w.subarray(0, cut))
      p.wireB.feed(w.subarray(cut))
      expect(got, `split at ${cut}`).toEqual(messages)
      expect(p.errors).toEqual([])
      p.a.destroy()
      p.b.destroy()
    }
  })

  it('delivers messages fed one byte per read, and a 200 KiB message across 1448-byte reads', async () => {
    const p = await pair()
    const got = reader(p)
    const small = [Buffer.from('a'), Buffer.alloc(0), randomBytes(100)]
    const wire = await wireBytes(p, small)
    for (const byte of wire) p.wireB.feed(Buffer.of(byte))
    expect(got).toEqual(small)
    const big = randomBytes(200 * 1024)
    const wire2 = await wireBytes(p, [big, Buffer.from('after')])
    for (let off = 0; off < wire2.length; off += 1448) p.wireB.feed(wire2.subarray(off, off + 1448))
    expect(got.slice(3)).toEqual([big, Buffer.from('after')])
    expect(p.errors).toEqual([])
  })

  it('adopts a message secret-stream had partly read before the reader took over', async () => {
    for (const cut of [1, 2, 3, 4, 30]) {
      const p = await pair()
      const messages = [randomBytes(60), Buffer.from('next')]
      const wire = await wireBytes(p, messages)
      p.wireB.feed(wire.subarray(0, cut)) // secret-stream's parser holds `cut` bytes
      const got = reader(p)
      p.wireB.feed(wire.subarray(cut))
      expect(got, `cut at ${cut}`).toEqual(messages)
      expect(taken(p)).toBe(true)
    }
  })

  it('waits for messages secret-stream has queued, then takes over without reordering', async () => {
    const p = await pair()
    const wire = await wireBytes(p, [Buffer.from('queued-1'), Buffer.from('queued-2'), Buffer.from('later')])
    const split = 3 + 8 + 17 + 3 + 8 + 17
    p.wireB.feed(wire.subarray(0, split)) // in streamx's queue, not yet emitted
    const got = reader(p)
    p.wireB.feed(wire.subarray(split))
    await tick()
    expect(got.map(String)).toEqual(['queued-1', 'queued-2', 'later'])
    expect(taken(p)).toBe(true)
  })

  it('is plain data events for anything that is not a secret-stream', () => {
    const e = new Duplex({ read() {} })
    const got: Buffer[] = []
    readMessages(e, (m) => got.push(m))
    e.emit('data', Buffer.from('x'))
    expect(got.map(String)).toEqual(['x'])
  })
})

describe('readMessages rejects what secret-stream rejects', () => {
  /** The error a plain secret-stream (no reader) destroys itself with for the same bytes. */
  async function secretStreamsOwn(corrupt: (wire: Buffer) => Buffer): Promise<string | undefined> {
    const p = await pair()
    const wire = corrupt(await wireBytes(p, [randomBytes(50)]))
    const got: Buffer[] = []
    p.b.on('data', (m: Buffer) => got.push(m))
    p.wireB.feed(wire)
    await tick()
    expect(got).toEqual([])
    return p.errors[0]?.message
  }

  async function ours(corrupt: (wire: Buffer) => Buffer): Promise<{ got: Buffer[]; error: string | undefined; destroyed: boolean }> {
    const p = await pair()
    const got = reader(p)
    expect(taken(p)).toBe(true)
    const wire = corrupt(await wireBytes(p, [randomBytes(50)]))
    p.wireB.feed(wire)
    await tick()
    return { got, error: p.errors[0]?.message, destroyed: gone(p.b) }
  }

  const cases: Array<[string, (w: Buffer) => Buffer]> = [
    ['a flipped ciphertext byte', (w) => ((w[10]! ^= 0x40), w)],
    ['a flipped MAC byte', (w) => ((w[w.length - 1]! ^= 1), w)],
    ['a flipped tag byte', (w) => ((w[3]! ^= 1), w)],
    ['a message shorter than ABYTES', () => Buffer.from([5, 0, 0, 1, 2, 3, 4, 5])]
  ]
  for (const [name, corrupt] of cases) {
    it(`${name}: the session is destroyed with secret-stream's error, nothing delivered`, async () => {
      const theirs = await secretStreamsOwn(corrupt)
      const r = await ours(corrupt)
      expect(theirs).toBeDefined()
      expect(r.got).toEqual([])
      expect(r.destroyed).toBe(true)
      expect(r.error).toBe(theirs)
    })
  }

  it(`refuses a length above ${MAX_MESSAGE_BYTES} bytes on its three length bytes, before gathering any`, async () => {
    const p = await pair()
    const got = reader(p)
    const len = MAX_MESSAGE_BYTES + 1
    p.wireB.feed(Buffer.from([len & 0xff, (len >>> 8) & 0xff, len >>> 16]))
    await tick()
    expect(got).toEqual([])
    expect(gone(p.b)).toBe(true)
    expect(p.errors[0]?.message).toMatch(/larger than/)
  })

  it('delivers nothing after a corrupted message, even what follows it in the same read', async () => {
    const p = await pair()
    const got = reader(p)
    const wire = await wireBytes(p, [Buffer.from('good'), Buffer.from('bad!'), Buffer.from('never')])
    wire[3 + 4 + 17 + 3 + 2]! ^= 0xff
    p.wireB.feed(wire)
    await tick()
    expect(got.map(String)).toEqual(['good'])
    expect(gone(p.b)).toBe(true)
  })
})

describe('readMessages over TCP: reads straight into its own slabs', () => {
  async function tcpPair(): Promise<TcpSessions> {
    const pair = await tcpSessions()
    cleanups.push(pair.close)
    return pair
  }

  /** Waits (≤ 5 s: the machine may be loaded) for `cond`. */
  async function until(cond: () => boolean): Promise<void> {
    for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10))
    await new Promise((r) => setImmediate(r)) // the switch to our buffers follows the message that allowed it
  }

  /** The buffer net.Socket reads into, when switched to `onread` (null: Node allocates one per read). */
  const userBuffer = (sock: net.Socket): unknown => (sock as unknown as Record<symbol, unknown>)[Object.getOwnPropertySymbols(sock).find((x) => x.description === 'kBuffer')!]

  it('switches the socket to its own buffers and delivers 8 MiB of frames of every size whole and in order', async () => {
    const { a, b, server, errors } = await tcpPair()
    const sent: Buffer[] = []
    // Sizes around the slab's edges: full DATA frames, small control frames, odd sizes.
    for (let i = 0; i < 160; i++) sent.push(randomBytes(i % 5 === 0 ? 64 * 1024 + 5 : i % 5 === 1 ? 9 : (i * 7919) % 70_000))
    const got: Buffer[] = []
    // What each delivered message keeps alive: small ones must not pin a slab (a peer could make us hold 256 KiB per byte).
    const pinned: Array<[number, number]> = []
    const done = new Promise<void>((resolve) => {
      readMessages(b, (m) => {
        pinned.push([m.length, m.buffer.byteLength])
        got.push(Buffer.from(m))
        if (got.length === sent.length) resolve()
      })
    })
    a.write(Buffer.from('first')) // sets b up; the reader takes over on it
    sent.unshift(Buffer.from('first'))
    await until(() => got.length === 1)
    expect(userBuffer(server)).toBeInstanceOf(Uint8Array)
    for (const m of sent.slice(1)) a.write(m)
    await done
    const sha = (bs: Buffer[]): string[] => bs.map((x) => createHash('sha256').update(x).digest('hex'))
    expect(sha(got)).toEqual(sha(sent))
    expect(errors).toEqual([])
    for (const [len, held] of pinned) expect(held, `a ${len}-byte message holds ${held}`).toBeLessThanOrEqual(Math.max(8 * len, Buffer.poolSize)) // small copies come from Node's shared pool
    // Full DATA frames are opened where the kernel put them (in a slab), not copied.
    expect(pinned.filter(([len, held]) => len === 64 * 1024 + 5 && held > len).length).toBeGreaterThan(10)
  })

  it('a session paused with bytes read ahead (as the responder holds it until the mux listens): every message, in order, then slabs', async () => {
    const { a, b, server, errors } = await tcpPair()
    const first = new Promise((resolve) => b.once('data', resolve))
    a.write(Buffer.from('first'))
    await first
    b.pause()
    const sent: Buffer[] = []
    for (let i = 0; i < 40; i++) sent.push(randomBytes(i % 3 === 0 ? 64 * 1024 + 5 : 1000 + i * 3001))
    for (const m of sent) a.write(m)
    await until(() => server.readableLength > 0) // secret-stream's queue is full: Node holds the rest
    const got: Buffer[] = []
    readMessages(b, (m) => got.push(Buffer.from(m)))
    b.resume()
    await until(() => got.length === sent.length)
    expect(got.length).toBe(sent.length)
    expect(got.every((m, i) => m.equals(sent[i]!))).toBe(true)
    expect(errors).toEqual([])
    a.write(Buffer.from('last'))
    await until(() => got.length === sent.length + 1)
    expect(userBuffer(server)).toBeInstanceOf(Uint8Array)
    expect(String(got.at(-1))).toBe('last')
  })

  it('a slab whose large messages were all released is read into again; a message kept by its consumer is never overwritten', async () => {
    const { a, b, server, errors } = await tcpPair()
    const sent: Buffer[] = []
    for (let i = 0; i < 240; i++) sent.push(randomBytes(i % 7 === 3 ? 40_000 + i : 64 * 1024 + 5))
    // Messages 0-119 are released as they come; of 120-239 every third is kept as it was delivered (a view).
    const kept: Array<[number, Buffer]> = []
    const releasedMemory = new Set<ArrayBufferLike>()
    let n = 0
    let bad = 0
    const done = new Promise<void>((resolve) => {
      readMessages(b, (m) => {
        const i = n++ - 1 // the first message is 'first'
        if (i >= 0 && !m.equals(sent[i]!)) bad++
        if (i >= 0 && i < 120) {
          releasedMemory.add(m.buffer)
          released()
        } else if (i >= 120 && i % 3 === 0) kept.push([i, m])
        else if (i >= 120) released()
        if (i === sent.length - 1) resolve()
      })
    })
    a.write(Buffer.from('first'))
    await until(() => n === 1)
    expect(userBuffer(server)).toBeInstanceOf(Uint8Array)
    for (const m of sent) a.write(m)
    await done
    expect(bad).toBe(0)
    expect(errors).toEqual([])
    // ~7.5 MiB released: read in one slab over and over (a new one only when a message does not fit), not ~30.
    expect(releasedMemory.size).toBeLessThanOrEqual(3)
    // What was kept still holds what was sent, though later reads went on.
    expect(kept.length).toBe(40)
    for (const [i, m] of kept) expect(m.equals(sent[i]!), `message ${i}`).toBe(true)
  })

  it('a corrupted message on the socket destroys the session with secret-stream\'s error', async () => {
    const { a, b, server, errors } = await tcpPair()
    const got: Buffer[] = []
    readMessages(b, (m) => got.push(m))
    a.write(Buffer.from('first'))
    await until(() => got.length === 1)
    expect(userBuffer(server)).toBeInstanceOf(Uint8Array)
    // A frame of the right length that was never sealed with this session's key.
    const bogus = Buffer.alloc(3 + 40 + 17, 7)
    bogus.writeUIntLE(40 + 17, 0, 3)
    ;(a.rawStream as unknown as net.Socket).write(bogus)
    await until(() => gone(b))
    expect(gone(b)).toBe(true)
    expect(got.map(String)).toEqual(['first'])
    expect(errors[0]?.message).toMatch(/decrypt|invalid|fail/i)
  })
})
