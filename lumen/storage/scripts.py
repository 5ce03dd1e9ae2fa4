"""Lua scripts: every multi-key state change of the queue and the vector store, atomic in Redis.

Item states: queued -> processing (worker + deadline in one step) -> done, or back to queued
with a retry count, or errors after the retry limit; an errored item can be queued again. A
completion is accepted only while the item is still in processing, so a reset or a delete is
never undone by a late worker.

Every key a script touches arrives in KEYS, built by `lumen.keys.Keys`; no key name is made
in Lua, and every script's keys are one user's (one hash tag, one Redis Cluster slot). The
cross-user indexes (`active:<shard>`, `deadlines:<shard>`, no hash tag) are kept by the
callers, outside the scripts (see `lumen.storage.queue`), so no script spans two slots.

Vectors live in fixed-size blocks (`vblk:{u}:{b}`, `VECTOR_BLOCK_IDS` ids each): id `i` at
offset `(i % per) * dim * 4` of block `i // per`. The caller declares the blocks a commit may
write; a commit that would need an undeclared one changes nothing and answers `blocks`, and
the caller calls again with them. A block grows in steps of the allocator's size classes,
each one exact allocation made in C (a SETRANGE past the end would grow it greedily:
doubling, or by 1 MB at a time), zero-padded; a full block is exactly its 4095 vectors.

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


# KEYS: reply, queue, meta, sha, pdftext, usage, errors, retries
# ARGV: ttl, (item, sha, meta_json, text, size)*
# Returns {queued, {new item, existing item}*}. An item whose content hash already maps to
# the same name is this call's own (queued). One whose hash maps to an errored item requeues
# that item with a fresh retry budget: the existing name is queued, the new one a duplicate.
ENQUEUE = _memo("""
local queued, dups = {}, {}
local added_bytes, added_items = 0, 0
for i = 2, #ARGV, 5 do
  local item, sha, meta, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = redis.call('HGET', KEYS[4], sha)
  if existing and redis.call('HEXISTS', KEYS[7], existing) == 1 then
    redis.call('HDEL', KEYS[7], existing)
    redis.call('HDEL', KEYS[8], existing)
    redis.call('RPUSH', KEYS[2], existing)
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
    if text ~= '' then redis.call('HSET', KEYS[5], item, text) end
    redis.call('RPUSH', KEYS[2], item)
    added_bytes = added_bytes + tonumber(ARGV[i + 4])
    added_items = added_items + 1
    table.insert(queued, item)
  end
end
if added_items > 0 then
  redis.call('HINCRBY', KEYS[6], 'bytes', added_bytes)
  redis.call('HINCRBY', KEYS[6], 'items', added_items)
end
return {queued, dups}
""")

# KEYS: reply, queue, processing, deadline   ARGV: ttl, n, worker, deadline
# Returns {items claimed, items left queued}.
CLAIM = _memo("""
local items = {}
for _ = 1, tonumber(ARGV[2]) do
  local item = redis.call('LPOP', KEYS[2])
  if not item then break end
  redis.call('HSET', KEYS[3], item, ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], item)
  table.insert(items, item)
end
return {items, redis.call('LLEN', KEYS[2])}
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
# KEYS: reply, processing, deadline, retries, errors, queue
# ARGV: ttl, max_retries, now or '', (item, reason)*
# Returns a state per item: 'queued', 'error', 'gone' (not processing) or 'live' (not due).
RETRY = _memo("""
local max_retries, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local item, reason = ARGV[i], ARGV[i + 1]
  local state
  if redis.call('HEXISTS', KEYS[2], item) == 0 then
    if now then redis.call('ZREM', KEYS[3], item) end
    state = 'gone'
  else
    local due = redis.call('ZSCORE', KEYS[3], item)
    if now and (not due or tonumber(due) > now) then
      state = 'live'
    else
      redis.call('HDEL', KEYS[2], item)
      redis.call('ZREM', KEYS[3], item)
      local n = redis.call('HINCRBY', KEYS[4], item, 1)
      if n > max_retries then
        redis.call('HSET', KEYS[5], item, reason)
        state = 'error'
      else
        redis.call('LPUSH', KEYS[6], item)
        state = 'queued'
      end
    end
  end
  table.insert(out, state)
end
return out
""")

