// A consumer that throws while the mux delivers to it (src/tunnel/consumer-guard.ts): a
// channel's 'data' listener or sink, an 'open' listener, a listener of the tunnel's own
// events. Each runs inside the session's read callback; before, its exception unwound
// into it, uncaught, and ended natd. Now the channel (or the tunnel) ends, logged, and the
// frame's delivery returns normally.
//
//   Mux A (opener) ── pipe.a ═══ frames ═══ pipe.b ── Mux B (consumers that throw)   (./mux-pair.ts)
//
// Frames are pushed into B's session end by hand, as its read callback would: a throw
// that escaped would come out of that push().
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import type { Logger, LogFields } from '../../../src/protocol/log.js'
import { encodeMux, type MuxFrame } from '../../../src/protocol/mux.js'
import type { OpenRequest } from '../../../src/tunnel/mux.js'
import type { MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { muxPairs, type MuxPair } from './mux-pair.js'
import { settle, until } from './pipe.js'

interface Logged {
  level: string
  msg: string
  fields: LogFields | undefined
}

function recordingLogger(lines: Logged[]): Logger {
  const at =
    (level: string) =>
    (msg: string, fields?: LogFields): void => {
      lines.push({ level, msg, fields })
    }
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => log }
  return log
}

const pair = muxPairs()

interface World extends MuxPair {
  logged: Logged[]
  /** Delivers `f` to B as its session's read would; throws what the delivery throws. */
  toB(f: MuxFrame): void
}

async function world(onOpen: (req: OpenRequest) => void): Promise<World> {
  const logged: Logged[] = []
  const p = pair({ b: recordingLogger(logged) })
  p.b.on('open', onOpen)
  await settle() // B's session is flowing: a push() delivers at once
  return { ...p, logged, toB: (f: MuxFrame) => void p.pipe.b.push(encodeMux(f)) }
}

/** Opens a channel from A and waits for B's side of it. */
async function open(w: World, port: number, taken: MuxChannel[]): Promise<MuxChannel> {
  const before = taken.length
  const ch = w.a.openChannel(port)
  await until(() => taken.length > before, 'B took the channel')
  return ch
}

function channelError(ch: MuxChannel): Promise<Error | null> {
  return new Promise((resolve) => {
    if (ch.destroyed) return resolve(ch.errored)
    ch.once('close', () => resolve(ch.errored))
  })
}

