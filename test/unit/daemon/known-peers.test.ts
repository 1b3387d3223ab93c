// daemon/known-peers.ts: pins in the state store, trust/untrust/--replace, what an open
// expects, the checks on an introduced peer, and the keys allow lists get.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { StateStore } from '../../../src/daemon/config.js'
import { KnownPeers, MAX_PINS_ON_FIRST_USE, SERVER_LIST_REUSE_MS } from '../../../src/daemon/known-peers.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PeerRef } from '../../../src/protocol/peer-ref.js'
import { errorCode, FakeClock } from '../helpers.js'

const BOB = peerId(generateKeyPair().publicKey)
const BOB_NEW = peerId(generateKeyPair().publicKey)
const CAROL = peerId(generateKeyPair().publicKey)
const LOOKALIKE = BOB.slice(0, 8) + 'a'.repeat(43) + 'q'

async function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'resolved', (err: unknown) => (err instanceof NatdError ? err.code : String(err)))
}

describe('KnownPeers', () => {
  let dir: string
  let store: StateStore
  let listed: PeerRef[]
  let listCalls: number
  let known: KnownPeers

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-known-'))
    store = new StateStore(dir)
    listed = []
    listCalls = 0
    known = new KnownPeers({
      store,
      log: silentLogger,
      serverPeers: async () => {
        listCalls++
        return listed
      }
    })
  })

  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('trust pins a full ID; another ID needs --replace; untrust forgets; all persist (once written behind: store.durable())', async () => {
    expect(known.trust('bob', BOB, false)).toEqual({ name: 'bob', id: BOB, replaced: null })
    expect(known.trust('bob', BOB, false)).toEqual({ name: 'bob', id: BOB, replaced: null }) // the same again: fine
    expect(errorCode(() => known.trust('bob', BOB_NEW, false))).toBe('KEY_MISMATCH')
    expect(() => known.trust('bob', BOB_NEW, false)).toThrow(/--replace/)
    expect(known.trust('bob', BOB_NEW, true)).toEqual({ name: 'bob', id: BOB_NEW, replaced: BOB })
    await store.durable()
    expect(new StateStore(dir).knownPeer('bob')).toBe(BOB_NEW)
    expect(known.untrust('bob')).toEqual({ name: 'bob', id: BOB_NEW })
    await store.durable()
    expect(new StateStore(dir).knownPeers()).toEqual([])
    expect(errorCode(() => known.untrust('bob'))).toBe('PEER_UNKNOWN')
  })

  it('trust wants a valid name and a full ID (no abbreviation)', () => {
    expect(errorCode(() => known.trust('bob', BOB.slice(0, 8), false))).toBe('INVALID_ARGUMENT')
    expect(errorCode(() => known.trust('Bob!', BOB, false))).toBe('INVALID_ARGUMENT')
  })

  it('check: a pinned name with another key is KEY_MISMATCH (the message says how to re-pin); another name than asked is PEER_MISMATCH', () => {
    known.trust('bob', BOB, false)
    expect(errorCode(() => known.check({ name: 'bob', id: BOB_NEW }, null))).toBe('KEY_MISMATCH')
    expect(() => known.check({ name: 'bob', id: BOB_NEW }, null)).toThrow(`natctl trust bob ${BOB_NEW} --replace`)
    expect(errorCode(() => known.check({ name: 'bob_', id: LOOKALIKE }, { name: 'bob', id: BOB }))).toBe('PEER_MISMATCH')
    expect(errorCode(() => known.check({ name: 'bob_', id: BOB }, { name: 'bob', id: BOB }))).toBe('PEER_MISMATCH')
    expect(errorCode(() => known.check({ name: 'carol', id: CAROL }, { name: null, id: BOB }))).toBe('PEER_MISMATCH')
    expect(() => known.check({ name: 'bob', id: BOB }, { name: 'bob', id: BOB })).not.toThrow()
    expect(() => known.check({ name: 'carol', id: CAROL }, null)).not.toThrow() // first use
  })

  it('pin keeps the first key (first use); trust --replace is the way to change it', () => {
    known.pin({ name: 'bob', id: BOB }, 'inbound')
    known.pin({ name: 'bob', id: BOB_NEW }, 'ours')
    expect(store.knownPeer('bob')).toBe(BOB)
  })

  it('expect: names and pinned abbreviations without the server; other abbreviations from its list', async () => {
    known.trust('bob', BOB, false)
    expect(await known.expect('bob')).toEqual({ name: 'bob', id: BOB })
    expect(await known.expect('dave')).toEqual({ name: 'dave', id: null })
    expect(await known.expect(BOB.slice(0, 9))).toEqual({ name: null, id: BOB })
    expect(listCalls).toBe(0)
    listed = [{ name: 'carol', id: CAROL }]
    expect(await known.expect(CAROL.slice(0, 8))).toEqual({ name: null, id: CAROL })
    // A pinned match stands (the tunnel must then present that whole key); among listed peers an abbreviation must be unique.
    listed = [{ name: 'mallory', id: LOOKALIKE }]
    expect(await known.expect(BOB.slice(0, 8))).toEqual({ name: null, id: BOB })
    listed = [{ name: 'carol', id: CAROL }, { name: 'mallory', id: CAROL.slice(0, 8) + 'a'.repeat(43) + 'q' }]
    expect(await codeOf(known.expect(CAROL.slice(0, 8)))).toBe('INVALID_ARGUMENT')
  })

  // Review 9: a stranger named after bob's first 8 characters, pinned on first use by
  // one tunnel it opened to us, while bob is only listed by the server.
  it('expect and resolveKey: a pinned ID-shaped name is checked against the listed IDs; also the start of another peer\'s ID is INVALID_ARGUMENT, and nothing is pinned', async () => {
    const BOB8 = BOB.slice(0, 8)
    known.pin({ name: BOB8, id: CAROL }, 'inbound')
    listed = [{ name: 'bob', id: BOB }]
    expect(await codeOf(known.expect(BOB8))).toBe('INVALID_ARGUMENT')
    await expect(known.resolveKey(BOB8)).rejects.toThrow(`the name of ${BOB8} (${CAROL.slice(0, 8)}…), and the start of the ID of bob (${BOB8}…)`)
    expect(store.knownPeer('bob')).toBeUndefined()
    expect(await known.expect(BOB)).toEqual({ name: null, id: BOB }) // the full ID always settles it
    // The server cannot be asked: the pins stand, as for any name.
    const offline = new KnownPeers({ store, log: silentLogger, serverPeers: () => Promise.reject(new NatdError('NOT_REGISTERED', 'down')) })
    expect(await offline.expect(BOB8)).toEqual({ name: BOB8, id: CAROL })
  })

  it(`expect: a pinned ID-shaped name (database) asks the server once per SERVER_LIST_REUSE_MS (${SERVER_LIST_REUSE_MS} ms), not once per forwarded connection; other names never`, async () => {
    const clock = new FakeClock()
    const k = new KnownPeers({ store, log: silentLogger, clock, serverPeers: async () => {
        listCalls++
        return listed
      }
    })
    k.trust('database', CAROL, false)
    k.trust('bob', BOB, false)
    for (let i = 0; i < 100; i++) expect(await k.expect('database')).toEqual({ name: 'database', id: CAROL })
    expect(await k.expect('bob')).toEqual({ name: 'bob', id: BOB })
    expect(listCalls).toBe(1)
    clock.t += SERVER_LIST_REUSE_MS
    listed = [{ name: 'other', id: 'database' + BOB.slice(8) }] // a peer whose ID starts with the name registers
    expect(await codeOf(k.expect('database'))).toBe('INVALID_ARGUMENT')
    expect(listCalls).toBe(2)
  })

  it('resolveKey (allow lists): pinned key, else the server-listed key (then pinned); unknown is PEER_UNKNOWN', async () => {
    known.trust('bob', BOB, false)
    expect(await known.resolveKey('bob')).toEqual({ name: 'bob', id: BOB })
    listed = [{ name: 'carol', id: CAROL }]
    expect(await known.resolveKey('carol')).toEqual({ name: 'carol', id: CAROL })
    expect(store.knownPeer('carol')).toBe(CAROL)
    expect(await known.resolveKey(BOB)).toEqual({ name: 'bob', id: BOB })
    expect(await codeOf(known.resolveKey('dave'))).toBe('PEER_UNKNOWN')
    expect(await codeOf(known.resolveKey('d'.repeat(40)))).toBe('PEER_UNKNOWN')
  })

  it(`strangers under fresh names: pinned on first use up to MAX_PINS_ON_FIRST_USE (${MAX_PINS_ON_FIRST_USE}), then not (logged once, a state warning); peers we chose and trust still pin, and a later key change is KEY_MISMATCH`, async () => {
    const pins: Record<string, string> = {}
    for (let i = 0; i < MAX_PINS_ON_FIRST_USE; i++) pins[`stranger${i}`] = CAROL // as inbound first-use pins left them (one by one takes seconds)
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ knownPeers: pins }), { mode: 0o600 })
    const warned: unknown[] = []
    const reread = new StateStore(dir)
    const after = new KnownPeers({ store: reread, log: { ...silentLogger, warn: (msg: string) => warned.push(msg) }, serverPeers: async () => listed })
    expect(after.list()).toHaveLength(MAX_PINS_ON_FIRST_USE)
    expect(reread.stateWarnings).toEqual([])
    after.pin({ name: 'eve1', id: BOB }, 'inbound')
    after.pin({ name: 'eve2', id: BOB_NEW }, 'inbound')
    expect(after.isPinned({ name: 'eve1', id: BOB })).toBe(false)
    expect(warned).toEqual(['peer key not pinned: too many pins'])
    expect(reread.stateWarnings).toHaveLength(1)
    expect(reread.stateWarnings[0]).toMatch(/no longer pinned on first use/)
    // A tunnel we open to a new peer: still pinned, so the server cannot swap its key later.
    after.pin({ name: 'bob', id: BOB }, 'ours')
    expect(after.isPinned({ name: 'bob', id: BOB })).toBe(true)
    expect(errorCode(() => after.check({ name: 'bob', id: BOB_NEW }, { name: 'bob', id: null }))).toBe('KEY_MISMATCH')
    // An allow entry the server lists: pinned too.
    listed = [{ name: 'dave', id: BOB_NEW }]
    expect(await after.resolveKey('dave')).toEqual({ name: 'dave', id: BOB_NEW })
    expect(reread.knownPeer('dave')).toBe(BOB_NEW)
    expect(after.trust('frank', CAROL, false).replaced).toBeNull()
    expect(after.list()).toHaveLength(MAX_PINS_ON_FIRST_USE + 3)
    expect(warned).toHaveLength(1)
  })

  it('a peer named like a property of every object (constructor) is no pinned name: it is pinned on first use, not refused as KEY_MISMATCH', () => {
    expect(store.knownPeer('constructor')).toBeUndefined()
    expect(() => known.check({ name: 'constructor', id: BOB }, null)).not.toThrow()
    known.pin({ name: 'constructor', id: BOB }, 'inbound')
    expect(store.knownPeer('constructor')).toBe(BOB)
  })
})
