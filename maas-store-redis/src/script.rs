//! Counter operations computed inside Redis: one script reads the counters,
//! runs the arithmetic of `maas_core::counter` on them and writes the
//! result, atomically — one round trip whatever the other replicas do, with
//! no retry when they change the same counters (which the compare-and-set
//! path of [`crate::RedisStore`] needs).
//!
//! Lua's numbers are doubles: exact for integers up to 2^53 − 1. Every
//! input is checked against that bound here (a limit of `u64::MAX`, say, is
//! not eligible), the script checks every stored number against it, and it
//! declines (`-1`) when a sum could pass it; the operation then takes the
//! compare-and-set path, whose arithmetic is Rust's own. What depends on the
//! calendar (a period's start, a refill's last boundary) and the fixed
//! windows' indexes are computed here, in Rust, from the same functions as
//! the model, and passed in.
//!
//! The script answers the states it read and the states it wrote; the
//! caller computes its answer with the model from the states read and
//! checks that the model would have written exactly what the script did.

use maas_core::Timestamp;
use maas_core::counter::{LimitOp, LimitSpec, Refill, SettleOp};

/// The largest integer a Lua number holds exactly.
pub(crate) const EXACT: u64 = (1 << 53) - 1;

/// `KEYS`: the counters, then this write's marker. `ARGV`: the mode (`R`
/// reserve: all or none; `S` settle; `T` take: written even if refused; `B`
/// spend from a balance), now (ms), the marker's life (ms), then per op
/// nine values: the counter's index in `KEYS`, its kind (`B` bucket, `S`
/// sliding, `P` period), limit, refill, window (ms), the window index (or
/// period start) of now, `a` (cost, or units reserved), `b` (units used),
/// and the window index (or period start) of the reservation. For `B`:
/// cost, whether there is a refill (1/0), the refill's last boundary (ms)
/// and amount. Answers `{status, read..., written..., versions...}`
/// (status 1 written, 0 nothing written — then no `written` —, -1
/// declined: use the exact path; states as JSON, `''` when absent;
/// versions as read). A write also sets the marker to the states read, one
/// a line, so a caller whose answer was lost computes the same answer.
pub(crate) const OPS: &str = r#"
local EXACT = 9007199254740991
local n = #KEYS - 1
local mode = ARGV[1]
local now = tonumber(ARGV[2])
local read, cur, ver = {}, {}, {}
-- A stored state; nil if a number in it may be past 2^53 (declined).
local function parse(s)
  local st = cjson.decode(s)
  for _, inner in pairs(st) do
    if type(inner) == 'table' then
      for _, v in pairs(inner) do
        if type(v) == 'number' and (v > EXACT or v < -EXACT) then return nil end
      end
    elseif type(inner) == 'number' and (inner > EXACT or inner < -EXACT) then
      return nil
    end
  end
  return st
end
for i = 1, n do
  local row = redis.call('HMGET', KEYS[i], 'v', 's')
  local s = row[2]
  ver[i] = tonumber(row[1] or '0') or 0
  read[i] = s or ''
  if s then
    local st = parse(s)
    if st == nil then return {-1} end
    cur[i] = st
  else
    cur[i] = false
  end
end

