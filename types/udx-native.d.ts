// Minimal declarations for the parts of udx-native natd uses.
declare module 'udx-native' {
  import { EventEmitter } from 'node:events'
  import { Duplex } from 'node:stream'

  export interface UDXSocket extends EventEmitter {
    bind(port?: number, host?: string): void
    address(): { host: string; family: number; port: number }
    send(buf: Uint8Array, port: number, host: string, ttl?: number): Promise<boolean>
    trySend(buf: Uint8Array, port: number, host: string, ttl?: number): void
    close(): Promise<void>
    closing: boolean
    idle: boolean
    setRecvBufferSize(n: number): number
    setSendBufferSize(n: number): number
    on(event: 'message', fn: (buf: Buffer, rinfo: { host: string; port: number; family: number }) => void): this
    on(event: 'close' | 'idle' | 'busy' | 'listening', fn: () => void): this
    on(event: 'error', fn: (err: Error) => void): this
  }

  export interface UDXStream extends Duplex {
    id: number
    remoteId: number
    remoteHost: string | null
    remotePort: number
    rtt: number
    /** The path MTU it uses (DPLPMTUD from 1200 up to 1500, libudx's UDX_MTU_MAX). */
    mtu: number
    packetsReceived: number
    packetsTransmitted: number
    retransmits: number
    bytesRead: number
    bytesWritten: number
    connected: boolean
    connect(socket: UDXSocket, remoteId: number, port: number, host: string, opts?: { ack?: number }): void
    changeRemote(socket: UDXSocket, remoteId: number, port: number, host: string): Promise<void>
    setKeepalive(ms: number): void
    setInteractive(on: boolean): void
    relayTo(other: UDXStream): void
  }

  export default class UDX {
    createSocket(opts?: { ipv6Only?: boolean }): UDXSocket
    createStream(id: number, opts?: { firewall?: (socket: UDXSocket, port: number, host: string) => boolean; framed?: boolean; seq?: number }): UDXStream
    networkInterfaces(): Array<{ name: string; host: string; family: number; internal: boolean }>
    static isIPv4(host: string): boolean
  }
}
