#!/usr/bin/env bash
# Resident memory per cached validation, and the rate of validations that
# miss the cache: a release gateway (JWT, a cache with room for N) is
# shown N distinct access tokens once each, through wrk, and its RSS is
# read before and after.
#
#   benches/cache_memory.sh [N]        (default 1000000)
#
# The tokens are minted here with the gateway's own signing key, read from
# its store: through the token endpoint, each would cost an argon2 check
# of the client's secret (hours for a million). They are what the gateway
# mints (RFC 9068, EdDSA), each with its own sub and jti. Needs wrk and
# python3 with cryptography (Debian's python3-cryptography).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
N=${1:-1000000}
PORT=${PORT:-18085}; ADMIN_PORT=${ADMIN_PORT:-18095}
for tool in wrk python3 curl; do
  command -v $tool >/dev/null || { echo "cache_memory.sh: $tool is missing" >&2; exit 2; }
done
python3 -c 'import cryptography' 2>/dev/null || { echo "cache_memory.sh: python3-cryptography is missing" >&2; exit 2; }
(cd "$top" && cargo build --release --locked --quiet)
# shellcheck source=benches/lib.sh
. "$here/lib.sh"
work=$(mktemp -d)
trap 'kill $gateway 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# The benchmark configuration, its route answered by the built-in
# upstream (what is measured is the cache), with room for every token.
bench_gateway_toml "$work" "$PORT" "$ADMIN_PORT" 1 warn jwt |
  sed 's|^upstream = "http://127.0.0.1:1"$|upstream = "static://"|' > "$work/gateway.toml"
printf '[cache]\nttl = "1h"\nmax_entries = %d\n' $((N + N / 10)) >> "$work/gateway.toml"
"$top/target/release/portcullis" serve --config "$work/gateway.toml" 2> "$work/gateway.log" &
gateway=$!
bench_wait_ready "$ADMIN_PORT"
bench_token "http://127.0.0.1:$PORT" > /dev/null   # the signing key is in the store now
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$gateway/status"; }
metric() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
idle=$(rss)

echo "minting $N tokens ..."
python3 - "$work/bench.db" "http://127.0.0.1:$PORT" "$N" > "$work/tokens" <<'PY'
import base64, json, sqlite3, sys, time
from cryptography.hazmat.primitives.serialization import load_der_private_key
db, issuer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
kid, der = sqlite3.connect(db).execute("SELECT kid, private_der FROM signing_keys ORDER BY activates_at DESC").fetchone()
key = load_der_private_key(der, password=None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}, separators=(",", ":")).encode())
now = int(time.time())
out = sys.stdout.buffer
for i in range(n):
    claims = {"iss": issuer, "sub": f"user-{i}", "aud": issuer, "client_id": "bench", "scope": "calendar.read",
              "exp": now + 3600, "iat": now, "jti": f"bench-{i:09d}"}
    signed = head + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
    out.write(signed + b"." + b64(key.sign(signed)) + b"\n")
PY

# Each wrk thread presents its share of the tokens once, in order; a
# thread whose share is done repeats its last (a hit: no new entry).
cat > "$work/tokens.lua" <<LUA
-- share: set in each thread's state by setup (a local of the script
-- would hide it there: each thread runs the script afresh).
local next_share = 0
function setup(thread) thread:set("share", next_share); next_share = next_share + 1 end
function init(args)
  tokens, i = {}, 0
  local n = 0
  for line in io.lines("$work/tokens") do
    if n % 2 == share then table.insert(tokens, line) end
    n = n + 1
  end
end
function request()
  if i < #tokens then i = i + 1 end
  return wrk.format("GET", "/calendar/x", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
validations=$(metric portcullis_token_validations_total)
started=$(date +%s.%N)
wrk -t2 -c32 -d "$((N / 10000 + 10))s" -s "$work/tokens.lua" "http://127.0.0.1:$PORT" > "$work/wrk.txt"
misses=$(( $(metric portcullis_token_validations_total) - validations ))
after=$(rss)
entries=$(metric portcullis_validation_cache_entries)
python3 - "$N" "$idle" "$after" "$entries" "$misses" <<'PY'
import sys
n, idle, after, entries, misses = (int(float(x)) for x in sys.argv[1:])
print(f"tokens presented      {n:>12,}")
print(f"validations (misses)  {misses:>12,}")
print(f"cache entries         {entries:>12,}")
print(f"RSS idle              {idle / 1024:>12,.1f} MiB")
print(f"RSS after             {after / 1024:>12,.1f} MiB")
print(f"per cached entry      {(after - idle) * 1024 / max(entries, 1):>12,.0f} bytes")
PY
grep -E "Requests/sec|Latency" "$work/wrk.txt"
