// ChunkStage (src/daemon/chunk-stage.ts): the staging step shared by a forward's socket
// writes (SocketGather) and a file's disk queue (FileBody). What it emits must be the
// pushed bytes in order; small chunks are copied into a few large buffers, large ones pass
// as they are (no copy), and the stage's free space is used again after a seal().
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { ChunkStage, SMALL_CHUNK_BYTES, STAGE_BYTES } from '../../../src/daemon/chunk-stage.js'

function collect(): { out: Buffer[]; stage: ChunkStage } {
  const out: Buffer[] = []
  return { out, stage: new ChunkStage((b) => out.push(b)) }
}

describe('ChunkStage', () => {
  it('1-byte chunks come out in STAGE_BYTES buffers, in order', () => {
    const { out, stage } = collect()
    const data = randomBytes(200_000)
    for (let at = 0; at < data.length; at++) stage.push(data.subarray(at, at + 1))
    expect(stage.staged).toBe(data.length % STAGE_BYTES)
    stage.seal()
    expect(stage.staged).toBe(0)
    expect(out).toHaveLength(Math.ceil(data.length / STAGE_BYTES))
    expect(Buffer.concat(out).equals(data)).toBe(true)
  })

  it('a large chunk is emitted as it is, after what was staged', () => {
    const { out, stage } = collect()
    const small = randomBytes(100)
    const large = randomBytes(SMALL_CHUNK_BYTES)
    stage.push(small)
    stage.push(large)
    expect(out).toHaveLength(2)
    expect(out[0]!.equals(small)).toBe(true)
    expect(out[1]).toBe(large) // the caller's buffer, not a copy
    expect(stage.staged).toBe(0)
  })

  it('mixed sizes keep their order; the free space after a seal is the next stage (no new buffer until it is full)', () => {
    const { out, stage } = collect()
    const sizes = [1, 3, 20 * 1024, 500, SMALL_CHUNK_BYTES - 1, SMALL_CHUNK_BYTES, 7, 64 * 1024, 2, STAGE_BYTES - 1, 9]
    const parts = sizes.map((n) => randomBytes(n))
    for (const [i, p] of parts.entries()) {
      stage.push(p)
      if (i % 3 === 0) stage.seal()
    }
    stage.seal()
    expect(Buffer.concat(out).equals(Buffer.concat(parts))).toBe(true)
    // Two small chunks sealed apart share one underlying buffer.
    const { out: o2, stage: s2 } = collect()
    s2.push(Buffer.from('ab'))
    s2.seal()
    s2.push(Buffer.from('cd'))
    s2.seal()
    expect(o2[0]!.buffer).toBe(o2[1]!.buffer)
    expect(o2[1]!.byteOffset).toBe(o2[0]!.byteOffset + 2)
    expect(Buffer.concat(o2).toString()).toBe('abcd')
  })

  it('clear() forgets the staged bytes: nothing is emitted', () => {
    const { out, stage } = collect()
    stage.push(Buffer.from('lost'))
    stage.clear()
    stage.seal()
    expect(out).toHaveLength(0)
    stage.push(Buffer.from('next'))
    stage.seal()
    expect(Buffer.concat(out).toString()).toBe('next')
  })
})
