// Minimal declarations for the parts of @hyperswarm/secret-stream natd uses.
declare module '@hyperswarm/secret-stream' {
  import { Duplex } from 'node:stream'
  export interface SecretStreamOptions {
    keyPair?: { publicKey: Buffer; secretKey: Buffer }
    remotePublicKey?: Buffer
    pattern?: string
    handshake?: unknown
    keepAlive?: number
    timeout?: number
  }
  export default class SecretStream extends Duplex {
    constructor(isInitiator: boolean, rawStream?: Duplex | null, opts?: SecretStreamOptions)
    isInitiator: boolean
    publicKey: Buffer | null
    remotePublicKey: Buffer | null
    handshakeHash: Buffer | null
    rawStream: Duplex
    opened: Promise<boolean>
    setKeepAlive(ms: number): void
    /** Resolves once written data reached the raw stream (false when the stream failed). */
    flush(): Promise<boolean>
    setTimeout(ms: number): void
    static keyPair(seed?: Buffer): { publicKey: Buffer; secretKey: Buffer }
  }
}
