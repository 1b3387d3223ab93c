// UPnP IGD texts (src/portmap/upnp.ts): the SSDP search byte for byte, and what Debian's
// miniupnpd 2.3.1 answered in the NAT lab (fixtures/, captured): its SSDP answer, device
// description and SOAP answers; other routers' shapes (IGD:1, PPP, prefixes, URLBase);
// URLs that lead away from the gateway refused; junk and adversarial input.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { encodeSoapRequest, encodeSsdpSearch, findWanService, gatewayUrl, parseSoapResponse, parseSsdpAnswer, xmlUnescape } from '../../../src/portmap/upnp.js'
import { prng, randBuf } from '../helpers.js'

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')
const ROOT_DESC = fs.readFileSync(path.join(FIXTURES, 'miniupnpd-2.3.1-rootDesc.xml'), 'utf8')
const CAPTURED = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'miniupnpd-2.3.1-upnp.json'), 'utf8')) as {
  ssdp: string
  soap: Array<{ action: string; status: number; body: string }>
}
const soap = (i: number): { action: string; status: number; body: string } => CAPTURED.soap[i]!
const IGD2 = 'urn:schemas-upnp-org:service:WANIPConnection:2'

describe('SSDP', () => {
  it('the search: a unicast M-SEARCH for an IGD, CRLF lines, MX 1', () => {
    expect(encodeSsdpSearch().toString('latin1')).toBe(
      'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMAN: "ssdp:discover"\r\nMX: 1\r\n\r\n'
    )
  })

  it("miniupnpd's answer gives its description's URL", () => {
    expect(parseSsdpAnswer(CAPTURED.ssdp)).toEqual({ location: 'http://10.1.0.1:36623/rootDesc.xml', st: 'urn:schemas-upnp-org:device:InternetGatewayDevice:1' })
    // Header names in any case, LF line ends, a WAN service as the target.
    expect(parseSsdpAnswer('HTTP/1.1 200 OK\nst: urn:schemas-upnp-org:service:WANPPPConnection:1\nLocation:  http://192.168.1.1/igd.xml \n\n')).toEqual({
      location: 'http://192.168.1.1/igd.xml',
      st: 'urn:schemas-upnp-org:service:WANPPPConnection:1'
    })
  })

  it('not an IGD answer: another device, a NOTIFY, an error, no LOCATION, junk → null', () => {
    for (const text of [
      'HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:MediaServer:1\r\nLOCATION: http://10.1.0.1/d.xml\r\n\r\n',
      'NOTIFY * HTTP/1.1\r\nNT: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.1.0.1/d.xml\r\n\r\n',
      'HTTP/1.1 404 Not Found\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.1.0.1/d.xml\r\n\r\n',
      'HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n',
      '',
      '\u0000\u0001garbage'
    ]) {
      expect(parseSsdpAnswer(text), JSON.stringify(text)).toBeNull()
    }
  })
})

describe('gatewayUrl: only the gateway, by plain HTTP', () => {
  it('absolute and relative URLs at the gateway give its port and path', () => {
    expect(gatewayUrl('http://10.1.0.1:36623/rootDesc.xml', '10.1.0.1')).toEqual({ port: 36623, path: '/rootDesc.xml' })
    expect(gatewayUrl('http://10.1.0.1/ctl?x=1', '10.1.0.1')).toEqual({ port: 80, path: '/ctl?x=1' })
    expect(gatewayUrl('/ctl/IPConn', '10.1.0.1', 'http://10.1.0.1:36623/rootDesc.xml')).toEqual({ port: 36623, path: '/ctl/IPConn' })
    expect(gatewayUrl('ctl/IPConn', '10.1.0.1', 'http://10.1.0.1:5000/igd/')).toEqual({ port: 5000, path: '/igd/ctl/IPConn' })
  })

  it('refused: another host, a name, HTTPS, credentials, another host by base or by "//", not a URL', () => {
    const gw = '10.1.0.1'
    for (const [url, base] of [
      ['http://10.1.0.66:36623/rootDesc.xml'],
      ['http://198.18.0.2/rootDesc.xml'],
      ['http://router.lan:36623/rootDesc.xml'],
      ['https://10.1.0.1/rootDesc.xml'],
      ['http://admin:pw@10.1.0.1/rootDesc.xml'],
      ['file:///etc/passwd'],
      ['/ctl', 'http://10.1.0.66:80/'],
      ['//10.1.0.66/ctl', 'http://10.1.0.1:80/'],
      ['http://10.1.0.1.evil.example/ctl'],
      ['not a url'],
      ['/ctl', 'not a base']
    ] as Array<[string, string?]>) {
      expect(gatewayUrl(url, gw, base), `${url} (base ${base})`).toBeNull()
    }
  })
})

