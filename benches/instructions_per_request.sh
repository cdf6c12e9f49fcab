#!/usr/bin/env bash
# Instructions per proxied TLS request, counted by valgrind (callgrind):
# nearly the same for the same binary whatever else the machine is doing
# (runs differ by up to about 600), so it tells two builds apart by
# 1% where wrk's req/s and CPU time swing by several.
#
#   benches/instructions_per_request.sh                 # the release build of this tree
#   benches/instructions_per_request.sh OTHER_BINARY    # and another build
#
# Each build serves N1 (300), then N2 (1300) GETs on one keep-alive TLS
# connection, through the JWT route of benches/lib.sh to the shared
# harness's nginx upstream; the difference of the two totals over N2 - N1
# leaves out start-up and the token request. One connection at a time:
# nothing is batched, so the figure is higher than under wrk's load, and
# valgrind's CPU has no SHA extensions, so the token's SHA-256 (the cache
# key) counts about 27k instructions that real hardware does in a few
# hundred cycles. Compare builds with it; take CPU time from
# cpu_per_request.sh. Needs valgrind, nginx-light and openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$top/../shared/bench}
N1=${N1:-300}; N2=${N2:-1300}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}; GATEWAY_PORT=${GATEWAY_PORT:-18083}; ADMIN_PORT=${ADMIN_PORT:-18093}
for tool in valgrind nginx openssl; do
  command -v $tool >/dev/null || { echo "instructions_per_request.sh: $tool is missing" >&2; exit 2; }
done
(cd "$top" && cargo build --release --locked --quiet)
# shellcheck source=benches/lib.sh
. "$here/lib.sh"
binaries=("$top/target/release/portcullis" "$@")

run=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
bench_certificate "$run"
sed -e "s#__DIR__#$run#g" -e "s#__UPSTREAM_PORT__#$UPSTREAM_PORT#g" "$shared/upstream.nginx.conf" > "$run/upstream.conf"
nginx -c "$run/upstream.conf" -p "$run" & pids+=($!)
bench_gateway_toml "$run" "$GATEWAY_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" warn jwt 0 1 > "$run/gateway.toml"

# binary requests: prints the instructions the gateway ran, start to exit.
count() {
  rm -f "$run"/bench.db* "$run/callgrind.out"
  valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.out" \
    "$1" serve --config "$run/gateway.toml" 2>> "$run/gateway.log" &
  local gw=$!
  bench_wait_ready "$ADMIN_PORT" 120
  python3 - "$2" "$(bench_token "https://127.0.0.1:$GATEWAY_PORT")" "$GATEWAY_PORT" <<'PY'
import http.client, ssl, sys
n, token, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
for _ in range(n):
    conn.request("GET", "/calendar/events", headers={"Authorization": "Bearer " + token})
    res = conn.getresponse()
    res.read()
    if res.status != 200:
        sys.exit(f"the gateway answered {res.status}")
PY
  kill "$gw"; wait "$gw" 2>/dev/null || true
  awk '/^(summary|totals):/ { print $2; exit }' "$run/callgrind.out"
}

for binary in "${binaries[@]}"; do
  first=$(count "$binary" "$N1"); second=$(count "$binary" "$N2")
  echo "$binary: $(( (second - first) / (N2 - N1) )) instructions per request"
done
