// The path plan (src/tunnel/path-plan.ts), pure: every `via` × our verdict × the peer's.
// Each grid reads as the NAT lab does (test/lab/hard-nat.test.ts, tcp.test.ts,
// relay.test.ts): rows are our NAT, columns the peer's; a cell is the direct attempts
// (the UDP punch strategy, `+tcp` when TCP punches too), `-` for none, `impossible` when
// the open is refused at once.
import { describe, expect, it } from 'vitest'
import type { NatVerdict, Via } from '../../../src/protocol/rendezvous.js'
import { BOTH_HARD, planPaths, punchStrategy, type PathPlan } from '../../../src/tunnel/path-plan.js'

const VERDICTS: readonly NatVerdict[] = ['unknown', 'easy', 'hard', 'none']
const VIAS: readonly Via[] = ['auto', 'udp', 'tcp', 'relay', 'direct']

function cell(p: PathPlan): string {
  if (p.impossible !== null) return 'impossible'
  return [p.udp ?? '', p.tcp ? 'tcp' : ''].filter(Boolean).join('+') || '-'
}

//                         theirs: unknown        easy           hard           none
const GRIDS: Record<Via, Record<NatVerdict, [string, string, string, string]>> = {
  auto: {
    unknown: /* mine */ ['normal+tcp', 'normal+tcp', 'normal', 'normal+tcp'],
    easy: ['normal+tcp', 'normal+tcp', 'spray', 'normal+tcp'],
    hard: ['normal', 'birthday', '-', 'birthday'],
    none: ['normal+tcp', 'normal+tcp', 'spray', 'normal+tcp']
  },
  udp: {
    unknown: ['normal', 'normal', 'normal', 'normal'],
    easy: ['normal', 'normal', 'spray', 'normal'],
    hard: ['normal', 'birthday', 'impossible', 'birthday'],
    none: ['normal', 'normal', 'spray', 'normal']
  },
  // An explicit --via tcp tries regardless of the verdicts.
  tcp: {
    unknown: ['tcp', 'tcp', 'tcp', 'tcp'],
    easy: ['tcp', 'tcp', 'tcp', 'tcp'],
    hard: ['tcp', 'tcp', 'tcp', 'tcp'],
    none: ['tcp', 'tcp', 'tcp', 'tcp']
  },
  relay: {
    unknown: ['-', '-', '-', '-'],
    easy: ['-', '-', '-', '-'],
    hard: ['-', '-', '-', '-'],
    none: ['-', '-', '-', '-']
  },
  // The upgrade attempt of a relayed tunnel: auto's direct attempts, no relay.
  direct: {
    unknown: ['normal+tcp', 'normal+tcp', 'normal', 'normal+tcp'],
    easy: ['normal+tcp', 'normal+tcp', 'spray', 'normal+tcp'],
    hard: ['normal', 'birthday', 'impossible', 'birthday'],
    none: ['normal+tcp', 'normal+tcp', 'spray', 'normal+tcp']
  }
}

const RELAY: Record<Via, PathPlan['relay']> = { auto: 'fallback', udp: 'never', tcp: 'never', relay: 'now', direct: 'never' }

const cases = VIAS.flatMap((via) => VERDICTS.flatMap((mine) => VERDICTS.map((theirs, i) => [via, mine, theirs, GRIDS[via][mine][i]!] as const)))