describe('device description', () => {
  it("miniupnpd's (IGD:2): WANIPConnection:2 and its control URL, three devices deep", () => {
    expect(findWanService(ROOT_DESC)).toEqual({ serviceType: IGD2, controlUrl: '/ctl/IPConn', urlBase: null })
  })

  it('an IGD:1 on PPPoE with prefixes, attributes, whitespace, entities and a URLBase; WANIPConnection preferred to WANPPPConnection', () => {
    const xml = `<?xml version="1.0"?>
<d:root xmlns:d="urn:schemas-upnp-org:device-1-0">
  <d:URLBase>http://192.168.1.1:5000/</d:URLBase>
  <d:device><d:serviceList>
    <d:service><d:serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</d:serviceType>
      <d:controlURL> /upnp/control/WANPPPConn1?a=1&amp;b=2 </d:controlURL></d:service>
    <d:service id="x">
      <d:serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</d:serviceType>
      <d:SCPDURL>/scpd.xml</d:SCPDURL>
      <d:controlURL>/upnp/control/WANIPConn1</d:controlURL>
    </d:service>
  </d:serviceList></d:device>
</d:root>`
    expect(findWanService(xml)).toEqual({ serviceType: 'urn:schemas-upnp-org:service:WANIPConnection:1', controlUrl: '/upnp/control/WANIPConn1', urlBase: 'http://192.168.1.1:5000/' })
    const ppp = xml.replace(/<d:service id="x">[\s\S]*?<\/d:service>/, '')
    expect(findWanService(ppp)).toMatchObject({ serviceType: 'urn:schemas-upnp-org:service:WANPPPConnection:1', controlUrl: '/upnp/control/WANPPPConn1?a=1&b=2' })
  })

  it('no port-mapping service, or one without a control URL → null', () => {
    expect(findWanService(ROOT_DESC.replace('WANIPConnection:2', 'WANIPConnection:9'))).toBeNull()
    expect(findWanService(ROOT_DESC.replace('<controlURL>/ctl/IPConn</controlURL>', ''))).toBeNull()
    expect(findWanService('')).toBeNull()
  })

  it('junk and truncated descriptions never throw, and a 64 KiB adversarial one is read in one pass', () => {
    const rand = prng(17)
    for (let i = 0; i < 300; i++) {
      const cut = ROOT_DESC.slice(0, Math.floor(rand() * ROOT_DESC.length))
      expect(() => findWanService(cut)).not.toThrow()
      expect(() => findWanService(randBuf(rand, 200).toString('latin1'))).not.toThrow()
    }
    for (const evil of ['<service>'.repeat(7000), `<${'a'.repeat(65_000)}`, '<service><serviceType>'.repeat(3000), '<'.repeat(65_536)]) {
      const t0 = performance.now()
      expect(findWanService(evil)).toBeNull()
      expect(performance.now() - t0).toBeLessThan(1_000) // quadratic scans take minutes here
    }
  })

  it('XML entities: named and numeric; unknown ones left alone', () => {
    expect(xmlUnescape('a&lt;b&gt;&amp;&quot;&apos;&#65;&#x42;&foo;&#0;')).toBe('a<b>&"\'AB&foo;&#0;')
  })
})

