/**
 * A plain Node TCP relay: what any Node forwarder does with no crypto and no mux. Two of
 * these (one per side) give the `tcp_node_relay` baseline, the same four-process
 * topology as a natd forward over direct-tcp:
 *
 *   client ─▶ relay (alice) ─▶ TCP over the lab path ─▶ relay (bob) ─▶ server
 *
 *   node bench/tcp-relay.ts LISTEN_HOST LISTEN_PORT TO_HOST TO_PORT
 *
 * Half-close is passed through (the sink replies its byte count after the client's FIN).
 */
import net from 'node:net'

const [listenHost, listenPort, toHost, toPort] = process.argv.slice(2)
if (!toPort) {
  console.error('usage: tcp-relay.ts LISTEN_HOST LISTEN_PORT TO_HOST TO_PORT')
  process.exit(2)
}

net
  .createServer({ allowHalfOpen: true }, (a) => {
    const b = net.connect({ host: toHost, port: Number(toPort), allowHalfOpen: true })
    a.setNoDelay(true)
    b.setNoDelay(true)
    a.pipe(b)
    b.pipe(a)
    const kill = (): void => {
      a.destroy()
      b.destroy()
    }
    a.on('error', kill)
    b.on('error', kill)
  })
  .listen(Number(listenPort), listenHost, () => console.log('listening'))
