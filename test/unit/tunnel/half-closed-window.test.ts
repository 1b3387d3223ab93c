// Review 10: a channel the peer half-closed (its FIN came and was read) keeps its grown
// window in the tunnel's budget for as long as our side stays open, though the peer can
// send it nothing more. 16 such channels (an upload then a long answer: `nc -N`, a client
// that shuts down its write side, HTTP/1.0-style) spend the 64 MiB budget, and every new
// channel of the tunnel starts at 16 KiB (160 KB/s at 100 ms) until one of them closes.
// (review 10 #3; fails before the fix: 64 MiB stayed spent.)
import { expect, it } from 'vitest'
import type { MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { CHANNEL_WINDOW_BYTES, INITIAL_CHANNEL_WINDOW_BYTES, TUNNEL_WINDOW_BUDGET_BYTES } from '../../../src/tunnel/window-budget.js'
import { muxPairs } from './mux-pair.js'
import { until } from './pipe.js'

const MiB = 1024 * 1024
const pair = muxPairs()

it('a channel whose peer sent its FIN gives its window back once its consumer read to the end', async () => {
  const p = pair()
  const theirs: MuxChannel[] = []
  p.b.on('open', (req) => {
    theirs.push(req.channel)
    req.accept()
    req.channel.resume() // reads everything; b's side stays open (its answer is still being written)
  })
  const N = TUNNEL_WINDOW_BUDGET_BYTES / CHANNEL_WINDOW_BYTES // 16
  for (let i = 0; i < N; i++) {
    const ch = p.a.openChannel(80)
    await ch.opened
    ch.end(Buffer.alloc(8 * MiB)) // the upload, then a's FIN
  }
  await until(() => theirs.length === N && theirs.every((c) => c.readableEnded), 'the uploads to be read to their end', 30_000)
  // Nothing more can come on these channels: their windows hold nothing.
  expect(p.b.windows.heldBytes).toBe(0)
  // And a new channel still gets its full first window.
  const next = p.a.openChannel(80)
  await next.opened
  expect(theirs.at(-1)!.receiveWindow).toBe(INITIAL_CHANNEL_WINDOW_BYTES)
}, 60_000)
