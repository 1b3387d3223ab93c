// UpnpClient (src/portmap/upnp-client.ts) against a fake IGD (fake-igd.ts, miniupnpd's
// captured texts): discovery, answers from anyone but the gateway and URLs away from it
// ignored, IGD:2's AddAnyPortMapping, IGD:1's conflict and permanent-lease retries,
// refusals, silence, the mapping checked and removed.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { UPNP_HTTP_TIMEOUT_MS, UPNP_SSDP_FIRST_WAIT_MS, UPNP_SSDP_TRIES, UPNP_UNMAP_TIMEOUT_MS } from '../../../src/portmap/upnp-client.js'
import { fakeIgd, GATEWAY, HTTP_PORT, ROOT_DESC, SSDP_ANSWER } from './fake-igd.js'

afterEach(() => vi.useRealTimers())

const SERVICE = { serviceType: 'urn:schemas-upnp-org:service:WANIPConnection:2', control: { port: HTTP_PORT, path: '/ctl/IPConn' }, externalIp: '198.18.1.2' }

describe('UpnpClient.discover', () => {
  it("finds miniupnpd's WANIPConnection:2, its control URL and the external address", async () => {
    const igd = fakeIgd()
    expect(await igd.client.discover()).toEqual(SERVICE)
    expect(igd.calls).toEqual([`GET :${HTTP_PORT}/rootDesc.xml`, `POST :${HTTP_PORT}/ctl/IPConn`, 'GetExternalIPAddress'])
  })

  it('silence: null after UPNP_SSDP_TRIES searches, 250 + 500 ms', async () => {
    vi.useFakeTimers()
    const igd = fakeIgd({ ssdp: false })
    let done = false
    const p = igd.client.discover().then((r) => ((done = true), r))
    await vi.advanceTimersByTimeAsync(UPNP_SSDP_FIRST_WAIT_MS * (2 ** UPNP_SSDP_TRIES - 1) - 1)
    expect(done).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    expect(await p).toBeNull()
    expect(igd.state.ssdpSent).toBe(2 * UPNP_SSDP_TRIES)
    // Each try: to the gateway, then to SSDP's group; nothing more.
    expect(igd.state.ssdpTo).toEqual(Array.from({ length: UPNP_SSDP_TRIES }, () => ['gateway', 'multicast']).flat())
    expect(igd.calls).toEqual([])
  })

  it('a gateway that answers only searches sent to the group is found; one that answers only unicast still is', async () => {
    const multicastOnly = fakeIgd({ ssdpAnswers: 'multicast' })
    expect(await multicastOnly.client.discover()).toEqual(SERVICE)
    expect(multicastOnly.state.ssdpTo).toEqual(['gateway', 'multicast'])
    expect(await fakeIgd({ ssdpAnswers: 'gateway' }).client.discover()).toEqual(SERVICE)
  })

  it("the group's answer from another device (a TV, a printer) is not read, however gateway-like; the gateway's, within the tries, is", async () => {
    vi.useFakeTimers()
    const igd = fakeIgd({ ssdp: false })
    const p = igd.client.discover()
    // Another device on the link answers the multicast search, naming the gateway's URL.
    igd.client.onSsdpMessage(Buffer.from(SSDP_ANSWER, 'latin1'), { host: '10.1.0.77', port: 1900 })
    await vi.advanceTimersByTimeAsync(UPNP_SSDP_FIRST_WAIT_MS + 10)
    expect(igd.calls).toEqual([])
    expect(igd.state.ssdpTo).toEqual(['gateway', 'multicast', 'gateway', 'multicast'])
    // A delayed answer (a device applying MX) to the first search, during the second try's wait.
    igd.client.onSsdpMessage(Buffer.from(SSDP_ANSWER, 'latin1'), { host: GATEWAY, port: 1900 })
    await vi.advanceTimersByTimeAsync(10)
    expect(await p).toEqual(SERVICE)
    expect(igd.state.ssdpSent).toBe(4)
  })

  it('an answer from another LAN host, or one whose LOCATION leads away from the gateway, is not followed', async () => {
    vi.useFakeTimers()
    const igd = fakeIgd({ ssdp: false })
    const p = igd.client.discover()
    const answer = (location: string): Buffer => Buffer.from(SSDP_ANSWER.replace(/LOCATION: \S+/, `LOCATION: ${location}`), 'latin1')
    igd.client.onSsdpMessage(Buffer.from(SSDP_ANSWER, 'latin1'), { host: '10.1.0.66', port: 1900 }) // not the gateway
    igd.client.onSsdpMessage(answer('http://10.1.0.66:80/rootDesc.xml'), { host: GATEWAY, port: 1900 }) // forged source, another host
    igd.client.onSsdpMessage(answer('http://router.lan/rootDesc.xml'), { host: GATEWAY, port: 1900 }) // a name
    igd.client.onSsdpMessage(Buffer.alloc(4096, 0x41), { host: GATEWAY, port: 1900 }) // over-long
    await vi.advanceTimersByTimeAsync(10)
    expect(igd.calls).toEqual([])
    igd.client.onSsdpMessage(Buffer.from(SSDP_ANSWER, 'latin1'), { host: GATEWAY, port: 49152 }) // the gateway, from any port
    await vi.advanceTimersByTimeAsync(10)
    expect(await p).toEqual(SERVICE)
  })

  it('a control URL away from the gateway, no WAN service, no external address, an unreachable description → null', async () => {
    const away = fakeIgd({ description: ROOT_DESC.replace('<controlURL>/ctl/IPConn', '<controlURL>http://198.18.0.2/ctl/IPConn') })
    expect(await away.client.discover()).toBeNull()
    expect(away.calls.filter((c) => c.startsWith('POST'))).toEqual([])
    const base = fakeIgd({ description: ROOT_DESC.replace('<specVersion>', '<URLBase>http://10.1.0.66:36623/</URLBase><specVersion>') })
    expect(await base.client.discover()).toBeNull()
    expect(base.calls.filter((c) => c.startsWith('POST'))).toEqual([])
    expect(await fakeIgd({ description: '<root><device></device></root>' }).client.discover()).toBeNull()
    expect(await fakeIgd({ externalIp: '0.0.0.0' }).client.discover()).toBeNull()
    expect(await fakeIgd({ externalIp: '' }).client.discover()).toBeNull()
    expect(await fakeIgd({ location: `http://${GATEWAY}:1/rootDesc.xml` }).client.discover()).toBeNull()
  })
})