describe('SOAP', () => {
  it('AddAnyPortMapping: the headers and the envelope, arguments in the spec\'s order, values escaped', () => {
    const r = encodeSoapRequest(IGD2, { action: 'AddAnyPortMapping', externalPort: 41641, protocol: 'udp', internalPort: 41641, internalClient: '10.1.0.2', leaseS: 7200 })
    expect(r.headers).toEqual({ 'Content-Type': 'text/xml; charset="utf-8"', SOAPAction: `"${IGD2}#AddAnyPortMapping"` })
    expect(r.body).toBe(
      '<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">' +
        `<s:Body><u:AddAnyPortMapping xmlns:u="${IGD2}">` +
        '<NewRemoteHost></NewRemoteHost><NewExternalPort>41641</NewExternalPort><NewProtocol>UDP</NewProtocol><NewInternalPort>41641</NewInternalPort>' +
        '<NewInternalClient>10.1.0.2</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>natd</NewPortMappingDescription><NewLeaseDuration>7200</NewLeaseDuration>' +
        '</u:AddAnyPortMapping></s:Body></s:Envelope>\r\n'
    )
    expect(encodeSoapRequest(IGD2, { action: 'AddPortMapping', externalPort: 1, protocol: 'tcp', internalPort: 2, internalClient: '<&>', leaseS: 0 }).body).toContain('<NewInternalClient>&lt;&amp;&gt;</NewInternalClient>')
  })

  it('the other actions: GetExternalIPAddress without arguments; DeletePortMapping and GetSpecificPortMappingEntry with the key only', () => {
    expect(encodeSoapRequest(IGD2, { action: 'GetExternalIPAddress' }).body).toContain(`<u:GetExternalIPAddress xmlns:u="${IGD2}"></u:GetExternalIPAddress>`)
    for (const action of ['DeletePortMapping', 'GetSpecificPortMappingEntry'] as const) {
      const r = encodeSoapRequest(IGD2, { action, externalPort: 8080, protocol: 'tcp' })
      expect(r.body).toContain(`<u:${action} xmlns:u="${IGD2}"><NewRemoteHost></NewRemoteHost><NewExternalPort>8080</NewExternalPort><NewProtocol>TCP</NewProtocol></u:${action}>`)
      expect(r.headers.SOAPAction).toBe(`"${IGD2}#${action}"`)
    }
  })

  it("miniupnpd's answers: the external address, the reserved port, an entry, and answers without arguments (one self-closed)", () => {
    expect(parseSoapResponse(soap(0).status, soap(0).body, 'GetExternalIPAddress', ['NewExternalIPAddress'])).toEqual({ ok: true, values: { NewExternalIPAddress: '198.18.1.2' } })
    expect(parseSoapResponse(soap(1).status, soap(1).body, 'AddAnyPortMapping', ['NewReservedPort'])).toEqual({ ok: true, values: { NewReservedPort: '41641' } })
    expect(soap(3).body).toContain('<u:AddPortMappingResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2"/>')
    expect(parseSoapResponse(soap(3).status, soap(3).body, 'AddPortMapping', [])).toEqual({ ok: true, values: {} })
    expect(parseSoapResponse(soap(4).status, soap(4).body, 'GetSpecificPortMappingEntry', ['NewInternalPort', 'NewInternalClient'])).toEqual({
      ok: true,
      values: { NewInternalPort: '41643', NewInternalClient: '10.1.0.2' }
    })
    expect(parseSoapResponse(soap(6).status, soap(6).body, 'DeletePortMapping', [])).toEqual({ ok: true, values: {} })
  })

  it("miniupnpd's refusals: ConflictInMappingEntry (718) and NoSuchEntryInArray (714)", () => {
    expect(parseSoapResponse(soap(5).status, soap(5).body, 'AddPortMapping', [])).toEqual({ ok: false, errorCode: 718, description: 'ConflictInMappingEntry' })
    expect(parseSoapResponse(soap(7).status, soap(7).body, 'GetSpecificPortMappingEntry', ['NewInternalPort'])).toEqual({ ok: false, errorCode: 714, description: 'NoSuchEntryInArray' })
  })

  it('a 200 without the action\'s answer or an argument, and a 500 that is not a UPnPError, are failures', () => {
    expect(parseSoapResponse(200, '<html>hello</html>', 'DeletePortMapping', [])).toMatchObject({ ok: false, errorCode: 0 })
    expect(parseSoapResponse(200, soap(1).body, 'AddAnyPortMapping', ['NewReservedPort', 'NewOther'])).toMatchObject({ ok: false, errorCode: 0 })
    expect(parseSoapResponse(200, soap(0).body, 'AddAnyPortMapping', ['NewReservedPort'])).toMatchObject({ ok: false }) // another action's answer
    expect(parseSoapResponse(500, 'Internal error', 'AddPortMapping', [])).toEqual({ ok: false, errorCode: 0, description: 'HTTP 500' })
    expect(parseSoapResponse(401, '', 'AddPortMapping', [])).toEqual({ ok: false, errorCode: 0, description: 'HTTP 401' })
  })
})
