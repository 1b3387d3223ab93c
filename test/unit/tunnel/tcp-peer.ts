// A host that accepts TCP connections (as a router that lets a SYN through would) and
// answers the Noise handshake as `key`: the other end of a TCP punch, for tcp-punch and
// manager tests.
import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import type { KeyPair } from '../../../src/protocol/identity.js'

export interface TcpPeer {
  port: number
  /** One per accepted connection, in order. */
  sessions: SecretStream[]
  close(): void
}

/** `initiator`: whether this end starts the Noise handshake (the punching side then answers it). */
export async function tcpPeer(key: KeyPair, initiator = false): Promise<TcpPeer> {
  const sessions: SecretStream[] = []
  const server = net.createServer((sock) => {
    const s = new SecretStream(initiator, sock as never, { keyPair: key })
    s.on('error', () => undefined)
    sessions.push(s)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    sessions,
    close: () => {
      for (const s of sessions) s.destroy()
      server.close()
    }
  }
}
