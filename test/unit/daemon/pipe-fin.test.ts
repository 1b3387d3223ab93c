// The peer's FIN in the same read of the tunnel as the channel's last data, to a local
// socket whose kernel buffers are full (src/daemon/pipe.ts SocketGather.flush() during
// the session reader's batch, tunnel/delivery-lease.ts), over real mux channels on a
// secret-stream session on loopback TCP:
//
//   Mux A ═ secret-stream/TCP ═ Mux B ─ channel 1 ══ join ══ conn1 ──TCP──▶ target 1 (reads only when told)
//                                     └ channel 0 ══ join ══ conn0 ──TCP──▶ target 0 (reads everything)
//
// What the application at target 1 must see: exactly the bytes sent, then EOF. The
// last data and the FIN go out in one write at A (one callback), so B reads them in one
// read; conn1 cannot take that data whole, so its write stays queued and refers to the
// reader's slab. Channel 0's traffic then makes B read the tunnel again: had the batch
// called that slab free, it would be read into again and target 1 would get other bytes.
// Leaving the kernel no room for the tail takes a 12 MiB fill and a slow read, and works
// only some of the time, so the test tries again on a fresh connection (up to 6), and
// says skipped if the kernel had room every time.
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { afterEach, expect, it } from 'vitest'
import { join } from '../../../src/daemon/pipe.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { Mux } from '../../../src/tunnel/mux.js'
import type { MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { tcpSessions } from '../tunnel/secret-stream-pair.js'
import { until } from '../tunnel/pipe.js'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
/** Sent before the tail: well over a connection's kernel buffers on loopback (they grow to a few MiB). */
const FILL_BYTES = 12 * 1024 * 1024
/** Attempts at leaving the kernel no room for the tail (about half do, on a machine shared by several runs). */
const MAX_ATTEMPTS = 6
/** The last data: one DATA frame at or above the reader's copy threshold (32 KiB), so it is a view into the slab. */
const TAIL_BYTES = 64 * 1024
/** Channel 0's traffic: many slabs' worth (256 KiB each) read by B after the FIN. */
const OTHER_BYTES = 4 * 1024 * 1024

interface Leg {
  /** A's end of the channel, B's end, B's connection to the target, and the target's socket. */
  chA: MuxChannel
  chB: MuxChannel
  conn: net.Socket
  target: net.Socket
}

it('the peer\u2019s FIN in the same read as data, to a socket that cannot take it whole: the application gets exactly the bytes sent', async (ctx) => {
  const s = await tcpSessions()
  cleanups.push(() => s.close())
  const muxA = new Mux(s.a as never, true, silentLogger)
  const muxB = new Mux(s.b as never, false, silentLogger)
  cleanups.push(() => {
    muxA.close('test over')
    muxB.close('test over')
  })
  const targets: net.Socket[] = []
  const srv = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.pause()
    targets.push(sock)
    cleanups.push(() => sock.destroy())
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  cleanups.push(() => srv.close())
  const port = (srv.address() as net.AddressInfo).port
  const atB: Array<{ ch: MuxChannel; conn: net.Socket }> = []
  muxB.on('open', (req) => {
    const conn = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    cleanups.push(() => conn.destroy())
    conn.once('connect', () => {
      req.accept()
      atB.push({ ch: req.channel, conn })
      join(conn, req.channel)
    })
  })
  const leg = async (i: number): Promise<Leg> => {
    const chA = muxA.openChannel(port)
    await chA.opened
    await until(() => targets.length > i && atB.length > i, `connection ${i + 1}`)
    return { chA, chB: atB[i]!.ch, conn: atB[i]!.conn, target: targets[i]! }
  }
  const two = await leg(0)
  two.target.resume()

  /**
   * Fills a fresh connection's kernel buffers (its target reads nothing), reads slowly
   * while the rest flows until all of it reached B and the socket's own queue is empty
   * (its kernel buffers all but full), then sends the tail and the FIN in one callback
   * at A (one read at B). The case under test when the socket queued the tail; whether
   * the kernel left room for it is up to its buffer sizing, so the caller tries again.
   */
  const attempt = async (i: number): Promise<{ one: Leg; sent: Buffer[]; got: Buffer[] }> => {
    const one = await leg(i)
    const fill = randomBytes(FILL_BYTES)
    one.chA.write(fill)
    await until(() => one.conn.writableLength > 0, 'the connection to queue', 10_000)
    const got: Buffer[] = []
    for (let n = 0; n < 20_000 && (one.chB.bytesIn < fill.length || one.conn.writableLength > 0); n++) {
      const c = one.target.read(8192) as Buffer | null
      if (c) got.push(c)
      await sleep(1)
    }
    expect(one.chB.bytesIn).toBe(fill.length)
    expect(one.conn.writableLength).toBe(0)
    const tail = randomBytes(TAIL_BYTES)
    one.chA.end(tail)
    await until(() => one.chB.bytesIn === fill.length + tail.length && one.conn.writableEnded, 'the tail and the FIN at B', 10_000)
    return { one, sent: [fill, tail], got }
  }
  let run = await attempt(1)
  for (let i = 2; i <= MAX_ATTEMPTS && run.one.conn.writableLength === 0; i++) run = await attempt(i)
  const { one, sent, got } = run
  // The kernel had room for the tail every time (a busy machine): the case did not occur,
  // which says nothing either way (pipe.test.ts checks the same lease without a kernel).
  if (one.conn.writableLength === 0) return ctx.skip(`the kernel took the tail whole in ${MAX_ATTEMPTS} attempts`)

  // Other traffic makes B read the tunnel again, many times over.
  for (let at = 0; at < OTHER_BYTES; at += 64 * 1024) two.chA.write(randomBytes(64 * 1024))
  await until(() => two.chB.bytesIn === OTHER_BYTES, 'channel 0\u2019s traffic at B', 10_000)

  // Now target 1 reads the rest.
  one.target.on('data', (c: Buffer) => got.push(c))
  const ended = new Promise<void>((resolve) => one.target.once('end', resolve))
  one.target.resume()
  await ended
  const all = Buffer.concat(got)
  const want = Buffer.concat(sent)
  expect(all.length).toBe(want.length)
  expect(sha(all)).toBe(sha(want))
}, 30_000)
