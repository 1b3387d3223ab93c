// Declarations for the parts of @hyperswarm/secret-stream (6.9.2, pinned) natd uses. It is
// a streamx Duplex, not a Node one: no writableNeedDrain, write() queues whole messages,
// 'data' gives one decrypted message each. Its raw stream is a net.Socket, a UDX stream
// (streamx) or the relay's Duplex: anything with this much of a stream.
declare module '@hyperswarm/secret-stream' {
  import { Duplex } from 'node:stream'
  export interface RawStream {
    write(buf: Uint8Array): boolean
    once(event: 'drain', fn: () => void): unknown
    on(event: string, fn: (...args: never[]) => void): unknown
    destroy(err?: Error): unknown
  }
  export interface SecretStreamOptions {
    keyPair?: { publicKey: Buffer; secretKey: Buffer }
    remotePublicKey?: Buffer
    pattern?: string
    handshake?: unknown
    keepAlive?: number
    timeout?: number
  }
  /**
   * The internals tunnel/session-writer.ts reads to seal the mux's frames itself (checked
   * at run time; a session without them is written through write()).
   */
  export interface SecretStreamInternals {
    /** sodium-secretstream's Push once the handshake is done: seals `message` into `cipher` (message + 17 bytes). */
    _encrypt: { next(message: Uint8Array, cipher: Uint8Array): Uint8Array } | null
    /** The raw stream it writes its framed messages to. */
    _rawStream: RawStream | null
    /** streamx's write queue: bytes written and not yet passed to the raw stream. */
    _writableState: { buffered: number }
    rawBytesWritten: number
  }
  export default class SecretStream extends Duplex {
    constructor(isInitiator: boolean, rawStream?: RawStream | null, opts?: SecretStreamOptions)
    isInitiator: boolean
    publicKey: Buffer | null
    remotePublicKey: Buffer | null
    handshakeHash: Buffer | null
    rawStream: RawStream
    opened: Promise<boolean>
    /** A buffer whose message write() encrypts in place (no copy); the next write() must be it. */
    alloc(len: number): Buffer
    setKeepAlive(ms: number): void
    /** Resolves once written data reached the raw stream (false when the stream failed). */
    flush(): Promise<boolean>
    setTimeout(ms: number): void
    static keyPair(seed?: Buffer): { publicKey: Buffer; secretKey: Buffer }
  }
}
