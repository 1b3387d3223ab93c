// The systemd units and `natd install-service` / `uninstall-service` (src/daemon/service.ts):
// systemd-analyze verify on both units as installed, the hardening they promise, and an
// install into a temp root (files, modes, the config template never overwritten, --purge).
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { parseConfigFile } from '../../../src/daemon/config.js'
import { checkVisibleToService, CONFIG_TEMPLATE, installService, PACKAGE_ROOT, quoteExecArg, renderUnit, serviceGid, uninstallService, UNITS, type CommandRunner } from '../../../src/daemon/service.js'

const DIST_MAIN = path.join(PACKAGE_ROOT, 'dist/daemon/main.js')
const built = fs.existsSync(DIST_MAIN)

function hasCommand(cmd: string): boolean {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).error === undefined
}
const analyze = hasCommand('systemd-analyze')

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777
}

/** Records commands instead of running them: unit tests never touch the host's users. */
function recorder(): CommandRunner & { calls: string[][] } {
  const calls: string[][] = []
  const run = ((cmd: string, args: string[]) => {
    calls.push([cmd, ...args])
    return { code: 0, output: '' }
  }) as CommandRunner & { calls: string[][] }
  run.calls = calls
  return run
}

/** The [Service]/[Unit] settings of a unit file, each key to all its values. */
function settings(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line)
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!])
  }
  return out
}

