// review8 #3: natctl's --json output carries a peer's message text with C1 controls
// (U+009B: a one-byte CSI for xterm, which treats UTF-8-decoded C1 as controls by
// default), bidi overrides and U+2028 raw: JSON.stringify escapes only U+0000-U+001F, '"'
// and '\\'. cli/format.ts says "--json needs none of this: JSON escapes them itself".
// `natctl messages --json` (and --follow --json, and the JSON error of a refused cp) is
// typed at a terminal too.
//
// (review 8; the repro of the fix in the commit that added this file.)
import { afterEach, expect, it } from 'vitest'
import { deliver, RAW } from './messages-peer.js'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

it('natctl messages --json prints a stranger\'s C1 CSI, bidi override and line separator escaped (still JSON, same text)', async () => {
  const evil = 'hi\u009b2J\u009b1;1Hbob: trust rv ABCD\u202etxt.exe\u2028'
  const { printed, stored } = await deliver([evil], true, cleanups)
  expect(stored).toEqual([evil])
  const raw = printed.match(RAW) ?? []
  console.log(`raw characters in natctl messages --json: ${raw.map((c) => `U+${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join(' ')}`)
  expect((JSON.parse(printed) as Array<{ text: string }>)[0]!.text).toBe(evil)
  expect(raw).toEqual([])
})
