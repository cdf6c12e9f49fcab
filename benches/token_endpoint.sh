#!/usr/bin/env bash
# Token endpoint throughput: client_credentials tokens per second from a
# release build with the SQLite store, for both token formats (opaque
# tokens are written to the store; JWTs are not).
#
#   benches/token_endpoint.sh
#
# Env: DURATION (10s), CONNS (16), PORT (18084), ADMIN_PORT (18094). Needs wrk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10s}; CONNS=${CONNS:-16}; PORT=${PORT:-18084}; ADMIN_PORT=${ADMIN_PORT:-18094}
(cd "$top" && cargo build --release --locked --quiet)
# shellcheck source=benches/lib.sh
. "$here/lib.sh"
for format in jwt opaque; do
  run=$(mktemp -d)
  # The shared configuration; its route is not called here.
  bench_gateway_toml "$run" "$PORT" "$ADMIN_PORT" 18081 warn "$format" > "$run/bench.toml"
  "$top/target/release/portcullis" serve --config "$run/bench.toml" 2> "$run/gateway.log" &
  gw=$!
  bench_wait_ready "$ADMIN_PORT"
  printf '%-7s ' "$format"
  wrk -t1 -c"$CONNS" -d"$DURATION" -s "$here/token_endpoint.lua" "http://127.0.0.1:$PORT/oauth/token" \
    | awk '/Requests\/sec/ {printf "%s tokens/s", $2} /Non-2xx/ {printf " (non-2xx: %s)", $NF} END {print ""}'
  kill $gw; wait $gw 2>/dev/null || true
  rm -rf "$run"
done