describe('planPaths (pure)', () => {
  it.each(cases)('via %s, mine %s, theirs %s: %s', (via, mine, theirs, want) => {
    for (const initiator of [true, false]) {
      const plan = planPaths({ via, mine, theirs, initiator })
      expect(cell(plan)).toBe(want)
      if (plan.impossible !== null) {
        expect(plan).toMatchObject({ udp: null, tcp: false, relay: 'never', impossible: BOTH_HARD })
        continue
      }
      expect(plan.relay).toBe(RELAY[via])
      // Only the initiator chooses: it waits for TCP when both race, and it upgrades a relayed auto tunnel.
      expect(plan.preferTcp).toBe(initiator && (via === 'auto' || via === 'direct') && plan.udp !== null && plan.tcp)
      expect(plan.upgrade).toBe(initiator && via === 'auto')
    }
  })

  it('hard×hard with auto goes straight to the relay fallback (nothing direct to wait for)', () => {
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'hard', initiator: true })).toEqual({ udp: null, search: null, tcp: false, relay: 'fallback', preferTcp: false, late: true, upgrade: true, impossible: null })
  })

  it('hard×hard where either side holds a port mapping: UDP punched plainly (to the mapped port), relay as fallback', () => {
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'hard', initiator: true, mapped: true })).toEqual({ udp: 'normal', search: null, tcp: false, relay: 'fallback', preferTcp: false, late: true, upgrade: true, impossible: null })
    expect(planPaths({ via: 'udp', mine: 'hard', theirs: 'hard', initiator: false, mapped: true })).toMatchObject({ udp: 'normal', impossible: null })
    expect(planPaths({ via: 'direct', mine: 'hard', theirs: 'hard', initiator: true, mapped: true })).toMatchObject({ udp: 'normal', impossible: null })
    // Where one side is hard, a mapping replaces the search (birthday, spray) by plain probes to the mapped port,
    // and the search is kept for when the mapped endpoint does not answer (stale or forged mapping).
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'easy', initiator: true, mapped: true })).toEqual({ ...planPaths({ via: 'auto', mine: 'hard', theirs: 'easy', initiator: true }), udp: 'normal', search: 'birthday' })
    expect(planPaths({ via: 'auto', mine: 'easy', theirs: 'hard', initiator: false, mapped: true })).toEqual({ ...planPaths({ via: 'auto', mine: 'easy', theirs: 'hard', initiator: false }), udp: 'normal', search: 'spray' })
    // The two sides agree: each keeps its half of the search.
    expect(planPaths({ via: 'udp', mine: 'easy', theirs: 'hard', initiator: true, mapped: true }).search).toBe('spray')
    expect(planPaths({ via: 'udp', mine: 'hard', theirs: 'easy', initiator: false, mapped: true }).search).toBe('birthday')
    // Elsewhere it changes nothing.
    for (const [mine, theirs] of [['easy', 'easy'], ['none', 'easy'], ['unknown', 'hard']] as const) {
      expect(planPaths({ via: 'auto', mine, theirs, initiator: true, mapped: true })).toEqual(planPaths({ via: 'auto', mine, theirs, initiator: true }))
    }
  })

  it('both sides have IPv6: UDP punched plainly (IPv6 has no NAT) and TCP over IPv6 whatever the IPv4 NATs, TCP preferred, relay as fallback', () => {
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'hard', initiator: true, v6: true })).toEqual({ udp: 'normal', search: null, tcp: true, relay: 'fallback', preferTcp: true, late: true, upgrade: true, impossible: null })
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'hard', initiator: false, v6: true })).toEqual({ udp: 'normal', search: null, tcp: true, relay: 'fallback', preferTcp: false, late: true, upgrade: false, impossible: null })
    expect(planPaths({ via: 'udp', mine: 'hard', theirs: 'hard', initiator: false, v6: true })).toMatchObject({ udp: 'normal', tcp: false, impossible: null })
    expect(planPaths({ via: 'direct', mine: 'hard', theirs: 'hard', initiator: true, v6: true })).toMatchObject({ udp: 'normal', tcp: true, impossible: null })
    // one hard NAT: IPv4 TCP cannot cross it, IPv6 TCP can (birthday and spray still run
    // for IPv4 UDP; punch.ts probes the IPv6 candidates plainly beside them)
    expect(planPaths({ via: 'auto', mine: 'easy', theirs: 'hard', initiator: true, v6: true })).toEqual({ udp: 'spray', search: null, tcp: true, relay: 'fallback', preferTcp: true, late: true, upgrade: true, impossible: null })
    expect(planPaths({ via: 'auto', mine: 'hard', theirs: 'easy', initiator: true })).toMatchObject({ udp: 'birthday', tcp: false, preferTcp: false })
    for (const via of VIAS) {
      for (const mine of VERDICTS) {
        for (const theirs of VERDICTS) {
          if (mine === 'hard' || theirs === 'hard') continue
          // without a hard NAT, IPv6 changes nothing in the plan (paths.ts picks the candidates)
          expect(planPaths({ via, mine, theirs, initiator: true, v6: true }), `${via} ${mine} ${theirs}`).toEqual(planPaths({ via, mine, theirs, initiator: true }))
        }
      }
    }
    expect(planPaths({ via: 'relay', mine: 'hard', theirs: 'hard', initiator: true, v6: true })).toMatchObject({ udp: null, tcp: false, relay: 'now' })
    expect(planPaths({ via: 'udp', mine: 'easy', theirs: 'hard', initiator: true, v6: true })).toMatchObject({ tcp: false })
  })

  it('two sites behind one NAT that may not hairpin (the peer at our public address, no LAN candidate on our links): auto starts the relay at once, beside the direct attempts', () => {
    for (const initiator of [true, false]) {
      expect(planPaths({ via: 'auto', mine: 'easy', theirs: 'easy', initiator, hairpinOnly: true })).toMatchObject({ udp: 'normal', tcp: true, relay: 'now', late: true })
      // IPv6 needs no hairpin: the relay waits as usual.
      expect(planPaths({ via: 'auto', mine: 'easy', theirs: 'easy', initiator, hairpinOnly: true, v6: true }).relay).toBe('fallback')
    }
    // Only auto: an explicit way, and the upgrade attempt (direct), never relay.
    for (const via of ['udp', 'tcp', 'direct'] as const) expect(planPaths({ via, mine: 'easy', theirs: 'easy', initiator: true, hairpinOnly: true }).relay).toBe('never')
    expect(planPaths({ via: 'auto', mine: 'easy', theirs: 'easy', initiator: true }).relay).toBe('fallback')
  })

  it('auto and direct keep attempts that could give a better path after the winner (path-race.ts); an explicit way does not', () => {
    for (const via of VIAS) expect(planPaths({ via, mine: 'easy', theirs: 'easy', initiator: true }).late, via).toBe(via === 'auto' || via === 'direct')
  })

  it('the impossible reason says why and what to use instead', () => {
    expect(BOTH_HARD).toMatch(/both NATs map per destination/)
    expect(BOTH_HARD).toMatch(/--via auto or --via relay/)
    expect(BOTH_HARD).not.toMatch(/not in this build/)
  })
})

