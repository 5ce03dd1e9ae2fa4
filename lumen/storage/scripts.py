"""Lua scripts: every multi-key state change of the queue and the vector store, atomic in Redis.

Item states: queued -> processing (worker + deadline in one step) -> done, or back to queued
with a retry count, or errors after the retry limit; an errored item can be queued again. A
completion is accepted only while the item is still in processing, so a reset or a delete is
never undone by a late worker.

Every key a script touches arrives in KEYS, built by `lumen.keys.Keys`; no key name is made
in Lua. Deadline members (`user NUL item`) are values, not keys.

Idempotency: each script gives the same answer when it runs twice, which is what happens when
redis-py resends a call whose reply was lost (a dropped connection, a Redis restart):

- Scripts wrapped in `_memo` take `KEYS[1]` = a reply key unique to the call and `ARGV[1]` =
  its TTL in seconds. The first run stores its answer there; a resend returns it unchanged.
- COMMIT_VECTORS answers from state: every item done with exactly this call's vector bytes is
  in its reply, whichever run committed it, so a retried commit (a new call) still tells the
  index mirror about every item.
- ENQUEUE also recognises its own items from state (the content hash already maps to the same
  item name), so a new call with the same items never calls them duplicates.
- RESET and ASSIGN reach the same state and answer on a second run by themselves.
"""


def _memo(body: str) -> str:
    """Wrap `body` (a Lua chunk ending in `return`) so its answer is remembered per call."""
    return f"""
local memo = redis.call('GET', KEYS[1])
if memo then return cjson.decode(memo) end
local function run()
{body}
end
local out = run()
redis.call('SET', KEYS[1], cjson.encode(out), 'EX', ARGV[1])
return out
"""


# KEYS: reply, queue, meta, sha, active, pdftext, usage, errors, retries
# ARGV: ttl, user, (item, sha, meta_json, text, size)*
# Returns {queued, {new item, existing item}*}. An item whose content hash already maps to
# the same name is this call's own (queued). One whose hash maps to an errored item requeues
# that item with a fresh retry budget: the existing name is queued, the new one a duplicate.
ENQUEUE = _memo("""
local queued, dups, pushed = {}, {}, false
local added_bytes, added_items = 0, 0
for i = 3, #ARGV, 5 do
  local item, sha, meta, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = redis.call('HGET', KEYS[4], sha)
  if existing and redis.call('HEXISTS', KEYS[8], existing) == 1 then
    redis.call('HDEL', KEYS[8], existing)
    redis.call('HDEL', KEYS[9], existing)
    redis.call('RPUSH', KEYS[2], existing)
    pushed = true
    table.insert(queued, existing)
    if existing ~= item then
      table.insert(dups, item)
      table.insert(dups, existing)
    end
  elseif existing == item then
    table.insert(queued, item)
  elseif existing then
    table.insert(dups, item)
    table.insert(dups, existing)
  else
    redis.call('HSET', KEYS[4], sha, item)
    redis.call('HSET', KEYS[3], item, meta)
    if text ~= '' then redis.call('HSET', KEYS[6], item, text) end
    redis.call('RPUSH', KEYS[2], item)
    pushed = true
    added_bytes = added_bytes + tonumber(ARGV[i + 4])
    added_items = added_items + 1
    table.insert(queued, item)
  end
end
if added_items > 0 then
  redis.call('HINCRBY', KEYS[7], 'bytes', added_bytes)
  redis.call('HINCRBY', KEYS[7], 'items', added_items)
end
if pushed then redis.call('SADD', KEYS[5], ARGV[2]) end
return {queued, dups}
""")

# KEYS: reply, queue, processing, deadline, active   ARGV: ttl, user, n, worker, deadline
CLAIM = _memo("""
local items = {}
for _ = 1, tonumber(ARGV[3]) do
  local item = redis.call('LPOP', KEYS[2])
  if not item then break end
  redis.call('HSET', KEYS[3], item, ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2] .. '\\0' .. item)
  table.insert(items, item)
end
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[5], ARGV[2]) end
return items
""")

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