describe('natd install-service', () => {
  let prefix: string

  beforeEach(() => {
    prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-service-'))
  })

  afterEach(() => {
    fs.rmSync(prefix, { recursive: true, force: true })
  })

  it.skipIf(!built)('installs both units, the sysusers and tmpfiles entries and the config templates, with their modes', () => {
    const run = recorder()
    const report = installService({ prefix }, run)
    const p = (rel: string): string => path.join(prefix, rel)
    expect(report.wrote.sort()).toEqual(
      [
        'etc/systemd/system/natd.service',
        'etc/systemd/system/natd-rendezvous.service',
        'etc/sysusers.d/natd.conf',
        'etc/tmpfiles.d/natd.conf',
        'etc/natd/natd.json',
        'etc/natd/rendezvous.env'
      ]
        .map(p)
        .sort()
    )
    for (const f of ['etc/systemd/system/natd.service', 'etc/systemd/system/natd-rendezvous.service', 'etc/sysusers.d/natd.conf', 'etc/tmpfiles.d/natd.conf']) expect([f, mode(p(f))]).toEqual([f, 0o644])
    expect(mode(p('etc/natd'))).toBe(0o750)
    expect(mode(p('etc/natd/natd.json'))).toBe(0o640)
    expect(mode(p('etc/natd/rendezvous.env'))).toBe(0o640)
    // The users come from systemd-sysusers, /etc/natd's ownership from systemd-tmpfiles, both under the prefix.
    expect(run.calls).toEqual([
      ['systemd-sysusers', `--root=${prefix}`, p('etc/sysusers.d/natd.conf')],
      ['systemd-tmpfiles', '--create', `--root=${prefix}`, p('etc/tmpfiles.d/natd.conf')]
    ])
    // ExecStart= runs this node and this natd, by their real paths.
    const unit = fs.readFileSync(p('etc/systemd/system/natd.service'), 'utf8')
    expect(settings(unit).get('ExecStart')).toEqual([`${fs.realpathSync(process.execPath)} ${fs.realpathSync(DIST_MAIN)} --config /etc/natd/natd.json`])
    const rdv = fs.readFileSync(p('etc/systemd/system/natd-rendezvous.service'), 'utf8')
    expect(settings(rdv).get('ExecStart')).toEqual([`${fs.realpathSync(process.execPath)} ${fs.realpathSync(path.join(PACKAGE_ROOT, 'dist/rendezvous/main.js'))} $NATD_RENDEZVOUS_ARGS`])
    expect(report.next.join('\n')).toContain('systemctl enable --now natd')
  })

  it.skipIf(!built || !hasCommand('systemd-sysusers'))('creates user and group natd under the prefix and gives /etc/natd to the group', () => {
    installService({ prefix })
    const gid = serviceGid(prefix)
    expect(gid).not.toBeNull()
    expect(fs.readFileSync(path.join(prefix, 'etc/passwd'), 'utf8')).toMatch(/^natd:x:\d+:\d+:[^:]*:\/var\/lib\/natd:/m)
    for (const f of ['etc/natd', 'etc/natd/natd.json', 'etc/natd/rendezvous.env']) expect([f, fs.statSync(path.join(prefix, f)).gid]).toEqual([f, gid])
  })

  it.skipIf(!built)('never overwrites an existing natd.json; the units are replaced', () => {
    installService({ prefix }, recorder())
    const config = path.join(prefix, 'etc/natd/natd.json')
    const unit = path.join(prefix, 'etc/systemd/system/natd.service')
    fs.writeFileSync(config, '{"name": "alice", "server": "rv.example.org"}\n')
    fs.writeFileSync(unit, 'stale')
    const again = installService({ prefix }, recorder())
    expect(again.kept).toContain(config)
    expect(fs.readFileSync(config, 'utf8')).toBe('{"name": "alice", "server": "rv.example.org"}\n')
    expect(fs.readFileSync(unit, 'utf8')).toContain('[Service]')
  })

  it.skipIf(!built)('uninstall removes the units and entries and keeps config and state; --purge removes those too', () => {
    installService({ prefix }, recorder())
    const state = path.join(prefix, 'var/lib/natd')
    fs.mkdirSync(state, { recursive: true })
    fs.writeFileSync(path.join(state, 'identity.json'), '{}')
    const kept = uninstallService({ prefix, purge: false }, recorder())
    for (const u of UNITS) expect(fs.existsSync(path.join(prefix, 'etc/systemd/system', u))).toBe(false)
    expect(fs.existsSync(path.join(prefix, 'etc/sysusers.d/natd.conf'))).toBe(false)
    expect(fs.existsSync(path.join(prefix, 'etc/tmpfiles.d/natd.conf'))).toBe(false)
    expect(fs.existsSync(path.join(prefix, 'etc/natd/natd.json'))).toBe(true)
    expect(fs.existsSync(path.join(state, 'identity.json'))).toBe(true)
    expect(kept.kept).toEqual([path.join(prefix, 'etc/natd'), state])
    const purged = uninstallService({ prefix, purge: true }, recorder())
    expect(purged.removed).toEqual([path.join(prefix, 'etc/natd'), state])
    expect(fs.existsSync(path.join(prefix, 'etc/natd'))).toBe(false)
    expect(fs.existsSync(state)).toBe(false)
  })

  it('refuses a natd the service could not see (ProtectHome=yes) and a --bin without the executables', () => {
    for (const p of ['/home/ann/natd/dist/daemon/main.js', '/root/.nvm/versions/node/v24.1.0/bin/node', '/run/user/1000/natd']) {
      expect(() => checkVisibleToService(['/usr/bin/node', p]), p).toThrow(/ProtectHome=yes/)
    }
    expect(() => checkVisibleToService(['/usr/bin/node', '/usr/lib/node_modules/natd/dist/daemon/main.js', '/homestead/x'])).not.toThrow()
    expect(() => installService({ prefix, node: process.execPath, packageRoot: PACKAGE_ROOT, bin: path.join(prefix, 'nothing') }, recorder())).toThrow(/not an executable/)
    const home = fs.mkdtempSync(path.join(prefix, 'bin-'))
    for (const b of ['natd', 'natd-rendezvous']) fs.writeFileSync(path.join(home, b), '#!/bin/sh\n', { mode: 0o755 })
    const report = installService({ prefix, bin: home }, recorder())
    expect(fs.readFileSync(path.join(prefix, 'etc/systemd/system/natd.service'), 'utf8')).toContain(`ExecStart=${path.join(home, 'natd')} --config /etc/natd/natd.json`)
    expect(report.wrote.length).toBeGreaterThan(0)
  })

  it('renders ExecStart= with systemd quoting and keeps the rest of the template', () => {
    expect(quoteExecArg('/usr/bin/node')).toBe('/usr/bin/node')
    expect(quoteExecArg('/opt/my node/bin/node')).toBe('"/opt/my node/bin/node"')
    expect(quoteExecArg('/opt/100%/$x')).toBe('/opt/100%%/$$x')
    const template = fs.readFileSync(path.join(PACKAGE_ROOT, 'systemd/natd.service'), 'utf8')
    const out = renderUnit(template, ['/opt/my node/node', '/srv/natd/dist/daemon/main.js'], '/srv/natd')
    expect(settings(out).get('ExecStart')).toEqual(['"/opt/my node/node" /srv/natd/dist/daemon/main.js --config /etc/natd/natd.json'])
    expect(settings(out).get('Documentation')).toEqual(['file:///srv/natd/docs/SERVICE.md'])
    expect(out.split('\n').filter((l) => !/^(ExecStart|Documentation)=/.test(l))).toEqual(template.split('\n').filter((l) => !/^(ExecStart|Documentation)=/.test(l)))
  })

  it('the config template parses, and says what to fill in', () => {
    expect(parseConfigFile(CONFIG_TEMPLATE, '/etc/natd/natd.json')).toEqual({ path: '/etc/natd/natd.json', secretFile: null, forwards: [], exposes: [] })
  })

  it.skipIf(!built)('the natd binary installs into --prefix and prints the next step', () => {
    const out = execFileSync(process.execPath, [DIST_MAIN, 'install-service', '--prefix', prefix], { encoding: 'utf8' })
    expect(out).toContain(`wrote    ${path.join(prefix, 'etc/systemd/system/natd.service')}`)
    expect(out).toMatch(/^next:$/m)
    expect(out).toContain('sudo systemctl enable --now natd')
    const again = execFileSync(process.execPath, [DIST_MAIN, 'uninstall-service', '--prefix', prefix], { encoding: 'utf8' })
    expect(again).toContain(`removed  ${path.join(prefix, 'etc/systemd/system/natd.service')}`)
    expect(again).toContain(`kept     ${path.join(prefix, 'etc/natd')}`)
  })
})

