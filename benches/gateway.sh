#!/usr/bin/env bash
# Portcullis beside nginx under the shared harness (../shared/bench/compare.sh):
# a release build of Portcullis in front of the harness's nginx upstream, with
# a JWT route whose GET needs `calendar.read`, under the same wrk load as the
# plain nginx reverse proxy.
#
#   benches/gateway.sh                 # JWT tokens
#   TOKEN_FORMAT=opaque benches/gateway.sh
#
# Env: the harness's (ROUNDS, DURATION, CONNS, THREADS, WORKERS, UPSTREAM_PORT,
# PROXY_PORT), plus GATEWAY_PORT (18083), ADMIN_PORT (18093), TOKEN_FORMAT (jwt),
# GATEWAY_WORKERS (0 = one per core), LOG_LEVEL (warn: the access log is
# off; info: one access line per request, written to a file). Needs
# nginx-light and wrk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
harness=${HARNESS:-$top/../shared/bench/compare.sh}
GATEWAY_PORT=${GATEWAY_PORT:-18083}; ADMIN_PORT=${ADMIN_PORT:-18093}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}; TOKEN_FORMAT=${TOKEN_FORMAT:-jwt}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-0}; LOG_LEVEL=${LOG_LEVEL:-warn}

(cd "$top" && cargo build --release --locked --quiet)
run=$(mktemp -d)
cat > "$run/bench.toml" <<TOML
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
workers = $GATEWAY_WORKERS
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[storage]
url = "sqlite://$run/bench.db"
[authorization_server]
issuer = "http://127.0.0.1:$GATEWAY_PORT"
token_format = "$TOKEN_FORMAT"
access_token_ttl = "1h"
[log]
level = "$LOG_LEVEL"
format = "json"
[[clients]]
client_id = "bench"
client_secret_env = "BENCH_SECRET"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]
[[routes]]
name = "calendar"
path_prefix = "/calendar/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
[routes.scopes]
GET = ["calendar.read"]
TOML
BENCH_SECRET=bench-secret "$top/target/release/portcullis" serve --config "$run/bench.toml" 2> "$run/gateway.log" &
gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break; sleep 0.1; done
token=$(curl -fsS -u bench:bench-secret -d grant_type=client_credentials "http://127.0.0.1:$GATEWAY_PORT/oauth/token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
"$harness" "http://127.0.0.1:$GATEWAY_PORT/calendar/events" "Authorization: Bearer $token"
