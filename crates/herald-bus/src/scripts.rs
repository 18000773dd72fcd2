//! Lua scripts for the updates that must be atomic. Each touches the keys of one hash tag only
//! (a channel's, an app's, or the node registry), so it runs on one shard in Redis Cluster.
//! Scripts read Redis's own clock (`TIME`) wherever time decides something, so nodes with
//! skewed clocks agree. Sent with `EVALSHA` (loaded again after a Redis restart).
//!
//! KEYS of the channel scripts: members, sockets, user_sockets, subs.

use std::sync::LazyLock;

use fred::types::scripts::Script;

/// A script that starts with `now`, Redis's clock in ms.
fn with_now(body: &str) -> Script {
    Script::from_lua(format!(
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n{body}"
    ))
}

/// KEYS: the channel's subs hash. ARGV: topic, payload, deadline (Redis ms), this node, 1 when
/// this node listens to the topic itself, 1 for sharded pub/sub.
///
/// Refuses (`{-1, 0}`) when Redis runs it after the deadline: a publish delayed by a stall or
/// replayed after a reconnect is dropped, never delivered late. Otherwise publishes and returns
/// `{receivers, expected}`: how many subscriber connections got it, and how many nodes should
/// have (those with subscribers of the channel, besides this one, plus this one if it
/// listens). Fewer receivers than expected means a node with subscribers missed it.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
if now > tonumber(ARGV[3]) then return {-1, 0} end
local n
if ARGV[6] == '1' then
  n = redis.call('SPUBLISH', ARGV[1], ARGV[2])
else
  n = redis.call('PUBLISH', ARGV[1], ARGV[2])
end
local expected = tonumber(ARGV[5])
local subs = redis.call('HGETALL', KEYS[1])
for i = 1, #subs, 2 do
  if subs[i] ~= ARGV[4] and tonumber(subs[i + 1]) > 0 then expected = expected + 1 end
end
return {n, expected}
"#,
    )
});

/// [`PUBLISH`] for a history channel, which also keeps the event in the channel's stream.
/// KEYS: subs, the stream, its meta. ARGV: topic, envelope head, frame, deadline, this node,
/// listening, sharded, size, ttl (ms), an epoch for a new stream, meta ttl (ms).
///
/// The offset comes from the meta (a new stream gets the epoch given and starts at 1), the
/// frame gets its `position`, the stream keeps it (capped at `size`, expiring with `ttl`), and
/// the envelope is published with the position between head and frame — one call, so the
/// order in the stream is the order of delivery. Returns {receivers, expected, offset, epoch},
/// or {-1, 0, 0, ""} past the deadline (no offset used).
pub static PUBLISH_HISTORY: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
if now > tonumber(ARGV[4]) then return {-1, 0, 0, ''} end
local epoch = redis.call('HGET', KEYS[3], 'epoch')
if not epoch then
  epoch = ARGV[10]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[3], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[3], 'offset', 1)
local frame = string.sub(ARGV[3], 1, -2) .. ',"position":{"epoch":"' .. epoch .. '","offset":' .. offset .. '}}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[8], offset .. '-0', 't', now, 'f', frame)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('PEXPIRE', KEYS[3], ARGV[11])
local pos = epoch .. ':' .. offset
local payload = ARGV[2] .. string.char(#pos) .. pos .. frame
local n
if ARGV[7] == '1' then
  n = redis.call('SPUBLISH', ARGV[1], payload)
else
  n = redis.call('PUBLISH', ARGV[1], payload)
end
local expected = tonumber(ARGV[6])
local subs = redis.call('HGETALL', KEYS[1])
for i = 1, #subs, 2 do
  if subs[i] ~= ARGV[5] and tonumber(subs[i + 1]) > 0 then expected = expected + 1 end
end
return {n, expected, offset, epoch}
"#,
    )
});

/// KEYS: a history channel's stream and meta. ARGV: after (offset), limit, ttl (ms), 1 to
/// create a missing stream, an epoch for it. Returns {} without a stream, else {epoch, last
/// offset, then offset and frame of each event after `after` (at most `limit`, oldest first,
/// none older than `ttl`)}. A created stream starts at offset 0 and lives for `ttl` unless
/// events follow.
pub static HISTORY_READ: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  if ARGV[4] ~= '1' then return {} end
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local out = {epoch, tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')}
local limit = tonumber(ARGV[2])
if limit > 0 then
  local oldest = now - tonumber(ARGV[3])
  local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', limit)
  for _, e in ipairs(entries) do
    local fields = e[2]
    if tonumber(fields[2]) > oldest then
      table.insert(out, tonumber(string.sub(e[1], 1, string.find(e[1], '-') - 1)))
      table.insert(out, fields[4])
    end
  end
end
return out
"#,
    )
});

