#!/usr/bin/env bash
# CPU time per proxied request, Portcullis beside nginx: both terminate TLS
# in front of the shared harness's nginx upstream; wrk loads each in turn
# and the user and system CPU time the proxy process used (all its threads
# or workers, from /proc/<pid>/task/*/stat) is divided by the requests it
# served.
#
#   benches/cpu_per_request.sh                 # the release build of this tree
#   benches/cpu_per_request.sh OTHER_BINARY    # also another build, interleaved
#
# On a shared machine throughput swings with the neighbours; CPU time per
# request swings far less, so it tells two builds apart where wrk's req/s
# cannot. Medians of ROUNDS (5) runs of DURATION (5s), CONNS (32) connections.
# Ports: UPSTREAM_PORT (18081), PROXY_PORT (18082), GATEWAY_PORT (18083),
# ADMIN_PORT (18093). LOG_LEVEL (warn: no access log; info: a JSON access
# line per request, to a file). Needs nginx-light, wrk and openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$top/../shared/bench}
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5s}; CONNS=${CONNS:-32}; LOG_LEVEL=${LOG_LEVEL:-warn}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}; PROXY_PORT=${PROXY_PORT:-18082}
GATEWAY_PORT=${GATEWAY_PORT:-18083}; ADMIN_PORT=${ADMIN_PORT:-18093}
for tool in nginx wrk openssl; do
  command -v $tool >/dev/null || { echo "cpu_per_request.sh: $tool is missing" >&2; exit 2; }
done
(cd "$top" && cargo build --release --locked --quiet)
binaries=("$top/target/release/portcullis" "$@")
# shellcheck source=benches/lib.sh
. "$here/lib.sh"

run=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
bench_certificate "$run"
render() {
  sed -e "s#__DIR__#$run#g" -e "s#__UPSTREAM_PORT__#$UPSTREAM_PORT#g" -e "s#__PROXY_PORT__#$PROXY_PORT#g" \
    -e "s#__WORKERS__#$(nproc)#g" "$1"
}
render "$shared/upstream.nginx.conf" > "$run/upstream.conf"
render "$shared/proxy.nginx.conf" | sed -e "s#listen 127.0.0.1:$PROXY_PORT;#listen 127.0.0.1:$PROXY_PORT ssl; ssl_certificate $run/cert.pem; ssl_certificate_key $run/key.pem; ssl_protocols TLSv1.2 TLSv1.3;#" > "$run/proxy.conf"
grep -q ssl_certificate "$run/proxy.conf" || { echo "cpu_per_request.sh: could not switch nginx to TLS" >&2; exit 2; }
nginx -c "$run/upstream.conf" -p "$run" & pids+=($!)
nginx -c "$run/proxy.conf" -p "$run" & pids+=($!)
bench_gateway_toml "$run" "$GATEWAY_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$LOG_LEVEL" jwt 0 1 > "$run/gateway.toml"

# User and system clock ticks used so far by every thread of the pids given.
ticks() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/stat 2>/dev/null; done |
    awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }'
}
# name url header pid... : one wrk run; appends "name requests user_ticks sys_ticks".
measure() {
  local name=$1 url=$2 header=$3; shift 3
  local before after out
  before=$(ticks "$@")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -H "$header" "$url")
  after=$(ticks "$@")
  echo "$name $(echo "$out" | awk '/requests in/ { print $1 }') $before $after" >> "$run/results"
}

nginx_workers() { pgrep -P "$1" | tr '\n' ' '; }
for _ in $(seq 50); do curl -kfsS -o /dev/null "https://127.0.0.1:$PROXY_PORT/" 2>/dev/null && break; sleep 0.1; done
proxy_workers=$(nginx_workers "${pids[1]}")
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086 # the worker pids are words
  measure nginx "https://127.0.0.1:$PROXY_PORT/calendar/events" "X-Bench: 1" $proxy_workers
  for i in "${!binaries[@]}"; do
    rm -f "$run"/bench.db*
    "${binaries[$i]}" serve --config "$run/gateway.toml" 2>> "$run/gateway.log" &
    gw=$!
    bench_wait_ready "$ADMIN_PORT"
    token=$(bench_token "https://127.0.0.1:$GATEWAY_PORT")
    measure "gateway$i" "https://127.0.0.1:$GATEWAY_PORT/calendar/events" "Authorization: Bearer $token" "$gw"
    kill "$gw"; wait "$gw" 2>/dev/null || true
  done
done

python3 - "$run/results" "$(getconf CLK_TCK)" "${binaries[@]}" <<'PY'
import statistics, sys
path, hz, binaries = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = {}
for line in open(path):
    name, n, u0, s0, u1, s1 = line.split()
    n = int(n)
    rows.setdefault(name, []).append(((int(u1) - int(u0)) / hz / n * 1e6, (int(s1) - int(s0)) / hz / n * 1e6))
labels = {name: name if name == "nginx" else "portcullis" if name == "gateway0" else binaries[int(name[7:])] for name in rows}
width = max(len(label) for label in labels.values())
print(f"{'proxy':{width}} {'user us/req':>12} {'sys us/req':>11}  (medians of {len(rows['nginx'])} runs)")
for name, vals in rows.items():
    user, sys_ = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
    print(f"{labels[name]:{width}} {user:12.1f} {sys_:11.1f}")
PY
