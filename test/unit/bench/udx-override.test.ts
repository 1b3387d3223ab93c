import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'

// bench/udx-override.mjs (issue 18): the bench's way to run natd on a udx-native built from
// source. A redirect that silently fell back to the prebuild would make every patched run a
// stock run, so check which file a process really maps.
const ROOT = path.resolve(import.meta.dirname, '../../..')
const HOOK = path.join(ROOT, 'bench/udx-override.mjs')
const PREBUILD = path.join(ROOT, 'node_modules/udx-native/prebuilds/linux-x64/udx-native.node')
const SCRIPT = `import UDX from 'udx-native'; import fs from 'node:fs'; new UDX();
console.log(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.endsWith('.node')).map((l) => l.split(/\\s+/).pop()).filter((p) => /udx/.test(p))[0])`

/** The udx addon file a fresh node process with the hook maps. */
function mappedAddon(env: NodeJS.ProcessEnv): string {
  return execFileSync(process.execPath, ['--import', HOOK, '--input-type=module', '-e', SCRIPT], { cwd: ROOT, env, encoding: 'utf8' }).trim()
}

describe.runIf(process.platform === 'linux' && process.arch === 'x64')('bench/udx-override.mjs', () => {
  it('loads the prebuild without NATD_BENCH_UDX_NATIVE and the named addon with it', () => {
    const env = { ...process.env }
    delete env.NATD_BENCH_UDX_NATIVE
    delete env.NODE_OPTIONS
    expect(fs.realpathSync(mappedAddon(env))).toBe(fs.realpathSync(PREBUILD))

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'udx-override-'))
    try {
      const copy = path.join(dir, 'built.node')
      fs.copyFileSync(PREBUILD, copy)
      expect(mappedAddon({ ...env, NATD_BENCH_UDX_NATIVE: copy })).toBe(copy)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