-- A state brought forward to now (the model's `take` of 0 units).
local function at(st, kind, limit, refill, width, w)
  if kind == 'B' then
    local b = st and st.Bucket
    local window, avail
    if not b then
      window, avail = w, limit
    elseif w > b.window then
      window, avail = w, b.available + refill * (w - b.window)
    else
      window, avail = b.window, b.available
    end
    if avail > limit then avail = limit end
    return {Bucket = {window = window, available = avail}}
  elseif kind == 'S' then
    local s = st and st.Sliding
    if not s then return {Sliding = {window = w, current = 0, previous = 0}} end
    if w == s.window + 1 then return {Sliding = {window = w, current = 0, previous = s.current}} end
    if w > s.window then return {Sliding = {window = w, current = 0, previous = 0}} end
    return {Sliding = {window = s.window, current = s.current, previous = s.previous}}
  else
    local p = st and st.Period
    if p and p.start >= w then return {Period = {start = p.start, used = p.used}} end
    return {Period = {start = w, used = 0}}
  end
end

-- Units in use of a brought-forward state; nil if not exactly computable.
local function used(st, kind, limit, width)
  if kind == 'B' then return limit - st.Bucket.available end
  if kind == 'P' then return st.Period.used end
  local s = st.Sliding
  if s.previous == 0 then return s.current end
  local elapsed = now - s.window * width
  if elapsed < 0 then elapsed = 0 end
  if elapsed > width then elapsed = width end
  local pr = s.previous * (width - elapsed)
  if pr > EXACT then return nil end
  local rem = math.fmod(pr, width)
  local share = (pr - rem) / width
  if rem > 0 then share = share + 1 end
  return share + s.current
end

-- Takes `cost` if it fits: the new state and whether it was taken; nil if
-- not exactly computable.
local function take(st, kind, limit, refill, width, w, cost)
  local s = at(st, kind, limit, refill, width, w)
  if kind == 'B' then
    local b = s.Bucket
    if b.available >= cost then
      b.available = b.available - cost
      return s, true
    end
    return s, false
  end
  local u = used(s, kind, limit, width)
  if u == nil then return nil end
  if u + cost > limit then return s, false end
  if kind == 'S' then s.Sliding.current = s.Sliding.current + cost else s.Period.used = s.Period.used + cost end
  return s, true
end

-- Settles `r` units reserved (in window or period `wt`) as `u` used.
local function settle(st, kind, limit, refill, width, w, r, u, wt)
  local s = at(st, kind, limit, refill, width, w)
  if kind == 'B' then
    local b = s.Bucket
    if u < r then
      if b.window == wt then
        b.available = b.available + (r - u)
        if b.available > limit then b.available = limit end
      end
    else
      b.available = math.max(0, b.available - (u - r))
    end
  elseif kind == 'S' then
    local l = s.Sliding
    if u < r then
      if wt == l.window then
        l.current = math.max(0, l.current - (r - u))
      elseif wt + 1 == l.window then
        l.previous = math.max(0, l.previous - (r - u))
      end
    else
      l.current = l.current + (u - r)
      if l.current > EXACT then return nil end
    end
  else
    local p = s.Period
    if u < r then
      if p.start == wt then p.used = math.max(0, p.used - (r - u)) end
    else
      p.used = p.used + (u - r)
      if p.used > EXACT then return nil end
    end
  end
  return s
end

local function encode(st)
  if not st then return '' end
  if st.Bucket then
    return string.format('{"Bucket":{"window":%d,"available":%d}}', st.Bucket.window, st.Bucket.available)
  elseif st.Sliding then
    local s = st.Sliding
    return string.format('{"Sliding":{"window":%d,"current":%d,"previous":%d}}', s.window, s.current, s.previous)
  elseif st.Period then
    return string.format('{"Period":{"start":%d,"used":%d}}', st.Period.start, st.Period.used)
  end
  return string.format('{"remaining":%d,"refilledAt":%d}', st.remaining, st.refilledAt)
end

local write = true
if mode == 'B' then
  local b = cur[1]
  if not b then
    write = false
  else
    local cost = tonumber(ARGV[4])
    if ARGV[5] == '1' and b.refilledAt < tonumber(ARGV[6]) then
      b.remaining = tonumber(ARGV[7])
      b.refilledAt = now
    end
    if b.remaining >= cost then b.remaining = b.remaining - cost end
  end
else
  local i = 4
  while i <= #ARGV do
    local k = tonumber(ARGV[i])
    local kind = ARGV[i + 1]
    local limit, refill, width, w = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local a, b, wt = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
    if mode == 'S' then
      local s = settle(cur[k], kind, limit, refill, width, w, a, b, wt)
      if s == nil then return {-1} end
      cur[k] = s
    else
      local s, ok = take(cur[k], kind, limit, refill, width, w, a)
      if s == nil then return {-1} end
      cur[k] = s
      if not ok and mode == 'R' then write = false end
    end
    i = i + 9
  end
end

local out = {write and 1 or 0}
for i = 1, n do out[1 + i] = read[i] end
if write then
  for i = 1, n do
    local s = encode(cur[i])
    out[1 + n + i] = s
    if s ~= '' then
      redis.call('HSET', KEYS[i], 'v', tostring(ver[i] + 1), 's', s)
    end
  end
  redis.call('SET', KEYS[n + 1], table.concat(read, '\n'), 'PX', ARGV[3])
end
for i = 1, n do out[#out + 1] = ver[i] end
return out
"#;

/// `ms` as a Lua-exact number, if it is one.
fn exact(v: u64) -> Option<u64> {
    (v <= EXACT).then_some(v)
}

fn window_index(at: Timestamp, window_ms: u64) -> i64 {
    at.as_millis()
        .div_euclid(i64::try_from(window_ms.max(1)).unwrap_or(i64::MAX))
}

/// The kind, limit, refill, window and window index (or period start) at
/// `now` of `spec`, as script arguments; `None` if a number is not exact in
/// Lua.
fn spec_args(spec: &LimitSpec, at: Timestamp) -> Option<[String; 5]> {
    Some(match spec {
        LimitSpec::Bucket(w) => [
            "B".into(),
            exact(w.limit)?.to_string(),
            exact(w.refill)?.to_string(),
            exact(w.window_ms)?.to_string(),
            window_index(at, w.window_ms).to_string(),
        ],
        LimitSpec::Sliding(s) => [
            "S".into(),
            exact(s.limit)?.to_string(),
            "0".into(),
            exact(s.window_ms.max(1))?.to_string(),
            window_index(at, s.window_ms).to_string(),
        ],
        LimitSpec::Period(p) => [
            "P".into(),
            exact(p.limit)?.to_string(),
            "0".into(),
            "0".into(),
            p.period.bounds(at).0.as_millis().to_string(),
        ],
    })
}

/// Where the reservation taken at `at` was counted: its window index, or
/// its period's start.
fn taken_in(spec: &LimitSpec, at: Timestamp) -> i64 {
    match spec {
        LimitSpec::Bucket(w) => window_index(at, w.window_ms),
        LimitSpec::Sliding(s) => window_index(at, s.window_ms),
        LimitSpec::Period(p) => p.period.bounds(at).0.as_millis(),
    }
}

/// The arguments of a reservation (`R`) or a take (`T`) of `ops` over the
/// counters `ids` (distinct, in `KEYS` order); `None` if not eligible.
pub(crate) fn take_args(
    mode: &str,
    ops: &[LimitOp],
    ids: &[&str],
    now: Timestamp,
) -> Option<Vec<String>> {
    let mut args = vec![mode.to_owned(), now.as_millis().to_string(), String::new()];
    for op in ops {
        let k = ids.iter().position(|i| *i == op.id)? + 1;
        args.push(k.to_string());
        args.extend(spec_args(&op.spec, now)?);
        args.push(exact(op.cost)?.to_string());
        args.push("0".into());
        args.push("0".into());
    }
    Some(args)
}

/// The arguments of a settlement of `ops` (`S`); `None` if not eligible.
pub(crate) fn settle_args(ops: &[SettleOp], ids: &[&str], now: Timestamp) -> Option<Vec<String>> {
    let mut args = vec!["S".to_owned(), now.as_millis().to_string(), String::new()];
    for op in ops {
        let k = ids.iter().position(|i| *i == op.id)? + 1;
        args.push(k.to_string());
        args.extend(spec_args(&op.spec, now)?);
        args.push(exact(op.reserved)?.to_string());
        args.push(exact(op.used)?.to_string());
        args.push(taken_in(&op.spec, op.taken_at).to_string());
    }
    Some(args)
}

/// The arguments of a spend of `cost` (`B`); `None` if not eligible.
pub(crate) fn spend_args(
    cost: u64,
    refill: Option<&Refill>,
    now: Timestamp,
) -> Option<Vec<String>> {
    let (has, boundary, amount) = match refill {
        Some(r) => ("1", r.last_boundary(now).as_millis(), exact(r.amount)?),
        None => ("0", 0, 0),
    };
    Some(vec![
        "B".into(),
        now.as_millis().to_string(),
        String::new(),
        exact(cost)?.to_string(),
        has.into(),
        boundary.to_string(),
        amount.to_string(),
    ])
}
