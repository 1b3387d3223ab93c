/**
 * The HTTP transport of the UPnP client (src/portmap/upnp-client.ts): one request to the
 * default gateway's address, never to any other host (the client passes a port and a
 * path only), no redirects followed, no keep-alive, and bounded: the whole exchange within
 * `timeoutMs`, the answer's body within `maxBytes` (an over-long answer is cut off and
 * fails the request), headers within Node's 16 KiB default.
 */
import http from 'node:http'
import type { HttpAnswer, HttpRequest } from '../portmap/upnp-client.js'

export function gatewayHttp(gateway: string): (req: HttpRequest) => Promise<HttpAnswer> {
  return (req) =>
    new Promise<HttpAnswer>((resolve, reject) => {
      const signal = req.signal ? AbortSignal.any([req.signal, AbortSignal.timeout(req.timeoutMs)]) : AbortSignal.timeout(req.timeoutMs)
      const body = req.body === undefined ? undefined : Buffer.from(req.body, 'utf8')
      const r = http.request(
        {
          host: gateway,
          port: req.port,
          path: req.path,
          method: req.method,
          headers: { ...req.headers, ...(body ? { 'Content-Length': String(body.length) } : {}) },
          agent: false,
          signal
        },
        (res) => {
          const declared = Number(res.headers['content-length'] ?? 0)
          if (declared > req.maxBytes) {
            res.destroy()
            return reject(new Error(`the answer is larger than ${req.maxBytes} bytes`))
          }
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (d: Buffer) => {
            size += d.length
            if (size > req.maxBytes) {
              res.destroy()
              reject(new Error(`the answer is larger than ${req.maxBytes} bytes`))
            } else chunks.push(d)
          })
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }))
          res.on('error', reject)
        }
      )
      r.on('error', (err) => {
        if (req.signal?.aborted) reject(new Error('aborted', { cause: err }))
        else reject(signal.aborted ? new Error(`no answer within ${req.timeoutMs} ms`, { cause: err }) : err)
      })
      r.end(body)
    })
}