# One user's failed or timed-out items leave processing: requeued with a retry count, or
# errored past the limit. With `now` (a sweep of expired deadlines) an item is taken only while
# its deadline is still due, so a sweep racing a fresh claim never requeues it twice.
# KEYS: reply, processing, deadline, retries, errors, queue, active
# ARGV: ttl, user, max_retries, now or '', (item, reason)*
# Returns a state per item: 'queued', 'error', 'gone' (not processing) or 'live' (not due).
RETRY = _memo("""
local user, max_retries, now = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 2 do
  local item, reason = ARGV[i], ARGV[i + 1]
  local member = user .. '\\0' .. item
  local state
  if redis.call('HEXISTS', KEYS[2], item) == 0 then
    if now then redis.call('ZREM', KEYS[3], member) end
    state = 'gone'
  else
    local due = redis.call('ZSCORE', KEYS[3], member)
    if now and (not due or tonumber(due) > now) then
      state = 'live'
    else
      redis.call('HDEL', KEYS[2], item)
      redis.call('ZREM', KEYS[3], member)
      local n = redis.call('HINCRBY', KEYS[4], item, 1)
      if n > max_retries then
        redis.call('HSET', KEYS[5], item, reason)
        state = 'error'
      else
        redis.call('LPUSH', KEYS[6], item)
        redis.call('SADD', KEYS[7], user)
        state = 'queued'
      end
    end
  end
  table.insert(out, state)
end
return out
""")

# Errored items back to the end of the queue with a fresh retry budget.
# KEYS: reply, errors, retries, queue, active   ARGV: ttl, user, item* (none: every error)
# Returns the items requeued.
RETRY_FAILED = _memo("""
local items = {}
for i = 3, #ARGV do table.insert(items, ARGV[i]) end
if #items == 0 then items = redis.call('HKEYS', KEYS[2]) end
local moved = {}
for _, item in ipairs(items) do
  if redis.call('HDEL', KEYS[2], item) == 1 then
    redis.call('HDEL', KEYS[3], item)
    redis.call('RPUSH', KEYS[4], item)
    table.insert(moved, item)
  end
end
if #moved > 0 then redis.call('SADD', KEYS[5], ARGV[2]) end
return moved
""")

# Remove a queued item (`queued`) or an errored one (`error`) with its records and usage.
# KEYS: reply, queue, meta, sha, retries, errors, pdftext, caption, usage
# ARGV: ttl, item, 'queued' or 'error'   Returns how many were removed (0 or more).
DELETE = _memo("""
local item = ARGV[2]
local n
if ARGV[3] == 'queued' then
  n = redis.call('LREM', KEYS[2], 0, item)
else
  n = redis.call('HDEL', KEYS[6], item)
end
if n > 0 then
  local meta = redis.call('HGET', KEYS[3], item)
  if meta then
    local m = cjson.decode(meta)
    local sha = m['sha256']
    if sha and redis.call('HGET', KEYS[4], sha) == item then redis.call('HDEL', KEYS[4], sha) end
    local size = tonumber(m['size']) or 0
    if redis.call('HINCRBY', KEYS[9], 'bytes', 0 - size) < 0 then
      redis.call('HSET', KEYS[9], 'bytes', 0)
    end
    if redis.call('HINCRBY', KEYS[9], 'items', -1) < 0 then
      redis.call('HSET', KEYS[9], 'items', 0)
    end
  end
  for k = 3, 8 do if k ~= 4 then redis.call('HDEL', KEYS[k], item) end end
end
return n
""")

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
# Returns {status, {item, id}*}: status 'ok' or 'model_mismatch:<stored model>'. The pairs
# name every item done with this call's vector: committed now, or already done with the same
# bytes (an earlier run of this commit whose reply was lost).
COMMIT_VECTORS = """
local info = redis.call('HMGET', KEYS[9], 'model', 'dim')
if info[1] and (info[1] ~= ARGV[3] or info[2] ~= ARGV[4]) then
  return {'model_mismatch:' .. info[1] .. '/' .. info[2], {}}
end
local committed, fresh = {}, 0
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
    fresh = fresh + 1
    table.insert(committed, item)
    table.insert(committed, id)
  elseif redis.call('ZSCORE', KEYS[3], item) then
    local id = redis.call('HGET', KEYS[6], item)
    if id and redis.call('HGET', KEYS[5], id) == ARGV[i + 1] then
      table.insert(committed, item)
      table.insert(committed, id)
    end
  end
end
if fresh > 0 and not info[1] then
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
