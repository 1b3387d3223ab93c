// The import graph rules from shared/STYLE.md ("Boundaries"), checked on every .ts file
// under src/ (as Tailscale's cmd/tailscale test bans heavy imports from the CLI):
//
//   src/protocol  imports no other src/ folder and no I/O (node:dgram/net/fs, winston, conf)
//   src/tunnel    imports nothing from daemon/ipc/cli/rendezvous, nor conf/winston
//   src/common    (the logger, durable state files) imports only src/protocol
//   src/rendezvous imports src/protocol, src/common and src/tunnel; never daemon/ipc/cli
//   src/ipc       imports only src/protocol and src/common
//   src/portmap   imports only src/protocol (sockets are injected)
//   src/cli       imports src/cli and src/ipc, `import type` from src/protocol (plus
//                 protocol/errors.js, protocol/duration.js and protocol/unsafe-text.js,
//                 which import nothing),
//                 and never native/heavy packages
//
// The checker parses with the TypeScript compiler (multi-line imports, `export … from`,
// dynamic `import()`), and a self-check proves it flags synthetic bad files.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

interface SourceFile {
  path: string // relative to the repo root, POSIX separators: src/cli/main.ts
  text: string
}

interface ImportEdge {
  from: string
  specifier: string
  typeOnly: boolean
  /** The src/ folder a relative import lands in (protocol, ipc, …), or null for packages. */
  folder: string | null
  /** The resolved path for relative imports (src/protocol/errors.js). */
  target: string | null
}

function importsOf(file: SourceFile): ImportEdge[] {
  const sf = ts.createSourceFile(file.path, file.text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const edges: ImportEdge[] = []
  const add = (specifier: string, typeOnly: boolean): void => {
    let folder: string | null = null
    let target: string | null = null
    if (specifier.startsWith('.')) {
      target = path.posix.normalize(path.posix.join(path.posix.dirname(file.path), specifier))
      const parts = target.split('/')
      folder = parts[0] === 'src' && parts.length > 2 ? parts[1]! : `outside-src:${target}`
    }
    edges.push({ from: file.path, specifier, typeOnly, folder, target })
  }
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      // `import type {…}` is erased; `import {type A}` still loads the module (verbatimModuleSyntax).
      add(node.moduleSpecifier.text, node.importClause?.isTypeOnly === true)
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      add(node.moduleSpecifier.text, node.isTypeOnly)
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) && ts.isStringLiteral(node.moduleReference.expression)) {
      add(node.moduleReference.expression.text, node.isTypeOnly)
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0]
      add(arg && ts.isStringLiteralLike(arg) ? arg.text : '<dynamic>', false)
    } else if (ts.isImportTypeNode(node)) {
      return // `import('x').T` in a type position is erased
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return edges
}

/** `node:fs` and `fs`, and their subpaths (`fs/promises`), name the same module. */
function isPackage(specifier: string, names: string[]): boolean {
  const bare = specifier.replace(/^node:/, '')
  return names.some((n) => {
    if (n.endsWith('/*')) return bare.startsWith(n.slice(0, -1))
    const b = n.replace(/^node:/, '')
    return bare === b || bare.startsWith(`${b}/`)
  })
}

const PROTOCOL_BANNED = ['node:dgram', 'node:net', 'node:fs', 'node:child_process', 'node:http', 'node:https', 'winston', 'conf']
const TUNNEL_BANNED_FOLDERS = ['daemon', 'ipc', 'cli', 'rendezvous']
const TUNNEL_BANNED = ['conf', 'winston']
/** What the other layers may import from src/ (besides themselves). */
const ALLOWED_FOLDERS: Record<string, string[]> = {
  common: ['protocol'],
  rendezvous: ['protocol', 'common', 'tunnel'],
  ipc: ['protocol', 'common'],
  // Port-mapping codecs and the client: sockets injected, like src/tunnel.
  portmap: ['protocol']
}
const CLI_BANNED = ['udx-native', 'sodium-native', '@hyperswarm/*', 'winston', 'conf']
/**
 * Protocol values natctl may load; each file has no imports (the transitive check below
 * still guards them). errors.ts: NatdError, to map codes to exit statuses. duration.ts:
 * the one parser of `500ms`/`10s`/`5m`/`1h` and `64KiB`/`2GiB`, so natctl reads --timeout
 * and sizes as natd and natd-rendezvous read theirs (re-exporting it from src/ipc would
 * make the API layer carry a command-line helper that has nothing to do with the API).
 */
