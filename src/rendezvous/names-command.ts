/**
 * `natd-rendezvous names ls|rm`: the operator's view of the name bindings in a state
 * directory. Both read names.jsonl without rewriting it (a running server holds it open
 * for appends); `rm` appends one release line, which the server applies within
 * NAMES_POLL_MS.
 */
import fs from 'node:fs'
import path from 'node:path'
import { appendJsonLine } from '../common/state-files.js'
import { peerId } from '../protocol/identity.js'
import { systemClock, type Clock } from '../protocol/log.js'
import { NAMES_FILE, NAMES_POLL_MS, readNamesFile, type NameLine } from './file-name-store.js'

/** Exit status of `names rm` for a name that is not bound (a usage error is 2). */
const EXIT_NOT_FOUND = 1

export function namesLs(stateDir: string, json: boolean): void {
  const file = path.join(stateDir, NAMES_FILE)
  const { store, skipped } = readNamesFile(file)
  if (skipped.length) process.stderr.write(`natd-rendezvous: skipped ${skipped.length} malformed line(s) of ${file} (line ${skipped.slice(0, 5).join(', ')})\n`)
  const rows = store
    .list()
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((b) => ({ name: b.name, id: peerId(b.publicKey), boundAt: new Date(b.boundAt).toISOString(), lastSeenAt: new Date(b.lastSeenAt).toISOString() }))
  if (json) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n')
    return
  }
  if (!rows.length) {
    process.stdout.write(`no names bound (${file})\n`)
    return
  }
  const table = [['NAME', 'PEER ID', 'BOUND', 'LAST SEEN'], ...rows.map((r) => [r.name, r.id, day(r.boundAt), day(r.lastSeenAt)])]
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)))
  for (const row of table) process.stdout.write(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd() + '\n')
}

export function namesRm(stateDir: string, name: string, clock: Clock = systemClock): void {
  const file = path.join(stateDir, NAMES_FILE)
  if (!fs.existsSync(file)) fail(`no names file ${file} (is --state-dir the server's?)`)
  const binding = readNamesFile(file).store.get(name)
  if (!binding) fail(`the name ${name} is not bound (natd-rendezvous names ls lists the names)`)
  const line: NameLine = { op: 'release', name, t: clock.now() }
  appendJsonLine(file, line)
  process.stdout.write(`released ${name} (was bound to ${peerId(binding.publicKey)}); a running server frees it within ${NAMES_POLL_MS / 1000} s\n`)
}

/** `2024-05-01T12:34:56.789Z` → `2024-05-01 12:34` (UTC). */
function day(iso: string): string {
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}`
}

function fail(message: string): never {
  process.stderr.write(`natd-rendezvous: ${message}\n`)
  process.exit(EXIT_NOT_FOUND)
}
