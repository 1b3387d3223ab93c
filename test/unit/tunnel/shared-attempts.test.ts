// SharedAttempts (src/tunnel/shared-attempts.ts) alone: callers asking at once share one
// attempt; each caller's signal cancels its own wait; the attempt's signal aborts only
// when the last waiting caller cancelled.
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { SharedAttempts } from '../../../src/tunnel/shared-attempts.js'

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)))
  return { promise, resolve, reject }
}

const cancelled = (): NatdError => new NatdError('ABORTED', 'cancelled')

describe('SharedAttempts', () => {
  it('two callers with one key get one attempt and its result; another key starts its own; a finished attempt is forgotten', async () => {
    const a = new SharedAttempts<string>()
    const started: string[] = []
    const d = deferred<string>()
    const start = (key: string) => (): Promise<string> => (started.push(key), key === 'bob' ? d.promise : Promise.resolve(key))
    const one = a.join('bob', start('bob'), undefined, cancelled)
    const two = a.join('bob', start('bob'), undefined, cancelled)
    const carol = a.join('carol', start('carol'), undefined, cancelled)
    expect(started).toEqual(['bob', 'carol'])
    d.resolve('tunnel')
    expect(await Promise.all([one, two, carol])).toEqual(['tunnel', 'tunnel', 'carol'])
    expect(a.size).toBe(0)
    await a.join('bob', start('bob'), undefined, cancelled)
    expect(started).toEqual(['bob', 'carol', 'bob'])
  })

  it('a failed attempt rejects every waiter with its error', async () => {
    const a = new SharedAttempts<string>()
    const d = deferred<string>()
    const waits = [a.join('bob', () => d.promise, undefined, cancelled), a.join('bob', () => d.promise, undefined, cancelled)]
    d.reject(new NatdError('PUNCH_TIMEOUT', 'no path'))
    for (const w of waits) await expect(w).rejects.toMatchObject({ code: 'PUNCH_TIMEOUT' })
  })

  it('one of two callers cancels: it gets ABORTED, the attempt goes on for the other; when the last cancels, the attempt is aborted and the next caller starts anew', async () => {
    const a = new SharedAttempts<string>()
    const signals: AbortSignal[] = []
    const d = deferred<string>()
    const start = (signal: AbortSignal): Promise<string> => (signals.push(signal), d.promise)
    const first = new AbortController()
    const second = new AbortController()
    const one = a.join('bob', start, first.signal, cancelled)
    const two = a.join('bob', start, second.signal, cancelled)
    first.abort()
    await expect(one).rejects.toMatchObject({ code: 'ABORTED' })
    expect(signals[0]!.aborted).toBe(false)
    second.abort()
    await expect(two).rejects.toMatchObject({ code: 'ABORTED' })
    expect(signals[0]!.aborted).toBe(true)
    expect(a.size).toBe(0)
    const three = a.join('bob', start, undefined, cancelled)
    expect(signals).toHaveLength(2)
    d.resolve('late')
    expect(await three).toBe('late')
  })
})