const CLI_PROTOCOL_VALUE_ALLOWED = ['src/protocol/errors.js', 'src/protocol/duration.js', 'src/protocol/unsafe-text.js']

function violations(files: SourceFile[]): string[] {
  const out: string[] = []
  for (const file of files) {
    const layer = file.path.split('/')[1]
    for (const e of importsOf(file)) {
      const where = `${e.from} imports '${e.specifier}'`
      if (e.folder?.startsWith('outside-src:')) {
        out.push(`${where}: reaches outside src/`)
        continue
      }
      if (layer === 'protocol') {
        if (e.folder && e.folder !== 'protocol') out.push(`${where}: src/protocol may not import src/${e.folder}`)
        if (!e.folder && isPackage(e.specifier, PROTOCOL_BANNED)) out.push(`${where}: src/protocol does no I/O`)
      } else if (layer === 'tunnel') {
        if (e.folder && TUNNEL_BANNED_FOLDERS.includes(e.folder)) out.push(`${where}: src/tunnel may not import src/${e.folder}`)
        if (!e.folder && isPackage(e.specifier, TUNNEL_BANNED)) out.push(`${where}: src/tunnel may not use ${e.specifier}`)
      } else if (layer && layer in ALLOWED_FOLDERS) {
        if (e.folder && e.folder !== layer && !ALLOWED_FOLDERS[layer]!.includes(e.folder)) out.push(`${where}: src/${layer} may not import src/${e.folder}`)
      } else if (layer === 'cli') {
        if (e.folder === 'protocol') {
          if (!e.typeOnly && !CLI_PROTOCOL_VALUE_ALLOWED.includes(e.target!)) out.push(`${where}: src/cli may only \`import type\` from src/protocol`)
        } else if (e.folder && e.folder !== 'cli' && e.folder !== 'ipc') {
          out.push(`${where}: src/cli may only import src/cli and src/ipc`)
        }
        if (!e.folder && isPackage(e.specifier, CLI_BANNED)) out.push(`${where}: natctl stays a thin client`)
        if (e.specifier === '<dynamic>') out.push(`${where}: dynamic import the checker cannot follow`)
      }
    }
  }
  return out
}

function srcFiles(): SourceFile[] {
  const out: SourceFile[] = []
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(full)
      else if (entry.name.endsWith('.ts')) out.push({ path: path.relative(ROOT, full).split(path.sep).join('/'), text: fs.readFileSync(full, 'utf8') })
    }
  }
  walk(path.join(ROOT, 'src'))
  return out
}

describe('import boundaries (STYLE.md)', () => {
  const files = srcFiles()

  it('finds the source tree', () => {
    const layers = new Set(files.map((f) => f.path.split('/')[1]))
    for (const layer of ['protocol', 'cli', 'ipc', 'daemon', 'rendezvous', 'common']) expect(layers, layer).toContain(layer)
    expect(files.filter((f) => f.path.startsWith('src/cli/')).length).toBeGreaterThan(0)
    expect(files.filter((f) => f.path.startsWith('src/protocol/')).length).toBeGreaterThan(0)
  })

  it('src/ respects the layer boundaries', () => {
    expect(violations(files)).toEqual([])
  })

  it("natctl's transitive runtime imports stay free of native and heavy packages", () => {
    // Follow value imports from every src/cli file through src/ and collect the packages reached.
    const byPath = new Map(files.map((f) => [f.path.replace(/\.ts$/, '.js'), f]))
    const seen = new Set<string>()
    const packages = new Set<string>()
    const queue = files.filter((f) => f.path.startsWith('src/cli/'))
    while (queue.length) {
      const f = queue.pop()!
      if (seen.has(f.path)) continue
      seen.add(f.path)
      for (const e of importsOf(f)) {
        if (e.typeOnly) continue
        if (e.target) {
          const next = byPath.get(e.target)
          if (next) queue.push(next)
        } else packages.add(e.specifier)
      }
    }
    const heavy = [...packages].filter((p) => isPackage(p, CLI_BANNED))
    expect(heavy, `reached through ${[...seen].join(', ')}`).toEqual([])
  })
})

