/**
 * Who hears of whose comings and goings on a big server (more than BROADCAST_MAX_AGENTS
 * connected): agents introduced to each other, and our agents introduced to agents of
 * other instances (by the remote key). Bounded: MAX_CONTACTS per agent, the oldest
 * forgotten first; entries of agents the registry forgot are pruned by the server's sweep.
 */
import type { Registry, RegRef } from './registry.js'

/** Contacts remembered per agent for the events above. */
export const MAX_CONTACTS = 32

export class Contacts {
  /** An agent here → the agents here it was introduced to. */
  private readonly local = new Map<RegRef, RegRef[]>()
  /** A remote agent's key (hex) → our agents introduced to it. */
  private readonly remote = new Map<string, RegRef[]>()

  /** `a` hears of `b` from now on. */
  add(a: RegRef, b: RegRef): void {
    remember(this.local, a, b)
  }

  /** Our agent `ref` hears of the remote agent `remoteKey` from now on. */
  addRemote(ref: RegRef, remoteKey: Uint8Array): void {
    remember(this.remote, hex(remoteKey), ref)
  }

  /** The agents here that hear of `ref`. */
  of(ref: RegRef): readonly RegRef[] {
    return this.local.get(ref) ?? []
  }

  /** Our agents that hear of the remote agent `remoteKey`. */
  ofRemote(remoteKey: Uint8Array): readonly RegRef[] {
    return this.remote.get(hex(remoteKey)) ?? []
  }

  /** Forgets the agents the registry no longer has (the server's sweep, once a minute). */
  prune(registry: Pick<Registry, 'has'>): void {
    for (const ref of this.local.keys()) if (!registry.has(ref)) this.local.delete(ref)
    for (const [k, refs] of this.remote) {
      const kept = refs.filter((ref) => registry.has(ref))
      if (kept.length) this.remote.set(k, kept)
      else this.remote.delete(k)
    }
  }
}

function remember<K>(map: Map<K, RegRef[]>, key: K, ref: RegRef): void {
  const list = map.get(key) ?? []
  if (list.includes(ref)) return
  list.push(ref)
  if (list.length > MAX_CONTACTS) list.shift()
  map.set(key, list)
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex')
}
