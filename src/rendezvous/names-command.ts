/**
 * `natd-rendezvous names ls|rm`: the operator's view of the name bindings in a state
 * directory. Both read names.jsonl without rewriting it (a running server holds it open
 * for appends); `rm` appends one release line, which the server applies within
 * NAMES_POLL_MS. With `--redis URL` they act on the deployment's shared registry instead
 * (redis-names.ts); the output is the same.
 */
import fs from 'node:fs'
import path from 'node:path'
import { appendJsonLine } from '../common/state-files.js'
import { peerId } from '../protocol/identity.js'
import { systemClock, type Clock } from '../protocol/log.js'
import { NAMES_FILE, NAMES_POLL_MS, readNamesFile, type NameLine } from './file-name-store.js'
import type { NameBinding } from './name-store.js'
import { RedisNames } from './redis-names.js'

/** Exit status of `names rm` for a name that is not bound (a usage error is 2). */
const EXIT_NOT_FOUND = 1

export function namesLs(stateDir: string, json: boolean): void {
  const file = path.join(stateDir, NAMES_FILE)
  const { store, skipped } = readNamesFile(file)
  if (skipped.length) process.stderr.write(`natd-rendezvous: skipped ${skipped.length} malformed line(s) of ${file} (line ${skipped.slice(0, 5).join(', ')})\n`)
  printNames(store.list(), json, file)
}

export async function namesLsRedis(url: string, json: boolean): Promise<void> {
  const { bindings, skipped } = await withRedis(url, (r) => r.list())
  if (skipped) process.stderr.write(`natd-rendezvous: skipped ${skipped} malformed binding(s) in Redis\n`)
  printNames(bindings, json, 'Redis')
}

function printNames(bindings: NameBinding[], json: boolean, where: string): void {
  const rows = bindings
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((b) => ({ name: b.name, id: peerId(b.publicKey), boundAt: new Date(b.boundAt).toISOString(), lastSeenAt: new Date(b.lastSeenAt).toISOString() }))
  if (json) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n')
    return
  }
  if (!rows.length) {
    process.stdout.write(`no names bound (${where})\n`)
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

export async function namesRmRedis(url: string, name: string): Promise<void> {
  const r = await withRedis(url, (names) => names.remove(name))
  if (r.kind === 'unbound') fail(`the name ${name} is not bound (natd-rendezvous names ls --redis … lists the names)`)
  if (r.kind === 'online') fail(`the name ${name} is held by an agent online on instance ${r.instance}: it would keep answering to it; try again once it is offline`)
  process.stdout.write(`released ${name} (was bound to ${peerId(r.binding.publicKey)}); every instance sees it at once\n`)
}

/** Runs `f` on a connection to Redis; Redis unreachable is exit status 1 with the reason. */
async function withRedis<T>(url: string, f: (names: RedisNames) => Promise<T>): Promise<T> {
  const names = new RedisNames(url)
  try {
    await names.connect()
    return await f(names)
  } catch (err) {
    fail(`Redis at ${redactedUrl(url)}: ${(err as Error).message}`)
  } finally {
    names.close()
  }
}

/** The URL without its password, for messages. */
function redactedUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '(unparsable URL)'
  }
}

/** `2024-05-01T12:34:56.789Z` → `2024-05-01 12:34` (UTC). */
function day(iso: string): string {
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}`
}

function fail(message: string): never {
  process.stderr.write(`natd-rendezvous: ${message}\n`)
  process.exit(EXIT_NOT_FOUND)
}
