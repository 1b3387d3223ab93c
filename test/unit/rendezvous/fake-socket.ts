/**
 * A net.Socket stand-in for the server's parts tested alone (relay, TCP gate, agent
 * connections): records what is written, ended and destroyed, the timeout, the keepalive
 * and whether reading is paused; decodes what it was sent.
 */
import { EventEmitter } from 'node:events'
import type net from 'node:net'
import { decode, FrameSplitter } from '../../../src/protocol/rendezvous.js'

export class FakeSocket extends EventEmitter {
  written: Buffer[] = []
  ended = false
  destroyed = false
  timeoutMs: number | null = null
  onTimeout: (() => void) | null = null
  keepAliveMs: number | null = null
  paused = false
  readonly remotePort = 40_000
  readonly writableLength = 0
  constructor(readonly remoteAddress = '192.0.2.1') {
    super()
  }
  write(b: Buffer): boolean {
    this.written.push(Buffer.from(b))
    return true
  }
  end(b?: Buffer): void {
    if (b) this.written.push(Buffer.from(b))
    this.ended = true
  }
  destroy(): void {
    this.destroyed = true
    this.emit('close')
  }
  setTimeout(ms: number, cb?: () => void): void {
    this.timeoutMs = ms
    if (cb) this.onTimeout = cb
  }
  setKeepAlive(_on: boolean, ms: number): void {
    this.keepAliveMs = ms
  }
  setNoDelay(): void {}
  pause(): void {
    this.paused = true
  }
  resume(): void {
    this.paused = false
  }
  cork(): void {}
  uncork(): void {}
  /** The messages written to this socket, decoded. */
  messages(): ReturnType<typeof decode>[] {
    const s = new FrameSplitter()
    return s.push(Buffer.concat(this.written)).map((f) => decode(f))
  }
  /** As the code under test takes it. */
  get asNet(): net.Socket {
    return this as unknown as net.Socket
  }
}
