// The rendezvous server's state directory default (src/rendezvous/server-identity.ts).
import { describe, expect, it } from 'vitest'
import { defaultServerStateDir } from '../../../src/rendezvous/server-identity.js'

describe('defaultServerStateDir', () => {
  it("is systemd's StateDirectory=, else /var/lib as root, else the XDG state directory", () => {
    expect(defaultServerStateDir({ STATE_DIRECTORY: '/var/lib/natd-rendezvous:/other' }, 1000)).toBe('/var/lib/natd-rendezvous')
    expect(defaultServerStateDir({}, 0)).toBe('/var/lib/natd-rendezvous')
    expect(defaultServerStateDir({ XDG_STATE_HOME: '/home/u/.state' }, 1000)).toBe('/home/u/.state/natd-rendezvous')
    expect(defaultServerStateDir({}, 1000)).toMatch(/\/\.local\/state\/natd-rendezvous$/)
  })
})
