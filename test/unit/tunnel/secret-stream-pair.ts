// Two secret-streams over a loopback TCP pair, set up (Noise done), for the session tests.
import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'

export interface TcpSessions {
  /** The initiator, over `client`. */
  a: SecretStream
  /** The responder, over `server`. */
  b: SecretStream
  client: net.Socket
  server: net.Socket
  /** Errors b was destroyed with (a's are ignored). */
  errors: Error[]
  close(): void
}

export async function tcpSessions(): Promise<TcpSessions> {
  const srv = net.createServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const accepted = new Promise<net.Socket>((resolve) => srv.once('connection', resolve))
  const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1')
  const server = await accepted
  const a = new SecretStream(true, client)
  const b = new SecretStream(false, server)
  const errors: Error[] = []
  a.on('error', () => undefined)
  b.on('error', (err: Error) => errors.push(err))
  const close = (): void => {
    a.destroy()
    b.destroy()
    srv.close()
  }
  await Promise.all([a.opened, b.opened])
  return { a, b, client, server, errors, close }
}
