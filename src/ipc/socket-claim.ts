/** Taking the API socket's path: a live daemon's socket is never stolen, a stale one is replaced. */
import fs from 'node:fs'
import net from 'node:net'
import { NatdError } from '../protocol/errors.js'

/**
 * Makes the socket path ours to listen on: refuses when a live daemon answers there,
 * removes a stale socket file, and refuses to remove anything that is not a socket.
 */
export async function claimSocketPath(socketPath: string): Promise<void> {
  let stat: fs.Stats
  try {
    stat = fs.lstatSync(socketPath)
  } catch {
    return // nothing there
  }
  if (!stat.isSocket()) throw new NatdError('INVALID_ARGUMENT', `${socketPath} exists and is not a socket; refusing to remove it (choose another --socket)`)
  if (await socketAnswers(socketPath)) throw new NatdError('ALREADY_RUNNING', `another natd is running on ${socketPath}`)
  fs.unlinkSync(socketPath)
}

/** Whether a daemon answers on this socket path (a stale socket file does not). */
export function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath)
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
}
