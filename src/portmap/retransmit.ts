/**
 * Asking a gateway over UDP: send, wait, send again with the wait doubled (RFC 6886 §3.1's
 * schedule, which PCP and SSDP searches follow too), until an answer, the last try, or
 * the signal. Shared by PortMapper (PCP, NAT-PMP) and UpnpClient (SSDP search).
 */

export interface RetransmitOptions<T> {
  tries: number
  firstWaitMs: number
  signal?: AbortSignal | undefined
  /** Sends the request (again). */
  send: () => void
  /** Starts taking answers: `answer` settles this try; returns what stops taking them. */
  listen: (answer: (a: T) => void) => () => void
}

/** The first answer, or null after the tries or once aborted. Never rejects. */
export async function retransmit<T>(o: RetransmitOptions<T>): Promise<T | null> {
  let wait = o.firstWaitMs
  for (let i = 0; i < o.tries && !o.signal?.aborted; i++, wait *= 2) {
    let unlisten: (() => void) | undefined
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    const answer = await new Promise<T | null>((resolve) => {
      unlisten = o.listen(resolve)
      timer = setTimeout(() => resolve(null), wait)
      onAbort = () => resolve(null)
      o.signal?.addEventListener('abort', onAbort, { once: true })
      o.send()
    }).finally(() => {
      unlisten?.()
      clearTimeout(timer)
      if (onAbort) o.signal?.removeEventListener('abort', onAbort)
    })
    if (answer) return answer
  }
  return null
}
