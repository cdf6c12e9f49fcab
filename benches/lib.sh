#!/usr/bin/env bash
# What the benchmark scripts share: a self-signed certificate, the gateway
# configuration they all measure (a JWT route whose GET needs
# `calendar.read`, in front of the shared harness's nginx upstream), and
# starting a gateway and getting it a token. Sourced, not run.

# dir: writes dir/cert.pem and dir/key.pem (P-256, for localhost and
# 127.0.0.1, valid two days).
bench_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}

# dir port admin_port upstream_port [log_level [token_format [workers [tls]]]]:
# prints the gateway configuration. With tls=1 it serves dir/cert.pem and
# dir/key.pem; its store is dir/bench.db.
bench_gateway_toml() {
  local dir=$1 port=$2 admin=$3 upstream=$4 level=${5:-warn} format=${6:-jwt} workers=${7:-0} tls=${8:-0}
  local scheme=http
  [ "$tls" = 1 ] && scheme=https
  cat <<TOML
[server]
listen = "127.0.0.1:$port"
workers = $workers
pin_workers = "${PIN_WORKERS:-auto}"
TOML
  [ "$tls" = 1 ] && printf '[server.tls]\ncert = "%s/cert.pem"\nkey = "%s/key.pem"\n' "$dir" "$dir"
  cat <<TOML
[admin]
listen = "127.0.0.1:$admin"
[storage]
url = "sqlite://$dir/bench.db"
[authorization_server]
issuer = "$scheme://127.0.0.1:$port"
token_format = "$format"
access_token_ttl = "1h"
[log]
level = "$level"
format = "json"
[[clients]]
client_id = "bench"
client_secret_env = "BENCH_SECRET"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]
[[routes]]
name = "calendar"
path_prefix = "/calendar/"
upstream = "http://127.0.0.1:$upstream"
[routes.scopes]
GET = ["calendar.read"]
TOML
}

# The secret of the `bench` client, which a gateway started on the
# configuration above reads from BENCH_SECRET.
BENCH_SECRET=bench-secret
export BENCH_SECRET

# admin_port [seconds]: waits (10 s unless told) until the gateway says it
# is ready.
bench_wait_ready() {
  local _
  for _ in $(seq $((${2:-10} * 10))); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the gateway on admin port $1 did not become ready" >&2
  return 1
}

# base_url: prints a client-credentials access token for `calendar.read`.
bench_token() {
  curl -kfsS -u "bench:$BENCH_SECRET" -d grant_type=client_credentials "$1/oauth/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
