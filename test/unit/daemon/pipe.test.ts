// join() (src/daemon/pipe.ts) between a real loopback TCP connection and a stand-in
// channel (a PassThrough): what the application at the other end of the TCP connection
// sees when the channel ends well (EOF) and when it dies (RST, ECONNRESET).
//
//   client ──TCP──▶ server socket ══ join ══ channel (PassThrough)
import net from 'node:net'
import { PassThrough } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { join } from '../../../src/daemon/pipe.js'

const open: Array<net.Server | net.Socket> = []
afterEach(() => {
  for (const x of open.splice(0)) {
    if (x instanceof net.Socket) x.destroy()
    else x.close()
  }
})

/** A client connected to a server socket that is joined to a fresh channel. */
async function joined(): Promise<{ client: net.Socket; ch: PassThrough }> {
  const ch = new PassThrough()
  const server = net.createServer({ allowHalfOpen: true }, (sock) => join(sock, ch))
  open.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true })
  open.push(client)
  await new Promise((resolve) => client.once('connect', resolve))
  await new Promise((resolve) => setTimeout(resolve, 20)) // the server side has joined
  return { client, ch }
}

/** How the client's connection ends: 'eof' (FIN) or the error code (a RST is ECONNRESET). */
function outcome(client: net.Socket): Promise<{ how: string; data: string }> {
  let data = ''
  client.on('data', (d: Buffer) => (data += d.toString()))
  return new Promise((resolve) => {
    client.once('end', () => resolve({ how: 'eof', data }))
    client.once('error', (err: NodeJS.ErrnoException) => resolve({ how: err.code ?? err.message, data }))
  })
}

describe('join', () => {
  it('a channel that ends normally ends the TCP connection with a FIN, after its data', async () => {
    const { client, ch } = await joined()
    const how = outcome(client)
    ch.end('last words')
    expect(await how).toEqual({ how: 'eof', data: 'last words' })
  })

  it('a channel that dies with an error (tunnel closed, refused, timed out) resets the TCP connection', async () => {
    const { client, ch } = await joined()
    const how = outcome(client)
    ch.write('partial')
    await new Promise((resolve) => setTimeout(resolve, 20))
    ch.destroy(new Error('tunnel closed'))
    expect((await how).how).toBe('ECONNRESET')
  })

  it('a TCP connection reset by the application destroys the channel', async () => {
    const { client, ch } = await joined()
    const closed = new Promise((resolve) => ch.once('close', resolve))
    client.resetAndDestroy()
    await closed
    expect(ch.destroyed).toBe(true)
  })
})
