/**
 * Reading JSON others wrote (src/common/untrusted-json.ts): never throws, and lets
 * through only the shapes asked for.
 */
import { describe, expect, it } from 'vitest'
import { hexBytes, isJsonObject, parseJson } from '../../../src/common/untrusted-json.js'

describe('untrusted JSON', () => {
  it('parseJson: the value, or null for text that is not JSON', () => {
    expect(parseJson('{"a":1}')).toEqual({ a: 1 })
    expect(parseJson('[1]')).toEqual([1])
    for (const bad of ['', '{', 'undefined', '{"a":}', '\u0000']) expect(parseJson(bad)).toBeNull()
  })

  it('isJsonObject: objects only, not null, arrays or scalars', () => {
    expect(isJsonObject({})).toBe(true)
    for (const v of [null, [], [1], 'x', 1, true, undefined]) expect(isJsonObject(v)).toBe(false)
  })

  it('hexBytes: exactly n bytes of hex, lower case unless anyCase', () => {
    expect(hexBytes('00ff', 2)).toEqual(Buffer.from([0, 255]))
    expect(hexBytes('00FF', 2)).toBeNull()
    expect(hexBytes('00FF', 2, true)).toEqual(Buffer.from([0, 255]))
    for (const v of ['00f', '00ff00', '00fg', ' 0ff', 255, null, ['00ff']]) expect(hexBytes(v, 2, true)).toBeNull()
  })
})