describe('import boundary checker (self-check)', () => {
  const ok = (p: string, text: string): string[] => violations([{ path: p, text }])

  it('flags protocol importing another layer or doing I/O', () => {
    expect(ok('src/protocol/x.ts', "import { a } from '../daemon/config.js'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import type { A } from '../ipc/schema.js'")).toHaveLength(1) // even type-only
    expect(ok('src/protocol/x.ts', "import dgram from 'node:dgram'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import fs from 'fs'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import { readFile } from 'node:fs/promises'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import winston from 'winston'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "export { x } from '../rendezvous/server.js'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "const m = await import('node:net')")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import {\n  a,\n  b\n} from '../tunnel/mux.js'")).toHaveLength(1)
    expect(ok('src/protocol/x.ts', "import { a } from './bytes.js'\nimport sodium from 'sodium-native'")).toEqual([])
  })

  it('flags tunnel importing daemon/ipc/cli/rendezvous, conf or winston', () => {
    for (const spec of ['../daemon/agent.js', '../ipc/server.js', '../cli/main.js', '../rendezvous/registry.js', 'conf', 'winston']) {
      expect(ok('src/tunnel/x.ts', `import x from '${spec}'`), spec).toHaveLength(1)
    }
    expect(ok('src/tunnel/x.ts', "import { a } from '../protocol/mux.js'\nimport udx from 'udx-native'")).toEqual([])
  })

  it('flags rendezvous, ipc and common importing layers they may not', () => {
    for (const spec of ['../daemon/agent.js', '../ipc/server.js', '../cli/main.js']) expect(ok('src/rendezvous/x.ts', `import x from '${spec}'`), spec).toHaveLength(1)
    expect(ok('src/rendezvous/x.ts', "import { a } from '../common/logger.js'\nimport { b } from '../tunnel/secure-socket.js'\nimport { c } from '../protocol/log.js'")).toEqual([])
    for (const spec of ['../daemon/agent.js', '../tunnel/mux.js', '../rendezvous/server.js', '../cli/main.js']) expect(ok('src/ipc/x.ts', `import x from '${spec}'`), spec).toHaveLength(1)
    expect(ok('src/ipc/x.ts', "import { a } from '../protocol/errors.js'\nimport { b } from '../common/state-files.js'")).toEqual([])
    for (const spec of ['../daemon/config.js', '../tunnel/mux.js', '../ipc/schema.js', '../rendezvous/registry.js']) expect(ok('src/common/x.ts', `import x from '${spec}'`), spec).toHaveLength(1)
    expect(ok('src/common/x.ts', "import type { Logger } from '../protocol/log.js'\nimport winston from 'winston'")).toEqual([])
  })

  it('flags cli importing beyond ipc, protocol values, or heavy packages', () => {
    expect(ok('src/cli/x.ts', "import { a } from '../daemon/config.js'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import { a } from '../tunnel/tunnel.js'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import { decode } from '../protocol/rendezvous.js'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import { VIAS } from '../protocol/via.js'")).toHaveLength(1) // import-free, but not on the list
    expect(ok('src/cli/x.ts', "import { type Endpoint } from '../protocol/endpoint.js'")).toHaveLength(1) // still loads the module
    expect(ok('src/cli/x.ts', "import sodium from 'sodium-native'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import { SecretStream } from '@hyperswarm/secret-stream'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import UDX from 'udx-native'")).toHaveLength(1)
    expect(ok('src/cli/x.ts', "import x from '../../test/unit/helpers.js'")).toHaveLength(1)
    expect(
      ok(
        'src/cli/x.ts',
        [
          "import type { Endpoint } from '../protocol/endpoint.js'",
          "import { NatdError } from '../protocol/errors.js'",
          "import { parseDuration } from '../protocol/duration.js'",
          "import { ApiClient } from '../ipc/client.js'",
          "import { table } from './format.js'",
          "import yargs from 'yargs'",
          "// import sodium from 'sodium-native' (a comment is not an import)",
          "const s = \"import x from '../daemon/agent.js'\""
        ].join('\n')
      )
    ).toEqual([])
  })
})
