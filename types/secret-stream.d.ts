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
  /**
   * The internals tunnel/session-reader.ts reads to parse and open the peer's messages
   * itself once the session is set up (checked at run time; otherwise 'data' events).
   */
  export interface SecretStreamReadInternals {
    /** sodium-secretstream's Pull once the handshake is done: opens `cipher` into `message` (cipher − 17 bytes; in place at offset 1 is how secret-stream calls it). */
    _decrypt: { next(cipher: Uint8Array, message: Uint8Array): Uint8Array } | null
    /** True until the peer's stream header (id + secretstream header) arrived. */
    _setup: boolean
    /** The raw stream's 'data' goes to `_onrawdata.bind(this)`; its message parser state: */
    _state: 0 | 1
    /** State 0: the length read so far (u24 LE); state 1: the message's length. */
    _len: number
    /** State 0: 256^(length bytes read); state 1: message bytes read. */
    _tmp: number
    /** State 1: the message being gathered across reads (null: none yet, or whole in one read). */
    _message: Uint8Array | null
    /** A raw stream with setContentSize (utp): secret-stream tells it how much is coming. */
    _utp: unknown
    _timeoutTimer: { refresh(): void } | null
    /** Empty messages are keepalives, dropped. */
    _filterZeroByteMessages: boolean
    /** streamx's read queue: decrypted messages not yet emitted as 'data'. */
    _readableState: { queue: { length: number } }
    /** The raw stream, as an event emitter whose 'data' listeners can be swapped. */
    _rawStream: {
      listeners(event: 'data'): Array<(data: Buffer) => void>
      removeListener(event: 'data', fn: (data: Buffer) => void): unknown
      on(event: 'data', fn: (data: Buffer) => void): unknown
      resume?(): unknown
    } | null
    rawBytesRead: number
    destroying: boolean
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