describe('consumer guard: a consumer that throws ends its channel, not natd', () => {
  it('a \'data\' listener that throws, on the tick the channel starts flowing or inside the delivery: the channel is reset, logged; another channel carries on', async () => {
    const taken: MuxChannel[] = []
    const w = await world((req) => {
      req.accept()
      taken.push(req.channel)
    })
    const later = await open(w, 7, taken)
    const inside = await open(w, 8, taken)
    const good = await open(w, 9, taken)
    const boom = (): never => {
      throw new Error('consumer bug')
    }
    const received: Buffer[] = []
    taken[2]!.on('data', (d: Buffer) => received.push(d))

    // 'data' emitted on a later tick (the stream starts flowing after on('data')): outside the mux's delivery.
    taken[0]!.on('data', boom)
    expect(() => w.toB({ type: 'data', channel: later.id, data: Buffer.from('boom') })).not.toThrow()
    // 'data' emitted inside push(), in the delivery.
    taken[1]!.on('data', boom)
    await settle()
    expect(taken[1]!.readableFlowing).toBe(true)
    expect(() => w.toB({ type: 'data', channel: inside.id, data: Buffer.from('boom') })).not.toThrow()
    expect(taken[1]!.destroyed).toBe(true)

    for (const ch of [later, inside]) {
      const err = await channelError(ch) // A reads B's RESET: the peer learns nothing of the exception
      expect(err).toBeInstanceOf(NatdError)
      expect((err as NatdError).code).toBe('TUNNEL_CLOSED')
      expect(err?.message).toBe("natd failed taking the channel's data (see its log)")
    }
    const errors = w.logged.filter((l) => l.level === 'error').map((l) => [l.msg, l.fields?.where, l.fields?.err])
    expect(errors).toEqual([
      ["a consumer of the peer's frames failed", `channel ${later.id}`, 'consumer bug'],
      ["a consumer of the peer's frames failed", `channel ${inside.id}`, 'consumer bug']
    ])

    good.write('still here')
    await until(() => Buffer.concat(received).toString() === 'still here', 'the other channel\'s data')
    expect(w.b.size).toBe(1)
  })

  it('an \'end\' listener that throws (emitted a tick after the peer\'s FIN): the channel ends, logged', async () => {
    const taken: MuxChannel[] = []
    const w = await world((req) => {
      req.accept()
      taken.push(req.channel)
    })
    const ch = await open(w, 7, taken)
    taken[0]!.resume()
    taken[0]!.on('end', () => {
      throw new Error('end handler bug')
    })
    ch.end()
    await until(() => taken[0]!.destroyed, 'B\'s channel ended')
    expect(w.logged.filter((l) => l.level === 'error').map((l) => l.fields?.err)).toEqual(['end handler bug'])
  })

  it('a \'close\' listener that throws: the other \'close\' listeners still run (join\'s onClose and onDone count connections), once() ones once', async () => {
    const taken: MuxChannel[] = []
    const w = await world((req) => {
      req.accept()
      taken.push(req.channel)
    })
    const ch = await open(w, 7, taken)
    const heard: string[] = []
    taken[0]!.on('close', () => {
      throw new Error('close handler bug')
    })
    taken[0]!.on('close', () => heard.push('onClose'))
    taken[0]!.once('close', () => heard.push('onDone'))
    ch.destroy()
    await until(() => heard.length === 2, 'the other close listeners')
    expect(heard).toEqual(['onClose', 'onDone'])
    expect(taken[0]!.listenerCount('close')).toBe(2) // the once() listener is gone
    expect(w.logged.filter((l) => l.level === 'error').map((l) => l.fields?.err)).toEqual(['close handler bug'])
  })

  it('a sink (a joined socket, a file) whose data() throws: the channel is reset, the delivery returns', async () => {
    const taken: MuxChannel[] = []
    const w = await world((req) => {
      req.accept()
      taken.push(req.channel)
    })
    const ch = await open(w, 9, taken)
    taken[0]!.deliverTo({
      data: () => {
        throw new Error('sink bug')
      },
      end: () => undefined
    })
    expect(() => w.toB({ type: 'data', channel: ch.id, data: Buffer.from('x') })).not.toThrow()
    expect(((await channelError(ch)) as NatdError).message).toBe("natd failed taking the channel's data (see its log)")
    expect(w.logged.filter((l) => l.level === 'error').map((l) => l.fields?.err)).toEqual(['sink bug'])
  })

  it('an \'open\' listener that throws: that OPEN is refused (INTERNAL), the next one is taken', async () => {
    const taken: MuxChannel[] = []
    const w = await world((req) => {
      if (req.port === 1) throw new Error('open handler bug')
      req.accept()
      taken.push(req.channel)
    })
    const refused = w.a.openChannel(1)
    await expect(refused.opened).rejects.toMatchObject({ code: 'INTERNAL' })
    expect(w.b.size).toBe(0)
    await open(w, 2, taken)
    expect(w.b.size).toBe(1)
  })

  it('a listener of the tunnel\'s events that throws (on a PONG): the delivery returns, the tunnel is reported broken by us (INTERNAL), not by the peer (BAD_REQUEST)', async () => {
    const w = await world(() => undefined)
    const broken: string[][] = []
    w.b.on('broken', (reason, code) => broken.push([reason, code]))
    w.b.on('pong', () => {
      throw new Error('pong handler bug')
    })
    expect(() => w.toB({ type: 'pong', channel: 0, seq: 1 })).not.toThrow()
    expect(broken).toEqual([["natd failed taking the channel's data (see its log)", 'INTERNAL']])
    expect(w.logged.filter((l) => l.level === 'error').map((l) => [l.fields?.where, l.fields?.err])).toEqual([['tunnel', 'pong handler bug']])
  })
})
