// A natd-rendezvous in the test's own process, on loopback. Its UDP and TCP share one
// port (and the alternate UDP port is port + 1 unless altPort is 0), so port 0 cannot be
// asked for: ports free now (freePort) are tried until one binds, as a test running in
// parallel may take one between the check and the bind. Shared by the server's, the
// cluster's, the agent's and the abuse tests.
import type { RendezvousServer } from '../../../src/rendezvous/server.js'
import { freePort } from '../helpers.js'

/** Ports tried before giving up with the last error. */
const START_ATTEMPTS = 20

/** Starts the server `make` builds for a free port; the caller stops it. */
export async function startOnFreePort(make: (port: number) => RendezvousServer): Promise<{ server: RendezvousServer; port: number }> {
  let lastErr: unknown
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    const port = await freePort()
    const server = make(port)
    try {
      await server.start()
      return { server, port }
    } catch (err) {
      lastErr = err
      await server.stop().catch(() => undefined)
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    }
  }
  throw lastErr
}
