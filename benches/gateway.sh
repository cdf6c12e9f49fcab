#!/usr/bin/env bash
# Portcullis beside nginx under the shared harness (../shared/bench/compare.sh):
# a release build of Portcullis in front of the harness's nginx upstream, with
# a JWT route whose GET needs `calendar.read`, under the same wrk load as the
# plain nginx reverse proxy.
#
#   benches/gateway.sh                 # JWT tokens
#   TOKEN_FORMAT=opaque benches/gateway.sh
#   TLS=1 benches/gateway.sh           # both terminate TLS (a self-signed
#                                      # certificate made here with openssl)
#
# Env: the harness's (ROUNDS, DURATION, CONNS, THREADS, WORKERS, UPSTREAM_PORT,
# PROXY_PORT), plus GATEWAY_PORT (18083), ADMIN_PORT (18093), TOKEN_FORMAT (jwt),
# GATEWAY_WORKERS (0 = one per core), PIN_WORKERS (auto; on, off), LOG_LEVEL (warn: the access log is
# off; info: one access line per request, written to a file), TLS (0). Needs
# nginx-light and wrk (and openssl with TLS=1).
#
# With TLS=1 the harness runs from a copy whose nginx proxy listens with TLS
# (the shared config with `ssl` and a certificate added to its listener) and
# is reached over https://; the measuring and reporting are the harness's
# own, unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
harness=${HARNESS:-$top/../shared/bench/compare.sh}
GATEWAY_PORT=${GATEWAY_PORT:-18083}; ADMIN_PORT=${ADMIN_PORT:-18093}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}; TOKEN_FORMAT=${TOKEN_FORMAT:-jwt}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-0}; LOG_LEVEL=${LOG_LEVEL:-warn}; TLS=${TLS:-0}

(cd "$top" && cargo build --release --locked --quiet)
# shellcheck source=benches/lib.sh
. "$here/lib.sh"
run=$(mktemp -d)
scheme=http
if [ "$TLS" = 1 ]; then
  scheme=https
  bench_certificate "$run"
  shared=$(dirname "$harness")
  cp "$shared/upstream.nginx.conf" "$run/"
  sed -e "s#listen 127.0.0.1:__PROXY_PORT__;#listen 127.0.0.1:__PROXY_PORT__ ssl; ssl_certificate $run/cert.pem; ssl_certificate_key $run/key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;#" \
    "$shared/proxy.nginx.conf" > "$run/proxy.nginx.conf"
  grep -q "ssl_certificate" "$run/proxy.nginx.conf" || { echo "gateway.sh: could not switch the nginx proxy to TLS" >&2; exit 2; }
  sed -e 's#http://127.0.0.1:$PROXY_PORT#https://127.0.0.1:$PROXY_PORT#g' -e 's#curl -fsS#curl -kfsS#g' -e 's#curl -s -o#curl -ks -o#' \
    "$harness" > "$run/compare.sh"
  harness="$run/compare.sh"
fi
bench_gateway_toml "$run" "$GATEWAY_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$LOG_LEVEL" "$TOKEN_FORMAT" "$GATEWAY_WORKERS" "$TLS" \
  > "$run/bench.toml"
"$top/target/release/portcullis" serve --config "$run/bench.toml" 2> "$run/gateway.log" &
gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null; rm -rf "$run"' EXIT
bench_wait_ready "$ADMIN_PORT"
token=$(bench_token "$scheme://127.0.0.1:$GATEWAY_PORT")
bash "$harness" "$scheme://127.0.0.1:$GATEWAY_PORT/calendar/events" "Authorization: Bearer $token"
