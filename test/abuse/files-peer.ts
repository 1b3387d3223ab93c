// A peer's tunnel to bob's Files over a real Mux pair on an in-memory pipe, for the abuse
// tests that drive the peer's end by hand (inbox-cost, file-supersede, file-prune-resume).
import type { Files } from '../../src/daemon/files.js'
import type { Mux } from '../../src/tunnel/mux.js'
import { muxPair } from '../unit/tunnel/mux-pair.js'
import { upTunnel } from '../unit/helpers.js'

/** A tunnel from `peer` to bob: returns the peer's end of the mux; closing both ends is pushed to `cleanups`. */
export function connect(bob: Files, peer: { name: string; id: string }, cleanups: Array<() => void>): Mux {
  const { a: theirs, b: ours } = muxPair(cleanups)
  const tunnel = upTunnel(peer, ours)
  ours.on('open', (req) => bob.onChannel(tunnel, req))
  return theirs
}
