// A fake UPnP IGD for unit tests: answers UpnpClient's SSDP search with miniupnpd's
// captured answer, serves its captured description, and keeps a table of port mappings
// behind a small SOAP handler (miniupnpd's answer shapes). Knobs make it an IGD:1, slow,
// silent, forgetful (a restart) or refusing.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { HttpAnswer, HttpRequest } from '../../../src/portmap/upnp-client.js'
import { UpnpClient, type SsdpDestination } from '../../../src/portmap/upnp-client.js'

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')
export const ROOT_DESC = fs.readFileSync(path.join(FIXTURES, 'miniupnpd-2.3.1-rootDesc.xml'), 'utf8')
export const SSDP_ANSWER = (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'miniupnpd-2.3.1-upnp.json'), 'utf8')) as { ssdp: string }).ssdp
export const GATEWAY = '10.1.0.1'
export const HTTP_PORT = 36623

export interface FakeIgdOptions {
  /** 1: WANIPConnection:1 (AddPortMapping only). Default 2. */
  version?: 1 | 2
  /** Answer SSDP at all (default true), and after how many ms. */
  ssdp?: boolean
  /** Which searches it answers: both (default), only those to the group (some routers), or only unicast ones. */
  ssdpAnswers?: 'both' | SsdpDestination
  ssdpDelayMs?: number
  externalIp?: string
  /** An UPnP error code for every Add*PortMapping. */
  refuse?: number
  /** Only leases of 0 (error 725 otherwise). */
  permanentOnly?: boolean
  /** External ports held by another client (718 for AddPortMapping; skipped by AddAnyPortMapping). */
  taken?: number[]
  /** The SSDP answer's LOCATION, or the description text, replaced. */
  location?: string
  description?: string
}

export interface Mapping {
  internalPort: number
  client: string
  leaseS: number
}

export function fakeIgd(o: FakeIgdOptions = {}) {
  const mappings = new Map<string, Mapping>()
  const calls: string[] = []
  const state = { down: false, externalIp: o.externalIp ?? '198.18.1.2', ssdpSent: 0, ssdpTo: [] as SsdpDestination[], lastTimeoutMs: 0 }
  const service = `urn:schemas-upnp-org:service:WANIPConnection:${o.version ?? 2}`
  const description = o.description ?? ROOT_DESC.replace('urn:schemas-upnp-org:service:WANIPConnection:2', service)

  const arg = (body: string, name: string): string => new RegExp(`<${name}>([^<]*)</${name}>`).exec(body)?.[1] ?? ''
  const ok = (action: string, inner = ''): HttpAnswer => ({
    status: 200,
    body: `<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:${action}Response xmlns:u="${service}">${inner}</u:${action}Response></s:Body></s:Envelope>\r\n`
  })
  const fault = (code: number, text: string): HttpAnswer => ({
    status: 500,
    body: `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>${code}</errorCode><errorDescription>${text}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`
  })

  const soap = (req: HttpRequest): HttpAnswer => {
    const action = /#(\w+)"$/.exec(req.headers?.SOAPAction ?? '')?.[1] ?? ''
    const body = req.body ?? ''
    calls.push(action)
    state.lastTimeoutMs = req.timeoutMs
    if (!body.includes(`<u:${action} xmlns:u="${service}">`)) return fault(401, 'Invalid Action')
    const key = `${arg(body, 'NewProtocol')}/${arg(body, 'NewExternalPort')}`
    switch (action) {
      case 'GetExternalIPAddress':
        return ok(action, `<NewExternalIPAddress>${state.externalIp}</NewExternalIPAddress>`)
      case 'AddPortMapping':
      case 'AddAnyPortMapping': {
        if (action === 'AddAnyPortMapping' && o.version === 1) return fault(401, 'Invalid Action')
        if (o.refuse) return fault(o.refuse, 'Refused')
        const leaseS = Number(arg(body, 'NewLeaseDuration'))
        if (o.permanentOnly && leaseS !== 0) return fault(725, 'OnlyPermanentLeasesSupported')
        let port = Number(arg(body, 'NewExternalPort'))
        if (o.taken?.includes(port)) {
          if (action === 'AddPortMapping') return fault(718, 'ConflictInMappingEntry')
          while (o.taken.includes(port)) port++
        }
        mappings.set(`${arg(body, 'NewProtocol')}/${port}`, { internalPort: Number(arg(body, 'NewInternalPort')), client: arg(body, 'NewInternalClient'), leaseS })
        return action === 'AddAnyPortMapping' ? ok(action, `<NewReservedPort>${port}</NewReservedPort>`) : ok(action)
      }
      case 'GetSpecificPortMappingEntry': {
        const m = mappings.get(key)
        if (!m) return fault(714, 'NoSuchEntryInArray')
        return ok(action, `<NewInternalPort>${m.internalPort}</NewInternalPort><NewInternalClient>${m.client}</NewInternalClient><NewEnabled>1</NewEnabled>`)
      }
      case 'DeletePortMapping':
        return mappings.delete(key) ? ok(action) : fault(714, 'NoSuchEntryInArray')
    }
    return fault(401, 'Invalid Action')
  }

  const http = async (req: HttpRequest): Promise<HttpAnswer> => {
    calls.push(`${req.method} :${req.port}${req.path}`)
    if (state.down || req.port !== HTTP_PORT) throw new Error('connect ECONNREFUSED')
    if (req.method === 'GET') return req.path === '/rootDesc.xml' ? { status: 200, body: description } : { status: 404, body: '' }
    return req.path === '/ctl/IPConn' ? soap(req) : { status: 404, body: '' }
  }

  const client: UpnpClient = new UpnpClient(
    { gateway: GATEWAY, localIp: '10.1.0.2' },
    {
      sendSsdp: (_buf, to) => {
        state.ssdpSent++
        state.ssdpTo.push(to)
        if (o.ssdp === false || state.down || (o.ssdpAnswers !== undefined && o.ssdpAnswers !== 'both' && o.ssdpAnswers !== to)) return
        const answer = Buffer.from(o.location ? SSDP_ANSWER.replace(/LOCATION: \S+/, `LOCATION: ${o.location}`) : SSDP_ANSWER, 'latin1')
        setTimeout(() => client.onSsdpMessage(answer, { host: GATEWAY, port: 1900 }), o.ssdpDelayMs ?? 0)
      },
      http,
      random: () => 0.5
    }
  )
  /** The router restarts: its table is empty and it listens on another port until `up()`. */
  const restart = (): void => {
    mappings.clear()
    state.down = true
  }
  return { client, mappings, calls, state, restart, up: () => void (state.down = false) }
}