describe('punchStrategy (pure)', () => {
  it.each<[NatVerdict, NatVerdict, ReturnType<typeof punchStrategy>]>([
    ['easy', 'easy', 'normal'],
    ['hard', 'easy', 'birthday'], // we are the hard side: many sockets find the peer's one mapping
    ['hard', 'none', 'birthday'],
    ['easy', 'hard', 'spray'], // the peer is hard: spray its ports from our one mapping
    ['none', 'hard', 'spray'],
    ['hard', 'unknown', 'normal'], // an unknown side may be anything: punch plainly
    ['unknown', 'hard', 'normal'],
    ['hard', 'hard', null]
  ])('mine %s, theirs %s: %s', (mine, theirs, want) => {
    expect(punchStrategy(mine, theirs)).toBe(want)
  })

  it('either side holding a port mapping: normal whatever the verdicts (the mapped port takes probes unasked); IPv6 only between two hard NATs', () => {
    for (const [mine, theirs] of [['hard', 'easy'], ['easy', 'hard'], ['hard', 'none'], ['hard', 'hard']] as const) expect(punchStrategy(mine, theirs, true), `${mine} ${theirs}`).toBe('normal')
    expect(punchStrategy('hard', 'hard', false, true)).toBe('normal')
    expect(punchStrategy('easy', 'hard', false, true)).toBe('spray') // the IPv4 search still runs beside IPv6
  })
})