/// ARGV: user_id, user_info, node|socket, max_members.
/// Returns {1|0 first socket of the user, members as a flat list} or {-1} when full.
pub static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if n == 1 then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[3], ARGV[1])
    return {-1, {}}
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
local first = 0
if n == 1 then first = 1 end
return {first, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// ARGV: user_id, node|socket. Returns 1 when that was the user's last socket.
pub static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// Makes the channel's memberships held by one node exactly the given ones (the node's own
/// record is the truth): removes that node's sockets not listed, adds listed ones missing.
/// ARGV: "node|", then (node|socket, user_id, user_info) triples.
/// Returns {users whose last socket was removed, users whose first socket was added}.
pub static PRESENCE_SYNC: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local want = {}
for i = 2, #ARGV, 3 do want[ARGV[i]] = true end
local removed, added = {}, {}
local prefix = ARGV[1]
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local field, uid = all[i], all[i + 1]
  if string.sub(field, 1, #prefix) == prefix and not want[field] then
    redis.call('HDEL', KEYS[2], field)
    local n = redis.call('HINCRBY', KEYS[3], uid, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[3], uid)
      redis.call('HDEL', KEYS[1], uid)
      table.insert(removed, uid)
    end
  end
end
for i = 2, #ARGV, 3 do
  local field, uid = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[2], field) == 0 then
    local n = redis.call('HINCRBY', KEYS[3], uid, 1)
    if n == 1 then
      redis.call('HSET', KEYS[1], uid, ARGV[i + 2])
      table.insert(added, uid)
    end
    redis.call('HSET', KEYS[2], field, uid)
  end
end
return {removed, added}
"#,
    )
});

/// ARGV: dead node. Removes the node's sockets and count from the channel; returns "1" when
/// that emptied the channel (else "0"), then the user ids whose last socket was there.
pub static REAP_CHANNEL: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local function total()
  local t = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do t = t + tonumber(v) end
  return t
end
local before = total()
local removed = {}
local prefix = ARGV[1] .. '|'
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local field, uid = all[i], all[i + 1]
  if string.sub(field, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[2], field)
    local n = redis.call('HINCRBY', KEYS[3], uid, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[3], uid)
      redis.call('HDEL', KEYS[1], uid)
      table.insert(removed, uid)
    end
  end
end
redis.call('HDEL', KEYS[4], ARGV[1])
local vacated = '0'
if before > 0 and total() == 0 then vacated = '1' end
table.insert(removed, 1, vacated)
return removed
"#,
    )
});

/// KEYS: the channel's subs hash. ARGV: node, count. Sets this node's count and returns the
/// channel's total before and after, so the one node that empties or fills a channel knows.
pub static SUBS_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local before = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do before = before + tonumber(v) end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], n) else redis.call('HDEL', KEYS[1], ARGV[1]) end
return {before, before - old + n}
"#,
    )
});

/// KEYS: app connections hash. ARGV: node, limit. Counts a connection if the app is under its
/// limit; returns 1 when counted.
pub static CONNECTION_OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"#,
    )
});

/// KEYS: the node registry. ARGV: node, lease (ms). Renews the node's lease on Redis's clock;
/// returns {previous expiry or -1 when there was none, now}. A previous expiry in the past (or
/// none) means the lease lapsed: other nodes may have removed this node's state.
pub static LEASE_RENEW: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if prev then return {tonumber(prev), now} end
return {-1, now}
"#,
    )
});

/// Redis's clock in ms (to measure this node's offset from it).
pub static NOW_MS: LazyLock<Script> = LazyLock::new(|| with_now("return now"));

/// KEYS: a role's key. ARGV: node, ttl (ms). Takes the role if free, keeps it if this node
/// holds it; returns 1 when this node holds it.
pub static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// KEYS: the node registry. Returns the nodes whose lease expired (on Redis's clock).
pub static EXPIRED_NODES: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"#,
    )
});

/// KEYS: the node registry. ARGV: node, 1 to also remove the lease. Returns 1 when the node's
/// lease is (still) expired, removing it when asked; 0 when it was renewed or is gone.
pub static LEASE_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now then return 0 end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"#,
    )
});

/// KEYS: an app's cache hash, expiry sorted set and byte total. ARGV: channel, frame, ttl (ms),
/// the app's limit in bytes. Drops expired entries (a bounded number per call), then keeps
/// the frame if the app's total stays within the limit. Returns {1, total} when stored,
/// {0, total} when the limit refused it. The keys live as long as the newest entry.
pub static CACHE_PUT: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, ch in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  total = total - redis.call('HSTRLEN', KEYS[1], ch)
  redis.call('HDEL', KEYS[1], ch)
  redis.call('ZREM', KEYS[2], ch)
end
if total < 0 then total = 0 end
local new_total = total - redis.call('HSTRLEN', KEYS[1], ARGV[1]) + string.len(ARGV[2])
local ttl = tonumber(ARGV[3])
if new_total > tonumber(ARGV[4]) then
  redis.call('SET', KEYS[3], total)
  return {0, total}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('SET', KEYS[3], new_total)
for i = 1, 3 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, new_total}
"#,
    )
});

/// KEYS: an app's cache hash and expiry sorted set. ARGV: channel. Returns {frame, ms left}, or
/// {} when there is none or it expired.
pub static CACHE_GET: LazyLock<Script> = LazyLock::new(|| {
    with_now(
        r#"
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) <= now then return {} end
local frame = redis.call('HGET', KEYS[1], ARGV[1])
if not frame then return {} end
return {frame, tonumber(expiry) - now}
"#,
    )
});
