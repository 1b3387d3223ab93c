/**
 * What the port-mapping keeper (port-mapping.ts) remembers between starts: a gateway
 * that answered none of PCP, NAT-PMP and UPnP, so the next start behind it does not wait
 * for the probe again (it probes in the background).
 */
import fs from 'node:fs'
import path from 'node:path'
import { BackgroundJsonFile } from '../common/background-json-file.js'

/** The file in the state directory that remembers a gateway answering none of the protocols. */
export const PORTMAP_CACHE_FILE = 'portmap.json'

/** Where the keeper remembers that a gateway answers none of the protocols. */
export interface SilentGatewayCache {
  /** The gateway last found answering none of PCP, NAT-PMP and UPnP, or null. */
  get(): string | null
  set(gateway: string | null): void
}

/**
 * The cache as a small file in the state directory; a missing or bad file is "nothing
 * known". Written in the background (BackgroundJsonFile): the first start behind a
 * silent gateway sets it just before registering, and a busy disk must not hold that up.
 * Best effort: a lost write only means the next start waits for the probe again.
 */
export function fileCache(dir: string, write?: (file: string, text: string) => Promise<void>): SilentGatewayCache {
  const file = new BackgroundJsonFile(path.join(dir, PORTMAP_CACHE_FILE), write)
  let known: string | null | undefined // undefined: not read yet
  return {
    get: () => {
      if (known !== undefined) return known
      try {
        const v = (JSON.parse(fs.readFileSync(file.file, 'utf8')) as { silentGateway?: unknown }).silentGateway
        known = typeof v === 'string' ? v : null
      } catch {
        known = null
      }
      return known
    },
    set: (gateway) => {
      known = gateway
      file.save({ silentGateway: gateway })
    }
  }
}

/** No cache: every start waits for the probe. */
export const noCache: SilentGatewayCache = { get: () => null, set: () => undefined }
