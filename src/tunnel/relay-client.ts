/**
 * The agent's end of a relayed tunnel: a new TCP connection to the rendezvous server,
 * bound to the introduction (RELAY), then a byte stream whose chunks travel as
 * RELAY_DATA frames. The Noise session runs on top, end to end with the peer: the
 * server forwards ciphertext. A RELAY_END from the server (a limit was reached) ends
 * the stream with that error (RELAY_LIMIT), so the tunnel says why it closed.
 */
import net from 'node:net'
import { Duplex } from 'node:stream'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { isErrorCode, NatdError } from '../protocol/errors.js'
import { sign, type KeyPair } from '../protocol/identity.js'
import { decode, encodeRelay, frame, FrameSplitter, MSG, RELAY_DATA_HEADER, relaySigned } from '../protocol/rendezvous.js'
import type { TimerClock } from '../protocol/clock.js'

/** Largest RELAY_DATA payload we send: keeps frames well inside the server's limit. */
export const RELAY_CHUNK_BYTES = 64 * 1024

export class RelayStream extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    private readonly splitter: FrameSplitter,
    early: Buffer[]
  ) {
    super({ highWaterMark: 1024 * 1024 })
    socket.on('data', (chunk: Buffer) => this.onChunk(chunk))
    socket.on('end', () => this.push(null))
    socket.on('error', (err) => this.destroy(err))
    socket.on('close', () => this.destroy())
    for (const f of early) this.onFrame(f)
  }

  private onChunk(chunk: Buffer): void {
    let frames: Buffer[]
    try {
      frames = this.splitter.push(chunk)
    } catch (err) {
      this.destroy(err as Error)
      return
    }
    for (const f of frames) this.onFrame(f)
  }

  private onFrame(f: Buffer): void {
    if (f.length >= 4 && f[3] === MSG.RELAY_DATA) {
      if (!this.push(f.subarray(4))) this.socket.pause()
      return
    }
    try {
      const m = decode(f)
      if (m.type === 'relay-end' || m.type === 'error') {
        const code = isErrorCode(m.code) ? m.code : 'TUNNEL_CLOSED'
        this.destroy(new NatdError(code, `relay: ${m.message}`))
      }
    } catch (err) {
      this.destroy(err as Error)
    }
  }

  override _read(): void {
    this.socket.resume()
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let ok = true
    this.socket.cork()
    for (let o = 0; o < chunk.length; o += RELAY_CHUNK_BYTES) {
      const part = chunk.subarray(o, o + RELAY_CHUNK_BYTES)
      const len = Buffer.allocUnsafe(4)
      len.writeUInt32BE(RELAY_DATA_HEADER.length + part.length, 0)
      this.socket.write(len)
      this.socket.write(RELAY_DATA_HEADER)
      ok = this.socket.write(part)
    }
    this.socket.uncork()
    if (ok) cb()
    else this.socket.once('drain', () => cb())
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.socket.end()
    cb()
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy()
    cb(err)
  }
}

/**
 * Connects to the server and binds the connection to the introduction, signed with our
 * key over the connection's challenge (only the introduced agent can take its side);
 * resolves once the peer is bound too.
 */
export function connectRelay(server: Endpoint, introId: Uint8Array, initiator: boolean, keyPair: KeyPair, timeoutMs: number, signal: AbortSignal, clock: TimerClock): Promise<RelayStream> {
  return new Promise<RelayStream>((resolve, reject) => {
    const socket = net.connect({ host: server.host, port: server.port })
    socket.setNoDelay(true)
    const splitter = new FrameSplitter()
    let done = false
    const fail = (err: NatdError): void => {
      if (done) return
      done = true
      clock.clear(timer)
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      reject(err)
    }
    const onAbort = (): void => fail(new NatdError('ABORTED', 'relay aborted'))
    const timer = clock.setTimeout(() => fail(new NatdError('PUNCH_TIMEOUT', `the relay at ${formatEndpoint(server)} did not pair us with the peer in ${timeoutMs} ms`)), timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    if (signal.aborted) return onAbort()
    socket.on('error', (err) => fail(new NatdError('PUNCH_FAILED', `relay connection to ${formatEndpoint(server)}: ${err.message}`, { cause: err })))
    socket.on('close', () => fail(new NatdError('PUNCH_FAILED', 'the relay closed the connection')))
    const onData = (chunk: Buffer): void => {
      let frames: Buffer[]
      try {
        frames = splitter.push(chunk)
      } catch (err) {
        return fail(new NatdError('PUNCH_FAILED', `relay: ${(err as Error).message}`, { cause: err }))
      }
      for (let i = 0; i < frames.length; i++) {
        let m
        try {
          m = decode(frames[i]!)
        } catch (err) {
          return fail(new NatdError('PUNCH_FAILED', `relay: ${(err as Error).message}`, { cause: err }))
        }
        if (m.type === 'challenge') socket.write(frame(encodeRelay(introId, initiator, sign(relaySigned(m.nonce, introId, initiator), keyPair.secretKey))))
        else if (m.type === 'error') return fail(new NatdError(isErrorCode(m.code) ? m.code : 'PUNCH_FAILED', `relay: ${m.message}`))
        else if (m.type === 'relay-ok') {
          done = true
          clock.clear(timer)
          signal.removeEventListener('abort', onAbort)
          socket.off('data', onData)
          socket.removeAllListeners('error')
          socket.removeAllListeners('close')
          resolve(new RelayStream(socket, splitter, frames.slice(i + 1)))
          return
        }
      }
    }
    socket.on('data', onData)
  })
}
