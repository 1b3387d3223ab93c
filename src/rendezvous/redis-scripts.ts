/**
 * The shared registry's data in Redis (redis-cluster.ts runs it, redis-names.ts reads the
 * names): its keys, and the Lua scripts that change several of them in one atomic step.
 * The *_MS constants named here are redis-cluster.ts's.
 *
 * Keys (`natd:` prefix; `K` = a public key in hex, `I` = an instance ID):
 *   natd:instance:I   string  the address agents dial for this instance's relay; PX
 *                             INSTANCE_TTL_MS, refreshed every BEAT_MS on a connection of
 *                             its own (see BEAT_MS): an instance that dies is gone from
 *                             Redis within the TTL, and only then (Redis' own clock)
 *   natd:instances    set     every instance that has started and not been reaped
 *   natd:gone:I       string  set by BEAT when I finds it was taken for gone; kept until I
 *                             has queued its records for rewriting (a lost reply loses nothing)
 *   natd:agents:I     set     K of the agents I holds online
 *   natd:peer:K       hash    inst, rec (the peer record as JSON); PX RECORD_TTL_MS,
 *                             refreshed in batches (a safety net: records are deleted
 *                             when the agent goes offline, or by the reaper)
 *   natd:name:NAME    hash    key (K), boundAt, lastSeenAt: the binding, for good
 *   natd:keyname:K    string  the name K holds
 * Channels: natd:to:I (introductions for I's agents), natd:events (peer up/down).
 */

/** Every key and channel of the shared registry starts with this (redis-names.ts reads the names too). */
export const KEY_PREFIX = 'natd:'
const P = KEY_PREFIX

/**
 * CLAIM: KEYS name, keyname(K); ARGV K, now, ttlMs, name.
 * Binds the name to K unless another key holds it, is online (its record exists) or was
 * seen within the TTL. K's previous name is released (one name per key).
 */
export const CLAIM_SCRIPT = `
local held = redis.call('HGET', KEYS[1], 'key')
local now = tonumber(ARGV[2])
if held and held ~= ARGV[1] then
  local seen = tonumber(redis.call('HGET', KEYS[1], 'lastSeenAt') or '0')
  if redis.call('EXISTS', '${P}peer:' .. held) == 1 or now - seen <= tonumber(ARGV[3]) then return held end
  redis.call('DEL', '${P}keyname:' .. held)
end
local old = redis.call('GET', KEYS[2])
if old and old ~= ARGV[4] then redis.call('DEL', '${P}name:' .. old) end
if held == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lastSeenAt', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'key', ARGV[1], 'boundAt', ARGV[2], 'lastSeenAt', ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[4])
return ''
`

/**
 * WRITE: KEYS peer(K), agents(I); ARGV I, rec, since, ttlMs. The record of the newest
 * registration wins (`since`: when it registered), whatever order the batches of two
 * instances reach Redis in: an agent that failed over is not claimed back by its old
 * instance's late batch. 1 written, 0 a newer registration holds it.
 */
export const WRITE_SCRIPT = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'since') or '0')
if cur > tonumber(ARGV[3]) and redis.call('HGET', KEYS[1], 'inst') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'inst', ARGV[1], 'rec', ARGV[2], 'since', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
`

/** RELEASE: KEYS name; ARGV K. 1 released, 0 unbound, -1 another key holds it. */
export const RELEASE_SCRIPT = `
local held = redis.call('HGET', KEYS[1], 'key')
if not held then return 0 end
if held ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], '${P}keyname:' .. held)
return 1
`

/** DROP: KEYS peer(K), agents(I), name; ARGV I, K, now. Deletes K's record only if I still holds it. */
export const DROP_SCRIPT = `
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'inst') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[3], 'key') == ARGV[2] then redis.call('HSET', KEYS[3], 'lastSeenAt', ARGV[3]) end
return 1
`

/**
 * REAP: KEYS instance(I), peer(K); ARGV I. A dead instance's record of K: deleted, returned.
 * Only while I's key is absent, judged inside Redis (its TTL clock, not a reaper's slow
 * reply): once I is back, the rest of its records are left to it.
 */
export const REAP_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local rec = redis.call('HGET', KEYS[2], 'rec')
if redis.call('HGET', KEYS[2], 'inst') ~= ARGV[1] then return false end
redis.call('DEL', KEYS[2])
return rec
`

/**
 * BURY: KEYS instance(I), agents(I), instances, reap lock; ARGV I, events… The end of a
 * reaping, if I is still gone: its set and membership removed, the down events published
 * in the same atomic step (so an "up" I publishes when it comes back always follows them).
 * 0 when I came back meanwhile: nothing removed or told, the lock freed.
 */
export const BURY_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
for i = 2, #ARGV do redis.call('PUBLISH', '${P}events', ARGV[i]) end
return 1
`

/**
 * BEAT: KEYS instance(I), instances, gone(I); ARGV I, advertise, ttlMs, goneTtlMs.
 * Refreshes I's key. When I had been taken for gone (its key had expired, or a reaper
 * removed it from the set) it says so in gone(I), which stays until I deletes it after
 * queueing its records again: a beat whose reply is lost (timeout) loses nothing.
 * 1 while gone(I) is set.
 */
export const BEAT_SCRIPT = `
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
local added = redis.call('SADD', KEYS[2], ARGV[1])
if not old or added == 1 then redis.call('SET', KEYS[3], '1', 'PX', ARGV[4]) end
return redis.call('EXISTS', KEYS[3])
`
