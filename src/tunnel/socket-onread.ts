/**
 * net.Socket's `onread` mode switched on after the socket exists (issue 18). Node reads a
 * socket into a fresh 64 KiB buffer per read unless the socket was created with `onread`
 * (then the kernel reads into a buffer the caller chooses and a callback gets the bytes);
 * sockets from a server's 'connection' cannot be created that way. This sets the same
 * state Node's constructor sets (`kBuffer`, `kBufferCb`, `kBufferGen` and the handle's
 * `useUserBuffer()`), looked up at run time: absent (another Node version), null and the
 * caller keeps 'data' reads. Used by session-reader.ts (the tunnel's socket, into slabs)
 * and by the forwards' local sockets (daemon/pipe.ts, into one shared buffer).
 */
import type net from 'node:net'

/** Node's net.Socket onread state. */
interface UserBufferSocket {
  _handle: { useUserBuffer?: (buf: Uint8Array) => void } | null
  [key: symbol]: unknown
}

/** The symbols under which net.Socket keeps its `onread` buffer, callback and generator (Node 24), or null. */
function onreadSymbols(sock: net.Socket): { buffer: symbol; callback: symbol; generator: symbol } | null {
  const own = Object.getOwnPropertySymbols(sock)
  const find = (name: string): symbol | undefined => own.find((sym) => sym.description === name)
  const buffer = find('kBuffer')
  const callback = find('kBufferCb')
  const generator = find('kBufferGen')
  const handle = (sock as unknown as UserBufferSocket)._handle
  if (!buffer || !callback || !generator || typeof handle?.useUserBuffer !== 'function') return null
  return { buffer, callback, generator }
}

/** Whether onread() can be switched on for `sock` (an open socket on this Node version). */
export function canReadInto(sock: net.Socket): boolean {
  return !sock.destroyed && onreadSymbols(sock) !== null
}

/**
 * From now on the kernel reads `sock` into `first`, then into what `next()` returns (null:
 * the same buffer again), and `onRead(n, buf)` gets the `n` bytes at buf[0…n]; it returns
 * false to stop reading (start again with `sock._read(0)`). EOF and errors come as
 * before ('end', 'error'). False (nothing changed) when Node's internals are not there.
 */
export function readInto(sock: net.Socket, first: Buffer, onRead: (n: number, buf: Buffer) => boolean | void, next: (() => Buffer) | null): boolean {
  const syms = onreadSymbols(sock)
  if (!syms || sock.destroyed) return false
  const st = sock as unknown as UserBufferSocket
  st[syms.buffer] = first
  st[syms.callback] = onRead
  st[syms.generator] = next
  st._handle!.useUserBuffer!(first)
  return true
}
