// Minimal declarations for node-ipc 14's class API as natd uses it.
declare module 'node-ipc' {
  export class IPCModule {
    config: {
      id: string
      silent: boolean
      unlink: boolean
      socketRoot: string
      secureSocketRoot: boolean
      parser: 'raw' | 'fast' | 'guarded' | 'assured'
      maxMessageSize: number
      maxPendingBytes: number
      maxConnections: number
      stopRetrying: boolean
      maxRetries: number
      retry: number
    }
    server: unknown
    of: Record<string, unknown>
    serve(path: string, callback: () => void): void
    connectTo(id: string, path: string, callback: () => void): void
    disconnect(id: string): void
  }
  const singleton: IPCModule
  export default singleton
}
