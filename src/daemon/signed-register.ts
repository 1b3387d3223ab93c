/**
 * The REGISTER an agent sends its rendezvous server (rendezvous-client.ts): signed with
 * the agent's key over the server's nonce and time (proof of key possession, so no one
 * takes over a name or spoofs an endpoint), with the network secret's proof when the
 * server is started with one.
 */
import { secretProof, sign, type KeyPair } from '../protocol/identity.js'
import type { Endpoint } from '../protocol/endpoint.js'
import { encodeRegister, encodeRegisterUnsigned, type NatVerdict } from '../protocol/rendezvous.js'

export interface Registrant {
  keyPair: KeyPair
  name: string
  tcpPort: number
  /** The network secret, or null when the server has none. */
  secretKey: Buffer | null
  nat: NatVerdict
  lan: Endpoint[]
}

/** REGISTER for the server's `nonce` and `serverTime`, signed by `who`. */
export function signedRegister(who: Registrant, nonce: Uint8Array, serverTime: number): Buffer {
  const publicKey = who.keyPair.publicKey
  const unsigned = encodeRegisterUnsigned({
    nonce,
    time: serverTime,
    publicKey,
    name: who.name,
    tcpPort: who.tcpPort,
    nat: who.nat,
    lan: who.lan,
    proof: who.secretKey ? secretProof(who.secretKey, nonce, publicKey) : new Uint8Array(0)
  })
  return encodeRegister(unsigned, sign(unsigned, who.keyPair.secretKey))
}