# Errored items back to the end of the queue with a fresh retry budget.
# KEYS: reply, errors, retries, queue   ARGV: ttl, item* (none: every error)
# Returns the items requeued.
RETRY_FAILED = _memo("""
local items = {}
for i = 2, #ARGV do table.insert(items, ARGV[i]) end
if #items == 0 then items = redis.call('HKEYS', KEYS[2]) end
local moved = {}
for _, item in ipairs(items) do
  if redis.call('HDEL', KEYS[2], item) == 1 then
    redis.call('HDEL', KEYS[3], item)
    redis.call('RPUSH', KEYS[4], item)
    table.insert(moved, item)
  end
end
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

# KEYS: vseq, user keys and vector blocks...   ARGV: the last vector id the blocks cover
# Returns 1, or 0 (nothing changed) when more ids were issued than the blocks cover: the
# caller declares the blocks again and calls again.
RESET = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > tonumber(ARGV[1]) then return 0 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# Shared by COMMIT_VECTORS and MIGRATE_VECTORS: block lookups, reads and writes.
# `blocks` maps a block number to its declared key; `row` is the bytes of one vector.
_BLOCKS = """
local function block_of(id) return math.floor(id / per) end
local function offset_of(id) return (id % per) * row end
-- the longest string of at least n bytes whose allocation (10 bytes of header and end
-- added) is exactly one jemalloc size class: 4 classes per power of two
local function fitted(n)
  local m = n + 10
  if m <= 64 then return math.ceil(m / 16) * 16 - 10 end
  local p = 64
  while p * 2 < m do p = p * 2 end
  local step = p / 4
  return math.ceil(m / step) * step - 10
end
local function stored(id)
  local legacy = redis.call('HGET', legacy_key, id)
  if legacy then return legacy end
  local key = blocks[block_of(id)]
  local off = offset_of(id)
  return redis.call('GETRANGE', key, off, off + row - 1)
end
-- read once per call: a block's length (kept as it grows) and whether legacy rows exist
local has_legacy = redis.call('EXISTS', legacy_key) == 1
local lengths = {}
local function store(id, blob)
  local key = blocks[block_of(id)]
  local off = offset_of(id)
  local len = lengths[key] or redis.call('STRLEN', key)
  if off + row > len then
    -- grow to a fitted size in one exact allocation: a SETRANGE past the end of a string
    -- grows it greedily (doubling, or by 1 MB), up to a quarter or more wasted. A SETRANGE
    -- on a missing key allocates exactly (zeroed), and BITOP OR writes an exact result.
    local size = math.max(off + row, math.min(fitted(off + row), per * row))
    if len == 0 then
      redis.call('SETRANGE', key, size - 1, '\\0')
    else
      redis.call('DEL', scratch)
      redis.call('SETRANGE', scratch, size - 1, '\\0')
      redis.call('BITOP', 'OR', key, key, scratch)
      redis.call('DEL', scratch)
    end
    len = size
  end
  lengths[key] = len
  redis.call('SETRANGE', key, off, blob)
  if has_legacy then redis.call('HDEL', legacy_key, id) end
end
-- one variadic command for many fields or members (in slices: Lua's unpack is bounded)
local function many(cmd, key, args)
  for s = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, s, math.min(s + 3999, #args)))
  end
end
"""

# KEYS: processing, deadline, done, errors, vid, vitem, vseq, vinfo, caption, vec (legacy),
#       vscratch, ocr, block*
# ARGV: now, model_id, dim, ids per block, block count, block number*,
#       (item, bytes, caption, ocr record or '')*
# Returns {status, {item, id}*}: status 'ok', 'blocks' (a block it needs is not declared:
# nothing changed) or 'model_mismatch:<stored model>'. The pairs name every item done with
# this call's vector: committed now, or already done with the same bytes (an earlier run of
# this commit whose reply was lost).
COMMIT_VECTORS = (
    """
local info = redis.call('HMGET', KEYS[8], 'model', 'dim')
if info[1] and (info[1] ~= ARGV[2] or info[2] ~= ARGV[3]) then
  return {'model_mismatch:' .. info[1] .. '/' .. info[2], {}}
end
local row, per, nblocks = 4 * tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local legacy_key, scratch = KEYS[10], KEYS[11]
local blocks = {}
for j = 1, nblocks do blocks[tonumber(ARGV[5 + j])] = KEYS[12 + j] end
local first = 6 + nblocks
"""
    + _BLOCKS
    + """
-- first pass: each item's state and id, and every block this call reads or writes must
-- be declared. A repeat of an item within the call is answered as its first row leaves it.
local seq = tonumber(redis.call('GET', KEYS[7]) or '0')
local state, ids = {}, {}
for i = first, #ARGV, 4 do
  local item = ARGV[i]
  if not state[item] then
    local id = redis.call('HGET', KEYS[5], item)
    if redis.call('HEXISTS', KEYS[1], item) == 1 then
      state[item] = 'fresh'
      if id then id = tonumber(id) else seq = seq + 1; id = seq; state[item] = 'new' end
    elseif id and redis.call('ZSCORE', KEYS[3], item) then
      state[item] = 'done'
      id = tonumber(id)
    else
      state[item] = 'gone'
      id = nil
    end
    ids[item] = id
    if id and not blocks[block_of(id)] then return {'blocks', {}} end
  end
end
-- second pass: writes, each kind as one variadic command for the whole call
local committed, fresh = {}, 0
local gone, vids, vitems, captions, ocr_set, ocr_del, done = {}, {}, {}, {}, {}, {}, {}
for i = first, #ARGV, 4 do
  local item = ARGV[i]
  local st, id = state[item], ids[item]
  if st == 'fresh' or st == 'new' then
    state[item] = 'done'
    if st == 'new' then  -- the id the first pass issued it
      table.insert(vids, item); table.insert(vids, id)
      table.insert(vitems, id); table.insert(vitems, item)
    end
    table.insert(gone, item)
    store(id, ARGV[i + 1])
    table.insert(captions, item); table.insert(captions, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then
      table.insert(ocr_set, item); table.insert(ocr_set, ARGV[i + 3])
    else
      table.insert(ocr_del, item)
    end
    table.insert(done, ARGV[1]); table.insert(done, item)
    fresh = fresh + 1
    table.insert(committed, item)
    table.insert(committed, tostring(id))
  elseif st == 'done' and id and stored(id) == ARGV[i + 1] then
    table.insert(committed, item)
    table.insert(committed, tostring(id))
  end
end
if fresh > 0 then
  many('HDEL', KEYS[1], gone)
  many('ZREM', KEYS[2], gone)
  many('HDEL', KEYS[4], gone)
  many('HSET', KEYS[9], captions)
  many('ZADD', KEYS[3], done)
end
if #vids > 0 then
  many('HSET', KEYS[5], vids)
  many('HSET', KEYS[6], vitems)
  redis.call('SET', KEYS[7], seq)
end
if #ocr_set > 0 then many('HSET', KEYS[12], ocr_set) end
if #ocr_del > 0 then many('HDEL', KEYS[12], ocr_del) end
if fresh > 0 and not info[1] then
  redis.call('HSET', KEYS[8], 'model', ARGV[2], 'dim', ARGV[3])
end
return {'ok', committed}
"""
)

# Legacy vectors (the `vec` hash of id -> bytes) into blocks, a batch at a time; an id the
# hash no longer holds (a commit rewrote it into its block since) is skipped.
# KEYS: vec (legacy), vscratch, block*
# ARGV: dim, ids per block, block count, block number*, (id, bytes)*
# Returns how many moved.
MIGRATE_VECTORS = (
    """
local row, per, nblocks = 4 * tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local legacy_key, scratch = KEYS[1], KEYS[2]
local blocks = {}
for j = 1, nblocks do blocks[tonumber(ARGV[3 + j])] = KEYS[2 + j] end
"""
    + _BLOCKS
    + """
local moved = 0
for i = 4 + nblocks, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if redis.call('HEXISTS', legacy_key, ARGV[i]) == 1 then
    store(id, ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
"""
)

# A block copied into an exactly sized string (after a bulk load's SETRANGEs).
# KEYS: block   Returns 1, or 0 if absent.
COMPACT_BLOCK = """
local data = redis.call('GET', KEYS[1])
if not data then return 0 end
redis.call('SET', KEYS[1], data)
return 1
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

# A re-embedding's vectors into the user's NEXT space (`next:` keys, the same block layout),
# idempotent by item: an item keeps its id there and a rewrite overwrites its vector. Only
# items done or in processing are taken (a reset, which clears both, is never undone), and
# only while the active space holds another model (after the switch there is nothing to
# migrate, and a late write must not start a stray space).
# KEYS: done, processing, vinfo, next vid, next vitem, next vseq, next vinfo, next vec
#       (never written: no legacy layout), vscratch, caption, next block*
# ARGV: model_id, dim, ids per block, block count, block number*, (item, bytes, caption)*
# Returns {status, {item, id}*}: 'ok', 'blocks' (as COMMIT_VECTORS), 'same' (the active
# space already holds this model, or none: nothing written) or 'model_mismatch:<model>' (the
# NEXT space holds another model's vectors).
WRITE_SPACE = (
    """
local active = redis.call('HGET', KEYS[3], 'model')
if not active or active == ARGV[1] then return {'same', {}} end
local info = redis.call('HMGET', KEYS[7], 'model', 'dim')
if info[1] and (info[1] ~= ARGV[1] or info[2] ~= ARGV[2]) then
  return {'model_mismatch:' .. info[1] .. '/' .. info[2], {}}
end
local row, per, nblocks = 4 * tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local legacy_key, scratch = KEYS[8], KEYS[9]
local blocks = {}
for j = 1, nblocks do blocks[tonumber(ARGV[4 + j])] = KEYS[10 + j] end
local first = 5 + nblocks
"""
    + _BLOCKS
    + """
local function wanted(item)
  return redis.call('ZSCORE', KEYS[1], item) or redis.call('HEXISTS', KEYS[2], item) == 1
end
local seq = tonumber(redis.call('GET', KEYS[6]) or '0')
for i = first, #ARGV, 3 do
  if wanted(ARGV[i]) then
    local id = redis.call('HGET', KEYS[4], ARGV[i])
    if id then id = tonumber(id) else seq = seq + 1; id = seq end
    if not blocks[block_of(id)] then return {'blocks', {}} end
  end
end
local written = {}
for i = first, #ARGV, 3 do
  local item = ARGV[i]
  if wanted(item) then
    local id = redis.call('HGET', KEYS[4], item)
    if not id then
      id = tostring(redis.call('INCR', KEYS[6]))
      redis.call('HSET', KEYS[4], item, id)
      redis.call('HSET', KEYS[5], id, item)
    end
    store(tonumber(id), ARGV[i + 1])
    if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[10], item, ARGV[i + 2]) end
    table.insert(written, item)
    table.insert(written, id)
  end
end
if #written > 0 and not info[1] then
  redis.call('HSET', KEYS[7], 'model', ARGV[1], 'dim', ARGV[2])
end
return {'ok', written}
"""
)

# The switch: the NEXT space becomes the active one, atomically, only when it holds a vector
# of model ARGV[1] for every done item (checked here, in the same step). The active space is
# renamed to the OLD keys (ARGV[2] = '1') or deleted.
# KEYS: done, then 5 keys per space in the order vinfo, vid, vitem, vseq, vec (legacy) for
#       ACTIVE, NEXT and OLD (KEYS[2..16]), then the active blocks (ARGV[3] of them), as
#       many OLD block keys, the NEXT blocks (ARGV[4] of them) and as many active block keys
# ARGV: model_id, keep old ('1'/'0'), active block count, next block count, the last active
#       id and the last NEXT id the blocks cover
# Returns {status, n}: 'ok' (n vectors now active), 'missing' (n done items have no vector
# in NEXT yet), 'no_space' (NEXT holds no vectors of this model), 'blocks' (ids moved past
# the declared blocks: declare again).
SWITCH_SPACE = """
local A, N, O = 2, 7, 12
local info = redis.call('HGET', KEYS[N], 'model')
if info ~= ARGV[1] then return {'no_space', 0} end
if tonumber(redis.call('GET', KEYS[A + 3]) or '0') > tonumber(ARGV[5])
  or tonumber(redis.call('GET', KEYS[N + 3]) or '0') > tonumber(ARGV[6]) then
  return {'blocks', 0}
end
local missing = 0
for _, item in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HEXISTS', KEYS[N + 1], item) == 0 then missing = missing + 1 end
end
if missing > 0 then return {'missing', missing} end
local nold, nnext = tonumber(ARGV[3]), tonumber(ARGV[4])
local keep = ARGV[2] == '1'
local function move(from, to)
  redis.call('DEL', to)
  if redis.call('EXISTS', from) == 1 then redis.call('RENAME', from, to) end
end
for j = 0, 4 do
  if keep then move(KEYS[A + j], KEYS[O + j]) elseif j ~= 3 then redis.call('DEL', KEYS[A + j]) end
end
local base = 16
for j = 1, nold do
  if keep then move(KEYS[base + j], KEYS[base + nold + j])
  else redis.call('DEL', KEYS[base + j]) end
end
for j = 0, 3 do move(KEYS[N + j], KEYS[A + j]) end
base = 16 + 2 * nold
for j = 1, nnext do move(KEYS[base + j], KEYS[base + nnext + j]) end
return {'ok', redis.call('HLEN', KEYS[A + 2])}
"""

# KEYS: any keys of one user   Deletes them all (a space given up: another model deployed).
DELETE_KEYS = """
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return #KEYS
"""