describe('the systemd units', () => {
  const units = Object.fromEntries(UNITS.map((u) => [u, settings(fs.readFileSync(path.join(PACKAGE_ROOT, 'systemd', u), 'utf8'))]))

  it.each(UNITS)('%s: ordering, restart, user and hardening as docs/SERVICE.md says', (name) => {
    const s = units[name]!
    const one = (k: string): string | undefined => s.get(k)?.at(-1)
    expect(one('After')).toBe('network-online.target')
    expect(one('Wants')).toBe('network-online.target')
    expect(one('Restart')).toBe('on-failure')
    expect([one('User'), one('Group')]).toEqual(['natd', 'natd'])
    expect(one('NoNewPrivileges')).toBe('yes')
    expect(one('ProtectSystem')).toBe('strict')
    expect(one('ProtectHome')).toBe('yes')
    expect(one('PrivateTmp')).toBe('yes')
    expect(one('PrivateDevices')).toBe('yes')
    expect(one('RestrictAddressFamilies')).toBe('AF_UNIX AF_INET AF_INET6 AF_NETLINK')
    expect(s.get('CapabilityBoundingSet')).toEqual(['']) // none at all
    expect(one('SystemCallFilter')).toBe('@system-service')
    expect(one('LockPersonality')).toBe('yes')
    // V8's JIT cannot run under it (docs/SERVICE.md, "MemoryDenyWriteExecute").
    expect(s.has('MemoryDenyWriteExecute')).toBe(false)
    expect(one('WantedBy')).toBe('multi-user.target')
  })

  it('natd.service: state 0700, socket directory, reload by SIGHUP', () => {
    const s = units['natd.service']!
    expect(s.get('StateDirectory')).toEqual(['natd'])
    expect(s.get('StateDirectoryMode')).toEqual(['0700'])
    expect(s.get('RuntimeDirectory')).toEqual(['natd'])
    expect(['0750', '0755']).toContain(s.get('RuntimeDirectoryMode')?.[0])
    expect(s.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID'])
    expect(s.get('ExecStart')?.[0]).toMatch(/ --config \/etc\/natd\/natd\.json$/)
  })

  it('natd-rendezvous.service: its key pair and name bindings in a 0700 state directory', () => {
    const s = units['natd-rendezvous.service']!
    expect(s.get('StateDirectory')).toEqual(['natd-rendezvous'])
    expect(s.get('StateDirectoryMode')).toEqual(['0700'])
  })

  it.skipIf(!analyze || !built)('systemd-analyze verify passes on both units as installed', () => {
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-verify-'))
    try {
      installService({ prefix }, recorder())
      const files = UNITS.map((u) => path.join(prefix, 'etc/systemd/system', u))
      // verify checks that ExecStart='s program exists, so the installed units (real paths) are what it sees.
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...files], { encoding: 'utf8', cwd: prefix })
      expect({ status: r.status, output: `${r.stdout}${r.stderr}`.trim() }).toEqual({ status: 0, output: '' })
    } finally {
      fs.rmSync(prefix, { recursive: true, force: true })
    }
  })

  it.skipIf(!analyze)('systemd-analyze verify catches a broken unit (the check is real)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-verify-'))
    try {
      const bad = path.join(dir, 'natd.service')
      fs.writeFileSync(bad, fs.readFileSync(path.join(PACKAGE_ROOT, 'systemd/natd.service'), 'utf8').replace(/^ExecStart=\S+/m, 'ExecStart=/nonexistent/node'))
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', bad], { encoding: 'utf8', cwd: dir })
      expect(r.status).not.toBe(0)
      expect(r.stderr).toContain('/nonexistent/node')
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('the sysusers entry makes user natd (group natd), the tmpfiles entry gives /etc/natd to it', () => {
    const sysusers = fs.readFileSync(path.join(PACKAGE_ROOT, 'systemd/natd.sysusers'), 'utf8')
    expect(sysusers.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['u natd - "natd NAT-traversal agent" /var/lib/natd'])
    const tmpfiles = fs.readFileSync(path.join(PACKAGE_ROOT, 'systemd/natd.tmpfiles'), 'utf8')
    expect(tmpfiles).toMatch(/^d \/etc\/natd 0750 root natd -$/m)
  })
})