describe('UpnpClient.map', () => {
  it('IGD:2: AddAnyPortMapping for our port from our address, the port the router reserved; held, then removed', async () => {
    const igd = fakeIgd({ taken: [41641] })
    await igd.client.discover()
    const m = await igd.client.map('udp', 41641, { lifetimeS: 7200 })
    expect(m).toEqual({ via: 'upnp', protocol: 'udp', internalPort: 41641, external: { host: '198.18.1.2', port: 41642 }, lifetimeS: 7200, nonce: null, epoch: 0 })
    expect(igd.mappings.get('UDP/41642')).toEqual({ internalPort: 41641, client: '10.1.0.2', leaseS: 7200 })
    expect(igd.calls.filter((c) => !/^(GET|POST) /.test(c))).toEqual(['GetExternalIPAddress', 'GetExternalIPAddress', 'AddAnyPortMapping'])
    expect(await igd.client.isMapped(m)).toBe(true)
    expect(igd.state.lastTimeoutMs).toBe(UPNP_HTTP_TIMEOUT_MS)
    await igd.client.unmap(m)
    expect(igd.state.lastTimeoutMs).toBe(UPNP_UNMAP_TIMEOUT_MS) // within natd's shutdown deadline
    expect(igd.mappings.size).toBe(0)
    expect(await igd.client.isMapped(m)).toBe(false)
    await igd.client.unmap(m) // already gone: not an error
  })

  it('map() discovers first when needed; a renewal asks for the port it holds', async () => {
    const igd = fakeIgd()
    const m = await igd.client.map('tcp', 41641, { lifetimeS: 7200, externalPort: 50000 })
    expect(m.external).toEqual({ host: '198.18.1.2', port: 50000 })
    expect(igd.mappings.has('TCP/50000')).toBe(true)
  })

  it('IGD:1: AddPortMapping; after a conflict (718) once more on a random port; a router with permanent leases only (725) gets lease 0', async () => {
    const igd = fakeIgd({ version: 1, taken: [41641], permanentOnly: true })
    await igd.client.discover()
    expect(igd.client.found?.serviceType).toBe('urn:schemas-upnp-org:service:WANIPConnection:1')
    const m = await igd.client.map('udp', 41641, { lifetimeS: 7200 })
    expect(m.external.port).toBe(1024 + Math.floor(0.5 * (65536 - 1024)))
    expect([...igd.mappings.values()]).toEqual([{ internalPort: 41641, client: '10.1.0.2', leaseS: 0 }])
    expect(igd.calls.filter((c) => c === 'AddPortMapping')).toHaveLength(3)
  })

  it('a refusal is UNSUPPORTED_PATH naming the UPnP error; a router that stopped answering is TIMEOUT', async () => {
    const igd = fakeIgd({ refuse: 606 })
    await igd.client.discover()
    await expect(igd.client.map('udp', 41641, { lifetimeS: 7200 })).rejects.toMatchObject({ code: 'UNSUPPORTED_PATH', message: expect.stringMatching(/AddAnyPortMapping: Refused \(606\)/) })
    const gone = fakeIgd()
    await gone.client.discover()
    gone.restart()
    await expect(gone.client.map('udp', 41641, { lifetimeS: 7200 })).rejects.toMatchObject({ code: 'TIMEOUT' })
    expect(await gone.client.isMapped({ via: 'upnp', protocol: 'udp', internalPort: 41641, external: { host: '198.18.1.2', port: 41641 }, lifetimeS: 1, nonce: null, epoch: 0 })).toBeNull()
    await expect(fakeIgd({ ssdp: false }).client.map('udp', 1, { lifetimeS: 1 })).rejects.toMatchObject({ code: 'TIMEOUT' })
  })

  it('isMapped: a mapping the router now gives another client or port is not ours', async () => {
    const igd = fakeIgd()
    const m = await igd.client.map('udp', 41641, { lifetimeS: 7200 })
    igd.mappings.set('UDP/41641', { internalPort: 41641, client: '10.1.0.9', leaseS: 7200 })
    expect(await igd.client.isMapped(m)).toBe(false)
    igd.mappings.set('UDP/41641', { internalPort: 9, client: '10.1.0.2', leaseS: 7200 })
    expect(await igd.client.isMapped(m)).toBe(false)
  })
})
