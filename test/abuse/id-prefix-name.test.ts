// Abuse rows for peer names that are also the start of another peer's ID (review 9 #1).
// Base32 a-z2-7 is always a valid name, so a registered stranger may take the name
// `xxxxxxxx`: the 8 characters natctl shows of bob's ID (`bob (xxxxxxxx…)`), which is what
// a user copies. It gets into our known peers by one tunnel to us (pinned on first use
// under that name), or just by being listed. Before, the text resolved as a name first:
// `expose add --allow`, `files policy --allow`, the config file's allow list and
// open/cp/send/forward add all picked the stranger. Now the text is refused as ambiguous
// (INVALID_ARGUMENT naming both) and the full ID settles it. Real state in a temp dir.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { admits, migrateAllowEntry, unresolvedAdvice } from '../../src/daemon/allow-list.js'
import { StateStore } from '../../src/daemon/config.js'
import { Exposes } from '../../src/daemon/exposes.js'
import { KnownPeers } from '../../src/daemon/known-peers.js'
import { NatdError } from '../../src/protocol/errors.js'
import { generateKeyPair, peerId } from '../../src/protocol/identity.js'
import { silentLogger } from '../../src/protocol/log.js'
import type { PeerRef } from '../../src/protocol/peer-ref.js'
import { recordAbuse } from './record.js'

const BOB = peerId(generateKeyPair().publicKey)
const MALLORY = peerId(generateKeyPair().publicKey)
/** What natctl shows of bob's ID, and what a user types for it; the stranger's name. */
const BOB8 = BOB.slice(0, 8)
const STRANGER: PeerRef = { name: BOB8, id: MALLORY }

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

function agent(listed: PeerRef[]): { store: StateStore; known: KnownPeers; exposes: Exposes } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-prefix-'))
  dirs.push(dir)
  const store = new StateStore(dir)
  const known = new KnownPeers({ store, log: silentLogger, serverPeers: async () => listed })
  return { store, known, exposes: new Exposes(store, silentLogger, known) }
}

/** What the user gets for `typed`: the peer chosen, or the refusal's code and message. */
async function outcome(p: Promise<{ id: string | null }>): Promise<string> {
  return p.then(
    (t) => (t.id === MALLORY ? 'the STRANGER' : t.id === BOB ? 'bob' : `id ${t.id}`),
    (err: unknown) => (err instanceof NatdError ? `${err.code}: ${err.message}` : String(err))
  )
}

const BOTH_NAMED = `${BOB8} matches 2 peers: the name of ${BOB8} (${MALLORY.slice(0, 8)}…), and the start of the ID of bob (${BOB8}…)`

it.each([
  ['bob pinned, the stranger pinned by its one tunnel to us', true, [] as PeerRef[]],
  ['bob only listed, the stranger pinned by its one tunnel to us', false, [{ name: 'bob', id: BOB }]],
  ['nothing pinned, the server lists both (a malicious server needs no tunnel)', false, [{ name: 'bob', id: BOB }, STRANGER]]
])('1. %s: expose add --allow, files policy --allow and open/cp/send/forward add with bob\'s ID as shown are refused as ambiguous; the full ID reaches bob', async (label, bobPinned, listed) => {
  const { store, known, exposes } = agent(listed)
  if (bobPinned) known.trust('bob', BOB, false)
  if (listed.length < 2) known.pin(STRANGER, 'inbound')
  const allowed = await outcome(exposes.add({ port: 22, host: '127.0.0.1', allow: [BOB8] }).then((e) => e.allow[0]!))
  const opened = await outcome(known.expect(BOB8)) // natctl open / cp / send / forward add (manager.open → expect)
  const policy = await outcome(known.resolveKey(BOB8)) // natctl files policy --allow (files.ts setPolicy → resolveKey)
  for (const got of [allowed, opened, policy]) {
    expect(got).toContain(`INVALID_ARGUMENT: ${BOTH_NAMED}`)
    expect(got).toContain('its full ID')
  }
  expect(store.exposes).toEqual([]) // nothing stored
  expect(store.knownPeer('bob') ?? null).toBe(bobPinned ? BOB : null) // nothing pinned by the refusal
  const full = await exposes.add({ port: 22, host: '127.0.0.1', allow: [BOB] })
  expect(admits(full.allow, { id: BOB })).toBe(true)
  expect(admits(full.allow, { id: MALLORY })).toBe(false)
  expect(await known.expect(BOB)).toEqual({ name: null, id: BOB })
  recordAbuse({
    row: `a stranger named after bob's 8-character ID (${label})`,
    metric: 'allow entries and tunnel targets given to the stranger for bob\'s ID as natctl shows it',
    before: 'all of them: expose --allow, files policy --allow, open/cp/send/forward add',
    now: [allowed, opened, policy].filter((g) => g.includes('STRANGER')).length,
    unit: 'of 3',
    bound: '0: text that is a peer\'s name and the start of another\'s ID is INVALID_ARGUMENT naming both; the full ID settles it'
  })
})

it('2. the operator\'s config file says "allow": ["<bob\'s 8-character ID>"], both pinned: at start or SIGHUP the entry admits nobody, and the warning names both peers', () => {
  const pinned: PeerRef[] = [{ name: 'bob', id: BOB }, STRANGER]
  const entry = migrateAllowEntry(BOB8, pinned) // config.ts setDeclared → allow-list.ts
  expect(entry).toEqual({ name: BOB8, id: null })
  expect(admits([entry], { id: MALLORY })).toBe(false)
  expect(admits([entry], { id: BOB })).toBe(false)
  const advice = unresolvedAdvice(entry.name, pinned, 'natctl expose add 22 --allow')
  expect(advice.why).toContain(BOTH_NAMED)
  expect(advice.hint).toBe('natctl expose add 22 --allow FULL_ID of the peer you mean (natctl peers shows it)')
  recordAbuse({
    row: 'a stranger pinned under bob\'s 8-character ID, which the config file\'s allow list holds',
    metric: 'strangers admitted by the entry',
    before: '1: resolved as the stranger\'s name at every start and SIGHUP',
    now: admits([entry], { id: MALLORY }) ? 1 : 0,
    unit: 'peers',
    bound: '0: the entry is unresolved (admits nobody), logged with both peers named and the fix (the full ID)'
  })
})
