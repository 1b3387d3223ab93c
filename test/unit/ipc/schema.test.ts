// The API's `via` is the protocol's Via (src/protocol/via.ts) minus 'direct', checked
// against that one list: a value added to the protocol reaches `open` and natctl --via.
import { describe, expect, it } from 'vitest'
import { OPEN_VIAS, PARAMS } from '../../../src/ipc/schema.js'
import { VIAS } from '../../../src/protocol/via.js'

describe('open params: via', () => {
  it('accepts every Via but direct, in the protocol order', () => {
    expect(OPEN_VIAS).toEqual(VIAS.filter((via) => via !== 'direct'))
    for (const via of OPEN_VIAS) expect(PARAMS.open({ peer: 'bob', via }, 'params')).toMatchObject({ via })
  })

  it("refuses 'direct' (the agent's own path upgrades) and unknown values with BAD_REQUEST naming the choices", () => {
    for (const via of ['direct', 'carrier-pigeon']) {
      expect(() => PARAMS.open({ peer: 'bob', via }, 'params')).toThrow(expect.objectContaining({ code: 'BAD_REQUEST', message: 'params.via must be one of auto, udp, tcp, relay' }))
    }
  })
})
