/**
 * The path preference an introduction asks for (INTRODUCE / INTRODUCTION's `via`, and
 * the local API's `open` params). The order is the wire encoding (rendezvous.ts writes
 * the index): append, never reorder.
 *
 * 'direct' = UDP and TCP, never the relay: only the agent asks for it, when a relayed
 * tunnel looks for a direct path (path upgrades); the API and natctl do not offer it.
 */
export const VIAS = ['auto', 'udp', 'tcp', 'relay', 'direct'] as const
export type Via = (typeof VIAS)[number]
