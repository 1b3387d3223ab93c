/**
 * The abuse suite's figures (issue "Abuse resistance"): every attack row records what it
 * measured now beside what the same attack did before the limits existed (the issue's
 * table), and the bound it asserts. Rows append JSON lines to NATD_ABUSE_OUT (npm test
 * sets it to bench/results/abuse-latest.jsonl and prints the table at the end).
 */
import fs from 'node:fs'

export interface AbuseFigure {
  /** The attack, as the table names it. */
  row: string
  /** What is measured (SYNs per introduction, server RSS, …). */
  metric: string
  /** The figure before this work, from the table. */
  before: string
  /** The figure now. */
  now: number | string
  unit: string
  /** The bound the test asserts. */
  bound: string
}

export function recordAbuse(f: AbuseFigure): void {
  const out = process.env.NATD_ABUSE_OUT
  if (!out) return
  fs.appendFileSync(out, JSON.stringify({ ...f, at: new Date().toISOString() }) + '\n')
}
