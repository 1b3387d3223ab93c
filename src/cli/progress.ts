/**
 * natctl cp's one-line progress bar (bytes, rate, ETA), drawn on stderr only when stderr
 * is a terminal; `renderProgress` is pure, so tests check the line without a TTY.
 */
import { bytes } from './format.js'

/** Redraw at most this often: a terminal cannot show faster, and each redraw costs a write. */
export const REDRAW_INTERVAL_MS = 100
const BAR_CELLS = 24

export interface ProgressLine {
  label: string
  /** Bytes of the file the receiver has (including what it had before a resume). */
  done: number
  total: number
  /** Bytes per second of this run; null before there is a rate. */
  rate: number | null
  /** Terminal width; the label is cut to fit. */
  columns: number
}

export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--'
  const s = Math.ceil(seconds)
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const pad = (n: number): string => String(n).padStart(2, '0')
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`
}

export function renderProgress(p: ProgressLine): string {
  const frac = p.total === 0 ? 1 : Math.min(1, p.done / p.total)
  const filled = Math.round(frac * BAR_CELLS)
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(BAR_CELLS - filled)}]`
  const rate = p.rate === null ? '-' : `${bytes(Math.round(p.rate))}/s`
  const eta = p.rate ? formatEta((p.total - p.done) / p.rate) : '--:--'
  const tail = ` ${bar} ${String(Math.floor(frac * 100)).padStart(3)}%  ${bytes(p.done)} / ${bytes(p.total)}  ${rate}  ETA ${eta}`
  const room = Math.max(8, p.columns - tail.length - 1)
  const label = p.label.length > room ? `…${p.label.slice(-(room - 1))}` : p.label
  return label + tail
}

/** Draws and redraws the line on a TTY stream; does nothing on anything else. */
export class ProgressBar {
  private lastDraw = 0
  private started = 0
  private startBytes = 0
  private drawn = false

  constructor(
    private readonly out: { isTTY?: boolean; columns?: number; write(s: string): unknown },
    private readonly label: string,
    /** Wall time by default: natctl draws for a person, once; tests pass their own. */
    private readonly now: () => number = () => Date.now()
  ) {}

  get enabled(): boolean {
    return this.out.isTTY === true
  }

  /** `offset` bytes were there before this run; `sent` went since. */
  update(offset: number, sent: number, total: number, force = false): void {
    if (!this.enabled) return
    const t = this.now()
    if (this.started === 0) {
      this.started = t
      this.startBytes = sent
    }
    if (!force && t - this.lastDraw < REDRAW_INTERVAL_MS) return
    this.lastDraw = t
    const secs = (t - this.started) / 1000
    const rate = secs > 0.2 ? (sent - this.startBytes) / secs : null
    this.out.write(`\r${renderProgress({ label: this.label, done: offset + sent, total, rate, columns: this.out.columns ?? 80 })}\x1b[K`)
    this.drawn = true
  }

  /** Clears the line (the summary is printed after it). */
  clear(): void {
    if (this.enabled && this.drawn) this.out.write('\r\x1b[K')
    this.drawn = false
  }
}
