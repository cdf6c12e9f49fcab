#!/usr/bin/env bash
# One gateway on SQLite against two replicas on one PostgreSQL, on this
# machine: client_credentials tokens per second for both token formats
# (the replicas loaded at once, half the connections each), and the latency
# of validating opaque tokens never seen before (every request a cache
# miss: one store read for the token and its revocation).
#
#   benches/replicas.sh
#
# PostgreSQL: the database PORTCULLIS_BENCH_POSTGRES names, else a
# throwaway PostgreSQL 15 cluster started here as .ci/run starts its own
# (root, and the server binaries in /usr/lib/postgresql/15/bin).
# Env: DURATION (10s), CONNS (16), MISSES (20000). Needs wrk, curl, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10s}; CONNS=${CONNS:-16}; MISSES=${MISSES:-20000}
(cd "$top" && cargo build --release --locked --quiet)
# shellcheck source=benches/lib.sh
. "$here/lib.sh"
bin="$top/target/release/portcullis"
run=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${pg_dir:-}" ]; then
    su postgres -s /bin/sh -c "$pg_bin/pg_ctl -D $pg_dir/data -m fast stop" >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
  rm -rf "$run"
}
trap cleanup EXIT

postgres=${PORTCULLIS_BENCH_POSTGRES:-}
if [ -z "$postgres" ]; then
  pg_bin=/usr/lib/postgresql/15/bin
  pg_dir=$(mktemp -d /tmp/portcullis-bench-pg.XXXXXX)
  chown postgres "$pg_dir"
  pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  su postgres -s /bin/sh -c "$pg_bin/initdb -D $pg_dir/data -A trust -U postgres --no-sync" >/dev/null
  # fsync stays on: the figures are for a database that keeps what it acknowledges.
  su postgres -s /bin/sh -c "$pg_bin/pg_ctl -D $pg_dir/data -l $pg_dir/log -w -o '-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=100' start" >/dev/null
  postgres="postgres://postgres@127.0.0.1:$pg_port/postgres"
fi

# name store_url format port admin: starts a gateway on the bench
# configuration plus a built-in demo route, so nothing is forwarded.
start() {
  local name=$1 url=$2 format=$3 port=$4 admin=$5
  mkdir -p "$run/$name"
  { bench_gateway_toml "$run/$name" "$port" "$admin" 18081 warn "$format" |
      sed "s|^url = .*|url = \"$url\"|"
    printf '[[routes]]\nname = "demo"\npath_prefix = "/static/"\nupstream = "static://"\n[routes.scopes]\nGET = ["calendar.read"]\n'
  } > "$run/$name/bench.toml"
  "$bin" serve --config "$run/$name/bench.toml" 2> "$run/$name/gateway.log" &
  pids+=($!)
  bench_wait_ready "$admin" 30
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

# url conns: tokens per second from wrk, alone on the gateway at url.
tokens_per_second() {
  wrk -t1 -c"$2" -d"$DURATION" -s "$here/token_endpoint.lua" "$1/oauth/token" |
    awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "non-2xx: " $NF > "/dev/stderr"}'
}

# base_url count file: issues count opaque tokens from base_url into file.
issue_tokens() {
  python3 - "$1" "$2" "$3" <<'PY'
import base64, http.client, json, sys, urllib.parse
base, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host = urllib.parse.urlsplit(base).netloc
conn = http.client.HTTPConnection(host)
auth = "Basic " + base64.b64encode(b"bench:bench-secret").decode()
with open(path, "w") as out:
    for _ in range(count):
        conn.request("POST", "/oauth/token", "grant_type=client_credentials&scope=calendar.read",
                     {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"})
        out.write(json.loads(conn.getresponse().read())["access_token"] + "\n")
PY
}

# url file: latency of validating each token of file once, one request at
# a time (wrk stops when they are used up), as p50 / p99 / max.
misses() {
  local script="$run/misses.lua"
  cat > "$script" <<LUA
local tokens, i = {}, 0
for line in io.lines("$2") do tokens[#tokens + 1] = line end
request = function()
  i = i + 1
  return wrk.format("GET", "/static/x", { ["Authorization"] = "Bearer " .. tokens[(i - 1) % #tokens + 1] })
end
response = function(status)
  if status ~= 200 then print("unexpected status " .. status) end
  if i >= #tokens then wrk.thread:stop() end
end
LUA
  wrk -t1 -c1 -d60s --latency -s "$script" "$1" |
    awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Latency/ && !max {max=$4} /unexpected/ {print}
         END {printf "p50 %s, p99 %s, max %s\n", p50, p99, max}'
}

echo "tokens/s (client_credentials, $CONNS connections, $DURATION):"
for format in jwt opaque; do
  start sqlite "sqlite://$run/sqlite/bench.db" "$format" 18084 18094
  printf '  %-6s SQLite, one gateway:        %s\n' "$format" "$(tokens_per_second http://127.0.0.1:18084 "$CONNS")"
  stop_all
  start a "$postgres" "$format" 18085 18095
  start b "$postgres" "$format" 18086 18096
  a=$(mktemp); b=$(mktemp)
  tokens_per_second http://127.0.0.1:18085 $((CONNS / 2)) > "$a" &
  load_a=$!
  tokens_per_second http://127.0.0.1:18086 $((CONNS / 2)) > "$b"
  wait "$load_a"
  printf '  %-6s PostgreSQL, two replicas:   %s (%s + %s)\n' "$format" \
    "$(python3 -c "print(round($(cat "$a") + $(cat "$b"), 2))")" "$(cat "$a")" "$(cat "$b")"
  rm -f "$a" "$b"
  stop_all
  rm -rf "$run/sqlite" "$run/a" "$run/b"
done

echo "cache-miss validation of $MISSES opaque tokens, each presented once:"
start sqlite "sqlite://$run/sqlite/bench.db" opaque 18084 18094
issue_tokens http://127.0.0.1:18084 "$MISSES" "$run/tokens-sqlite"
printf '  SQLite, one gateway:                 %s\n' "$(misses http://127.0.0.1:18084 "$run/tokens-sqlite")"
stop_all
start a "$postgres" opaque 18085 18095
start b "$postgres" opaque 18086 18096
issue_tokens http://127.0.0.1:18086 "$MISSES" "$run/tokens-pg"
printf '  PostgreSQL, issued on B, used on A:  %s\n' "$(misses http://127.0.0.1:18085 "$run/tokens-pg")"
