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
for format in jwt opaque; do
  run=$(mktemp -d)
  cat > "$run/bench.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[storage]
url = "sqlite://$run/bench.db"
[authorization_server]
issuer = "http://127.0.0.1:$PORT"
token_format = "$format"
[log]
level = "warn"
[[clients]]
client_id = "bench"
client_secret_env = "BENCH_SECRET"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]
TOML
  BENCH_SECRET=bench-secret "$top/target/release/portcullis" serve --config "$run/bench.toml" 2> "$run/gateway.log" &
  gw=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break; sleep 0.1; done
  printf '%-7s ' "$format"
  wrk -t1 -c"$CONNS" -d"$DURATION" -s "$here/token_endpoint.lua" "http://127.0.0.1:$PORT/oauth/token" \
    | awk '/Requests\/sec/ {printf "%s tokens/s", $2} /Non-2xx/ {printf " (non-2xx: %s)", $NF} END {print ""}'
  kill $gw; wait $gw 2>/dev/null || true
  rm -rf "$run"
done
