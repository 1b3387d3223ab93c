// The UPnP client's HTTP transport (src/daemon/gateway-http.ts) against a real HTTP server
// on loopback standing in for the gateway: the answer returned as is, redirects not
// followed, over-long answers (declared or streamed) and silent servers refused within
// their bounds.
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { gatewayHttp } from '../../../src/daemon/gateway-http.js'

let server: http.Server | null = null
afterEach(async () => {
  server?.closeAllConnections()
  await new Promise((resolve) => server?.close(resolve) ?? resolve(undefined))
  server = null
})

async function serve(handler: http.RequestListener): Promise<number> {
  server = http.createServer(handler)
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

const fetch = gatewayHttp('127.0.0.1')

describe('gatewayHttp', () => {
  it('POSTs the body with its length and returns status and body; a redirect is returned, not followed', async () => {
    const seen: Array<{ method?: string; url?: string; length?: string; action?: string; body: string }> = []
    const port = await serve((req, res) => {
      let body = ''
      req.on('data', (d: Buffer) => (body += d.toString()))
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, length: req.headers['content-length'], action: req.headers.soapaction as string, body })
        if (req.url === '/moved') res.writeHead(302, { Location: 'http://198.18.0.2/elsewhere' }).end()
        else res.writeHead(500, { 'Content-Type': 'text/xml' }).end('<errorCode>718</errorCode>')
      })
    })
    const r = await fetch({ port, path: '/ctl/IPConn', method: 'POST', headers: { SOAPAction: '"x#y"' }, body: '<a>é</a>', maxBytes: 1024, timeoutMs: 5_000 })
    expect(r).toEqual({ status: 500, body: '<errorCode>718</errorCode>' })
    expect(seen[0]).toEqual({ method: 'POST', url: '/ctl/IPConn', length: '9', action: '"x#y"', body: '<a>é</a>' })
    expect(await fetch({ port, path: '/moved', method: 'GET', maxBytes: 1024, timeoutMs: 5_000 })).toEqual({ status: 302, body: '' })
    expect(seen).toHaveLength(2)
  })

  it('an answer over maxBytes fails, whether its length is declared or it streams on', async () => {
    const port = await serve((req, res) => {
      if (req.url === '/declared') return void res.writeHead(200, { 'Content-Length': '100000' }).end(Buffer.alloc(100_000, 0x61))
      res.writeHead(200) // chunked, no length
      const more = (): void => void (res.write(Buffer.alloc(8192, 0x62)) && setImmediate(more))
      more()
    })
    await expect(fetch({ port, path: '/declared', method: 'GET', maxBytes: 65_536, timeoutMs: 5_000 })).rejects.toThrow(/larger than 65536 bytes/)
    await expect(fetch({ port, path: '/stream', method: 'GET', maxBytes: 65_536, timeoutMs: 5_000 })).rejects.toThrow(/larger than 65536 bytes/)
  })

  it('a server that never answers fails at the timeout; a caller abort ends it too', async () => {
    const port = await serve(() => undefined)
    await expect(fetch({ port, path: '/', method: 'GET', maxBytes: 1024, timeoutMs: 200 })).rejects.toThrow(/no answer within 200 ms/)
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 50)
    await expect(fetch({ port, path: '/', method: 'GET', maxBytes: 1024, timeoutMs: 10_000, signal: ac.signal })).rejects.toThrow(/aborted/)
  })
})
