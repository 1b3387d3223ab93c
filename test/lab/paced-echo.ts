/**
 * A paced connection through a forward (test/lab/fixtures/paced-echo-client.ts): sends
 * `bytes` at `rate` bytes/s to 127.0.0.1:port on a lab host, checks the echo (sha256) and
 * reports the longest gap between two arrivals and when it ended, so a roaming test or
 * bench (bench/roaming.ts) can tell how long a fault stalled it.
 */
import path from 'node:path'
import { ROOT, type NatdLab } from './natd-lab.ts'

export interface Paced {
  ok: boolean
  error: string | null
  received: number
  maxGapMs: number
  /** Epoch ms. */
  maxGapEndedAt: number
  /** Every gap of 250 ms or more: when it ended (epoch ms) and how long it was. */
  gaps?: Array<{ endedAt: number; ms: number }>
}

export function pacedEcho(n: NatdLab, host: string, port: number, bytes: number, rate: number): Promise<Paced> {
  const child = n.lab.spawn(n.lab.hosts[host]!.ns, [process.execPath, path.join(ROOT, 'test/lab/fixtures/paced-echo-client.ts'), String(port), String(bytes), String(rate)])
  let out = ''
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()))
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => {
      try {
        resolve(JSON.parse(out) as Paced)
      } catch {
        reject(new Error(`paced echo client exited ${code}: ${out}`))
      }
    })
  })
}
