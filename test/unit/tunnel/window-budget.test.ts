// The budget of a tunnel's channel windows (src/tunnel/window-budget.ts): the logic alone,
// then over a Mux pair (./mux-pair.ts): what the peer is granted (OPEN_OK, WINDOWs), how
// a busy channel grows to its full window, and what channels past the budget get. No
// clock: windows grow with what consumers take, not with time.
import { describe, expect, it } from 'vitest'
import { decodeMux, encodeMux, MAX_DATA_BYTES, type MuxFrame } from '../../../src/protocol/mux.js'
import { goodbyeCode } from '../../../src/tunnel/resume.js'
import { CHANNEL_WINDOW_BYTES, INITIAL_CHANNEL_WINDOW_BYTES, MIN_CHANNEL_WINDOW_BYTES, TUNNEL_WINDOW_BUDGET_BYTES, WindowBudget, windowUpdateBytes } from '../../../src/tunnel/window-budget.js'
import type { MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { muxPairs, type MuxPair } from './mux-pair.js'
import { until } from './pipe.js'

const KiB = 1024
const MiB = 1024 * KiB

const pair = muxPairs()

describe('WindowBudget', () => {
  it('gives new channels INITIAL_CHANNEL_WINDOW_BYTES while the budget has room, then MIN_CHANNEL_WINDOW_BYTES', () => {
    const b = new WindowBudget(MiB)
    const windows = Array.from({ length: 6 }, () => b.open())
    expect(windows).toEqual([INITIAL_CHANNEL_WINDOW_BYTES, INITIAL_CHANNEL_WINDOW_BYTES, INITIAL_CHANNEL_WINDOW_BYTES, INITIAL_CHANNEL_WINDOW_BYTES, MIN_CHANNEL_WINDOW_BYTES, MIN_CHANNEL_WINDOW_BYTES])
    expect(b.heldBytes).toBe(MiB + 2 * MIN_CHANNEL_WINDOW_BYTES)
  })

  it('doubles a window per grant of a quarter of it, up to CHANNEL_WINDOW_BYTES', () => {
    const b = new WindowBudget()
    let w = b.open()
    const seen = [w]
    while (w < CHANNEL_WINDOW_BYTES) {
      w = b.grow(w, w / 4)
      seen.push(w)
    }
    expect(seen).toEqual([256 * KiB, 512 * KiB, MiB, 2 * MiB, 4 * MiB])
    expect(b.grow(w, MiB)).toBe(CHANNEL_WINDOW_BYTES) // never past it
    expect(b.heldBytes).toBe(CHANNEL_WINDOW_BYTES)
  })

  it('grows no window past the budget; a closed channel frees its window for the others', () => {
    const b = new WindowBudget(5 * MiB)
    const big = b.grow(b.open(), 4 * MiB) // 4 MiB
    let small = b.open() // 256 KiB: 4.25 MiB held
    small = b.grow(small, 256 * KiB) // wants 1.25 MiB: gets 0.75
    expect(small).toBe(MiB)
    expect(b.heldBytes).toBe(5 * MiB)
    expect(b.grow(small, MiB)).toBe(small) // spent
    expect(b.open()).toBe(MIN_CHANNEL_WINDOW_BYTES) // opened past it
    b.close(big)
    expect(b.grow(small, MiB)).toBe(CHANNEL_WINDOW_BYTES)
    expect(b.heldBytes).toBe(CHANNEL_WINDOW_BYTES + MIN_CHANNEL_WINDOW_BYTES)
  })

  it('grants back every quarter of the window, at most every WINDOW_UPDATE_MIN_BYTES', () => {
    expect(windowUpdateBytes(CHANNEL_WINDOW_BYTES, MiB)).toBe(MiB)
    expect(windowUpdateBytes(INITIAL_CHANNEL_WINDOW_BYTES, MiB)).toBe(64 * KiB)
    expect(windowUpdateBytes(MIN_CHANNEL_WINDOW_BYTES, MiB)).toBe(4 * KiB)
  })
})

describe('goodbyeCode', () => {
  it("takes the error code a peer's GOODBYE starts with, and nothing else", () => {
    expect(goodbyeCode('BUSY: the agent holds 256 tunnels other peers opened, its most; try again later')).toBe('BUSY')
    expect(goodbyeCode('RELAY_LIMIT: the relay ended this tunnel; open a new one')).toBe('RELAY_LIMIT')
    expect(goodbyeCode('closed by user')).toBeUndefined()
    expect(goodbyeCode('NOT_A_CODE: x')).toBeUndefined()
  })
})

/** Every frame `side` sent, decoded. */
function framesFrom(p: MuxPair, side: 'a' | 'b'): MuxFrame[] {
  const frames: MuxFrame[] = []
  p.pipe.tap = (from, buf) => {
    if (from === side) frames.push(decodeMux(buf))
  }
  return frames
}

describe('Mux: channel windows under the tunnel budget', () => {
  it('a channel whose consumer reads grows to CHANNEL_WINDOW_BYTES; when it ends its window goes back to the budget', async () => {
    const p = pair()
    const fromB = framesFrom(p, 'b')
    let theirs: MuxChannel | null = null
    p.b.on('open', (req) => {
      theirs = req.channel
      req.accept()
      req.channel.resume() // reads everything
    })
    const ch = p.a.openChannel(80)
    await ch.opened
    ch.end(Buffer.alloc(8 * MiB))
    await until(() => theirs !== null && theirs.readableEnded, 'the 8 MiB to be read', 20_000)
    expect(fromB.find((f) => f.type === 'open-ok')).toMatchObject({ window: INITIAL_CHANNEL_WINDOW_BYTES })
    expect(theirs!.receiveWindow).toBe(CHANNEL_WINDOW_BYTES)
    // What the peer may send now: the full window but what was read since the last grant (< 1 MiB).
    const credit = INITIAL_CHANNEL_WINDOW_BYTES + fromB.reduce((sum, f) => sum + (f.type === 'window' ? f.increment : 0), 0) - p.b.bytesIn
    expect(credit).toBeGreaterThan(CHANNEL_WINDOW_BYTES - MiB)
    expect(credit).toBeLessThanOrEqual(CHANNEL_WINDOW_BYTES)
    theirs!.end()
    await until(() => p.b.windows.heldBytes === 0, "the channel's window to be freed")
  })

  it('channels whose consumers never read hold only their first windows; past the budget they get MIN_CHANNEL_WINDOW_BYTES, and a peer sending past it is reset', async () => {
    const p = pair()
    const fromB = framesFrom(p, 'b')
    const theirs: MuxChannel[] = []
    p.b.on('open', (req) => {
      theirs.push(req.channel)
      req.accept()
      req.channel.deliverTo({ data: () => false, end: () => undefined }) // a socket whose queue is full
    })
    const fit = TUNNEL_WINDOW_BUDGET_BYTES / INITIAL_CHANNEL_WINDOW_BYTES
    for (let i = 0; i < fit + 2; i++) p.a.openChannel(80).on('error', () => undefined)
    await until(() => fromB.filter((f) => f.type === 'open-ok').length === fit + 2, 'the channels to open')
    const windows = fromB.flatMap((f) => (f.type === 'open-ok' ? [f.window] : []))
    expect(windows.slice(0, fit).every((w) => w === INITIAL_CHANNEL_WINDOW_BYTES)).toBe(true)
    expect(windows.slice(fit)).toEqual([MIN_CHANNEL_WINDOW_BYTES, MIN_CHANNEL_WINDOW_BYTES])
    expect(p.b.windows.heldBytes).toBe(TUNNEL_WINDOW_BUDGET_BYTES + 2 * MIN_CHANNEL_WINDOW_BYTES)
    // The last channel's peer sends past its 16 KiB window (an honest one stops at it).
    const last = theirs.at(-1)!
    const reset = new Promise<Error | undefined>((resolve) => last.once('error', resolve))
    p.pipe.a.write(encodeMux({ type: 'data', channel: last.id, data: Buffer.alloc(MIN_CHANNEL_WINDOW_BYTES) }))
    p.pipe.a.write(encodeMux({ type: 'data', channel: last.id, data: Buffer.alloc(1) }))
    await expect(reset).resolves.toMatchObject({ code: 'BAD_REQUEST' })
    expect(MAX_DATA_BYTES).toBeGreaterThan(MIN_CHANNEL_WINDOW_BYTES) // one frame could carry more: the check is what stops it
  })
})
