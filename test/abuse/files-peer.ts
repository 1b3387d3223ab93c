// A peer's tunnel to bob's Files over a real Mux pair on an in-memory pipe, for the abuse
// tests that drive the peer's end by hand (inbox-cost, file-supersede, file-prune-resume).
import type { Files } from '../../src/daemon/files.js'
import { silentLogger } from '../../src/protocol/log.js'
import { Mux } from '../../src/tunnel/mux.js'
import { messagePipe } from '../unit/tunnel/pipe.js'
import { upTunnel } from '../unit/helpers.js'

/** A tunnel from `peer` to bob: returns the peer's end of the mux; closing both ends is pushed to `cleanups`. */
export function connect(bob: Files, peer: { name: string; id: string }, cleanups: Array<() => void>): Mux {
  const pipe = messagePipe()
  const theirs = new Mux(pipe.a, true, silentLogger)
  const ours = new Mux(pipe.b, false, silentLogger)
  cleanups.push(() => {
    theirs.close('over')
    ours.close('over')
  })
  const tunnel = upTunnel(peer, ours)
  ours.on('open', (req) => bob.onChannel(tunnel, req))
  return theirs
}
