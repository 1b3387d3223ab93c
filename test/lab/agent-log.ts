/**
 * A lab process's output (an agent's or the server's logs), appended to its file without
 * blocking the test process. natd-lab.ts wrote each chunk with fs.writeSync in the test
 * process: on a disk whose writes stalled (the CI machine's fsyncs waited 29 s, issue 17),
 * that held the test process and every natctl call it was waiting on. Here each chunk is
 * queued and written by libuv's pool, one write at a time, in order.
 *
 * text() is what the process printed so far, exactly, as the old file read gave it: the
 * part of the file our finished writes put there, then what is still queued. One AgentLog
 * per file (NatdLab.logFor), so a restarted agent's lines follow the old one's.
 */
import fs from 'node:fs'

export class AgentLog {
  private readonly fd: number
  /** Bytes the file held before we opened it (our writes append after them). */
  private readonly base: number
  /** Bytes our finished writes put in the file. */
  private written = 0
  private writing: Buffer | null = null
  private queue: Buffer[] = []
  private error: Error | null = null
  /** Closed: later chunks (a killed process's last output) stay in text(), never written to a reused fd. */
  private closed = false
  private idle: Array<() => void> = []

  readonly file: string

  constructor(file: string) {
    this.file = file
    this.fd = fs.openSync(file, 'a')
    this.base = fs.fstatSync(this.fd).size
  }

  write(chunk: Buffer): void {
    this.queue.push(chunk)
    this.next()
  }

  /** What was printed so far: the file up to our finished writes, then the writes not yet finished. */
  text(): string {
    let ours: Buffer
    try {
      ours = fs.readFileSync(this.file).subarray(this.base, this.base + this.written)
    } catch {
      ours = Buffer.alloc(0) // removed under us: what is still queued is all there is
    }
    return Buffer.concat([ours, ...(this.writing ? [this.writing] : []), ...this.queue]).toString('utf8')
  }

  /** Resolves when every chunk written so far is in the file (or a write failed: then text() still has it). */
  flushed(): Promise<void> {
    if (!this.writing) return Promise.resolve()
    return new Promise((resolve) => this.idle.push(resolve))
  }

  /** Waits for the queued writes, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.flushed()
    this.closed = true
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()))
  }

  private next(): void {
    if (this.writing || this.error || this.closed) return
    if (this.queue.length === 0) {
      for (const resolve of this.idle.splice(0)) resolve()
      return
    }
    const buf = Buffer.concat(this.queue)
    this.queue = []
    this.writing = buf
    fs.write(this.fd, buf, 0, buf.length, null, (err, n) => {
      this.writing = null
      if (err) {
        // Keep the text (text() shows it) and stop writing: a test must not fail on its own log.
        this.error = err
        this.queue.unshift(buf)
        for (const resolve of this.idle.splice(0)) resolve()
        return
      }
      this.written += n
      if (n < buf.length) this.queue.unshift(buf.subarray(n))
      this.next()
    })
  }
}
