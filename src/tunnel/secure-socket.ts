/**
 * A Noise session (secret-stream) over a TCP socket that already carried some framed
 * bytes in the clear (the rendezvous CHALLENGE / SECURE exchange). The bytes read past
 * the clear part (`rest`, often the start of the handshake, in the same TCP segment)
 * must reach the session first and none may be lost while it sets itself up, so the
 * session reads from a small Duplex that holds them and then relays the socket.
 * (secret-stream's own `data` option feeds bytes before its handshake is wired and
 * drops the answer.) Control traffic only: the relay and the tunnels do not use this.
 */
import SecretStream from '@hyperswarm/secret-stream'
import type net from 'node:net'
import { Duplex } from 'node:stream'
import type { KeyPair } from '../protocol/identity.js'

class PrefixedSocket extends Duplex {
  constructor(
    private readonly sock: net.Socket,
    rest: Buffer,
    inspect: (chunk: Buffer) => boolean
  ) {
    super()
    if (rest.length && inspect(rest)) this.push(rest)
    sock.on('data', (chunk: Buffer) => {
      if (!inspect(chunk)) return
      if (!this.push(chunk)) sock.pause()
    })
    sock.once('end', () => this.push(null))
    sock.once('error', (err) => this.destroy(err))
    sock.once('close', () => this.destroy())
  }

  override _read(): void {
    this.sock.resume()
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.sock.write(chunk, (err) => cb(err ?? null))
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.sock.end()
    cb()
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.sock.destroy()
    cb(err)
  }
}

/**
 * Starts Noise XX on `sock` (whose own 'data' listeners the caller removed), `rest` first.
 * `inspect` sees every raw chunk before the session does (the server meters message
 * sizes there); false drops the chunk, and the caller closes the connection.
 */
export function secureSocket(initiator: boolean, sock: net.Socket, rest: Buffer, keyPair: KeyPair, inspect: (chunk: Buffer) => boolean = () => true): SecretStream {
  const session = new SecretStream(initiator, new PrefixedSocket(sock, rest, inspect), { keyPair })
  session.on('error', () => undefined)
  return session
}
