"""Lua scripts: every multi-key state change of the queue and the vector store, atomic in Redis.

Item states: queued -> processing (worker + deadline in one step) -> done, or back to queued
with a retry count, or errors after the retry limit. A completion is accepted only while the
item is still in processing, so a reset or a delete is never undone by a late worker.
"""

# KEYS: queue, meta, sha, active, pdftext   ARGV: user, then (item, sha, meta_json, text)*
ENQUEUE = """
local queued, dups = {}, {}
for i = 2, #ARGV, 4 do
  local item, sha, meta, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = redis.call('HGET', KEYS[3], sha)
  if existing then
    table.insert(dups, item)
    table.insert(dups, existing)
  else
    redis.call('HSET', KEYS[3], sha, item)
    redis.call('HSET', KEYS[2], item, meta)
    if text ~= '' then redis.call('HSET', KEYS[5], item, text) end
    redis.call('RPUSH', KEYS[1], item)
    table.insert(queued, item)
  end
end
if #queued > 0 then redis.call('SADD', KEYS[4], ARGV[1]) end
return {queued, dups}
"""

# KEYS: queue, processing, deadline, active   ARGV: user, n, worker, deadline
CLAIM = """
local items = {}
for _ = 1, tonumber(ARGV[2]) do
  local item = redis.call('LPOP', KEYS[1])
  if not item then break end
  redis.call('HSET', KEYS[2], item, ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1] .. '\\0' .. item)
  table.insert(items, item)
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[4], ARGV[1]) end
return items
"""

# KEYS: processing   ARGV: worker, item*
ASSIGN = """
local n = 0
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]); n = n + 1
  end
end
return n
"""

# Shared by FAIL and REQUEUE_EXPIRED: take `item` out of processing and requeue or error it.
_RETRY = """
local function retry(ns, user, item, reason, max_retries)
  local processing = ns .. ':processing:' .. user
  if redis.call('HEXISTS', processing, item) == 0 then return 'gone' end
  redis.call('HDEL', processing, item)
  redis.call('ZREM', ns .. ':deadline', user .. '\\0' .. item)
  local n = redis.call('HINCRBY', ns .. ':retries:' .. user, item, 1)
  if n > max_retries then
    redis.call('HSET', ns .. ':errors:' .. user, item, reason)
    return 'error'
  end
  redis.call('LPUSH', ns .. ':queue:' .. user, item)
  redis.call('SADD', ns .. ':active', user)
  return 'queued'
end
"""

# ARGV: ns, max_retries, (user, item, reason)*
FAIL = (
    _RETRY
    + """
local out = {}
for i = 3, #ARGV, 3 do
  table.insert(out, retry(ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[2])))
end
return out
"""
)

# ARGV: ns, max_retries, now, limit, reason
REQUEUE_EXPIRED = (
    _RETRY
    + """
local due = redis.call('ZRANGEBYSCORE', ARGV[1] .. ':deadline', '-inf', ARGV[3],
                       'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, member in ipairs(due) do
  local sep = string.find(member, '\\0', 1, true)
  local user, item = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local state = retry(ARGV[1], user, item, ARGV[5], tonumber(ARGV[2]))
  if state == 'gone' then redis.call('ZREM', ARGV[1] .. ':deadline', member) end
  table.insert(out, {user, item, state})
end
return out
"""
)

# KEYS: queue, meta, sha, retries, errors, pdftext, caption   ARGV: item
DELETE_QUEUED = """
local n = redis.call('LREM', KEYS[1], 0, ARGV[1])
if n > 0 then
  local meta = redis.call('HGET', KEYS[2], ARGV[1])
  if meta then
    local sha = cjson.decode(meta)['sha256']
    if sha and redis.call('HGET', KEYS[3], sha) == ARGV[1] then redis.call('HDEL', KEYS[3], sha) end
  end
  for k = 2, 7 do if k ~= 3 then redis.call('HDEL', KEYS[k], ARGV[1]) end end
end
return n
"""

# KEYS: processing, deadline, active, user keys...   ARGV: user
RESET = """
for _, item in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('ZREM', KEYS[2], ARGV[1] .. '\\0' .. item)
end
redis.call('SREM', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# KEYS: processing, deadline, done, errors, vec, vid, vitem, vseq, vinfo, caption
# ARGV: user, now, model_id, dim, (item, vector_bytes, caption)*
# Returns {status, {item, id}*}: status 'ok' or 'model_mismatch:<stored model>'.
COMMIT_VECTORS = """
local info = redis.call('HMGET', KEYS[9], 'model', 'dim')
if info[1] and (info[1] ~= ARGV[3] or info[2] ~= ARGV[4]) then
  return {'model_mismatch:' .. info[1] .. '/' .. info[2], {}}
end
local committed = {}
for i = 5, #ARGV, 3 do
  local item = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], item) == 1 then
    redis.call('HDEL', KEYS[1], item)
    redis.call('ZREM', KEYS[2], ARGV[1] .. '\\0' .. item)
    local id = redis.call('HGET', KEYS[6], item)
    if not id then
      id = tostring(redis.call('INCR', KEYS[8]))
      redis.call('HSET', KEYS[6], item, id)
      redis.call('HSET', KEYS[7], id, item)
    end
    redis.call('HSET', KEYS[5], id, ARGV[i + 1])
    redis.call('HSET', KEYS[10], item, ARGV[i + 2])
    redis.call('ZADD', KEYS[3], ARGV[2], item)
    redis.call('HDEL', KEYS[4], item)
    table.insert(committed, item)
    table.insert(committed, id)
  end
end
if #committed > 0 and not info[1] then
  redis.call('HSET', KEYS[9], 'model', ARGV[3], 'dim', ARGV[4])
end
return {'ok', committed}
"""

# KEYS: vitem, caption   ARGV: vector id*   Returns {item or false, caption or false}*.
DESCRIBE = """
local out = {}
for i = 1, #ARGV do
  local item = redis.call('HGET', KEYS[1], ARGV[i])
  local caption = item and redis.call('HGET', KEYS[2], item) or false
  table.insert(out, {item, caption})
end
return out
"""
