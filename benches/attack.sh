#!/usr/bin/env bash
# Public attack and conformance tools against a gateway on loopback, and a
# summary of what each found (the README's security section has the
# table). Not part of the test suite: the tools come from elsewhere, run
# for minutes, and their verdicts need reading.
#
#   benches/attack.sh [smuggler|jwt_tool|testssl|h2spec ...]   (default: all)
#
# - smuggler (defparam): CL.TE / TE.CL / TE.TE mutations against a public
#   and a protected route in front of nginx, plain and over TLS.
# - jwt_tool (ticarpi): alg none, null and blank signatures, key
#   confusion, spoofed and inline JWKS, the playbook and every test (-M at).
# - testssl.sh (Debian): the TLS listener.
# - h2spec (summerwind): HTTP/2 conformance over TLS, built with Debian's
#   Go from source, offline (its dependencies at go.mod's versions).
#
# Tool sources are cloned from $MIRROR/OWNER+NAME/repo when that exists
# (this machine's mirrors), else from GitHub. Needs python3, openssl, curl,
# nginx, testssl.sh and golang-go (apt); jwt_tool's Python packages go in a
# venv. Uses target/debug/portcullis (built if missing). Work and logs in
# $WORK (default: a new temporary directory, kept).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
MIRROR=${MIRROR:-/work/.mirror}
WORK=${WORK:-$(mktemp -d /tmp/portcullis-attack.XXXXXX)}
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(smuggler jwt_tool testssl h2spec)
mkdir -p "$WORK/logs"
cd "$WORK" || exit 2
echo "work and logs: $WORK"

clone() { # OWNER/NAME DIR [REV]
    [ -d "$2" ] && return
    local from="https://github.com/$1"
    [ -d "$MIRROR/${1/\//+}/repo" ] && from="$MIRROR/${1/\//+}/repo"
    git clone -q "$from" "$2" && { [ -z "${3:-}" ] || git -C "$2" -c advice.detachedHead=false checkout -q "$3"; }
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- the gateway
bin=$top/target/debug/portcullis
[ -x "$bin" ] || (cd "$top" && cargo build --locked) || exit 2
[ -f tls.crt ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout tls.key -out tls.crt -days 30 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
http=$(free_port) https=$(free_port) upstream=$(free_port)
# The README's demo (client calendar-app, alice, /calendar/ to static://),
# plus a public and a protected route to nginx; one gateway listens in
# plain HTTP, one in TLS.
config() { # LISTEN ADMIN TLS? DB
    python3 - "$top/tests/fixtures/demo.toml" "$@" "$upstream" "$WORK" <<'PY'
import sys
demo, listen, admin, tls, db, upstream, work = sys.argv[1:]
s = open(demo).read()
s = s.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{listen}"', 1)
s = s.replace('listen = "127.0.0.1:9090"', f'listen = "127.0.0.1:{admin}"', 1)
s = s.replace('url = "sqlite://data/portcullis.db"', f'url = "sqlite://{work}/{db}"', 1)
if tls == "tls":
    s = s.replace('issuer = "http://127.0.0.1:8080"', f'issuer = "https://127.0.0.1:{listen}"', 1)
    s = s.replace('\n[admin]', f'\n[server.tls]\ncert = "{work}/tls.crt"\nkey = "{work}/tls.key"\n\n[admin]', 1)
s += f'''
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "http://127.0.0.1:{upstream}"
public = true

[[routes]]
name = "papi"
path_prefix = "/papi/"
upstream = "http://127.0.0.1:{upstream}"
[routes.scopes]
"*" = ["calendar.read"]
'''
print(s)
PY
}
config "$http" "$(free_port)" plain p.db > gw.toml
config "$https" "$(free_port)" tls p-tls.db > gw-tls.toml
mkdir -p ngx/tmp www/api www/papi
echo "nginx upstream" | tee www/api/index.html > www/papi/index.html
cat > ngx/nginx.conf <<EOF
daemon off; worker_processes 1; pid $WORK/ngx/nginx.pid; error_log $WORK/logs/nginx-error.log;
events { worker_connections 256; }
http {
  access_log $WORK/logs/nginx-access.log;
  client_body_temp_path $WORK/ngx/tmp/body; proxy_temp_path $WORK/ngx/tmp/proxy;
  fastcgi_temp_path $WORK/ngx/tmp/fcgi; uwsgi_temp_path $WORK/ngx/tmp/uwsgi; scgi_temp_path $WORK/ngx/tmp/scgi;
  server { listen 127.0.0.1:$upstream; root $WORK/www; location / { error_page 405 =200 \$uri; } }
}
EOF
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
nginx -c "$WORK/ngx/nginx.conf" -p "$WORK/ngx/" & pids+=($!)
"$bin" serve --config gw.toml > logs/gateway.log 2>&1 & pids+=($!)
"$bin" serve --config gw-tls.toml > logs/gateway-tls.log 2>&1 & pids+=($!)
for port in "$http" "$https"; do
    for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$port/" || curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
token() { curl -sk -u calendar-app:calendar-secret -d grant_type=client_credentials -d scope=calendar.read \
    "$1/oauth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'; }

# ---------------------------------------------------------------- smuggler
run_smuggler() {
    clone defparam/smuggler smuggler
    # smuggler takes no extra headers: *_auth.py are its configs with an
    # Authorization line added (-c takes a name under configs/).
    local token_plain token_tls
    token_plain=$(token "http://127.0.0.1:$http") token_tls=$(token "https://127.0.0.1:$https")
    for c in default exhaustive doubles; do
        for t in plain tls; do
            local tok=$token_plain; [ $t = tls ] && tok=$token_tls
            sed "s|\(p.header += \"Host: __HOST__\" + RN\)|\1\n\tp.header += \"Authorization: Bearer $tok\" + RN|" \
                "smuggler/configs/$c.py" > "smuggler/configs/${c}_auth_$t.py"
        done
    done
    (cd smuggler && for run in "http $http api default" "http $http api exhaustive" "http $http api doubles" \
        "http $http papi default_auth_plain" "http $http papi exhaustive_auth_plain" "http $http papi doubles_auth_plain" \
        "https $https api exhaustive" "https $https papi exhaustive_auth_tls"; do
        set -- $run
        python3 smuggler.py -u "$1://127.0.0.1:$2/$3/" -c "$4.py" --no-color -l "$WORK/logs/smuggler-$1-$3-$4.log" \
            > "$WORK/logs/smuggler-$1-$3-$4.out" 2>&1
    done)
    echo "smuggler:"
    for f in logs/smuggler-*.log; do
        printf "  %-44s mutations %4s  issues found %s\n" "$(basename "$f" .log)" \
            "$(grep -cE '^\[[^+]' "$f")" "$(grep -c 'Issue Found' "$f")"
    done
}

# ---------------------------------------------------------------- jwt_tool
run_jwt_tool() {
    clone ticarpi/jwt_tool jwt_tool
    [ -d venv ] || { python3 -m venv venv && venv/bin/pip install -q -r jwt_tool/requirements.txt; } || return
    export HOME=$WORK/home; mkdir -p "$HOME"
    local tok; tok=$(token "http://127.0.0.1:$http")
    # The gateway's Ed25519 key as PEM, for key confusion (-X k).
    python3 - "http://127.0.0.1:$http/oauth/jwks" > gateway-key.pem <<'PY'
import base64, json, sys, urllib.request
x = json.load(urllib.request.urlopen(sys.argv[1]))["keys"][0]["x"]
der = bytes.fromhex("302a300506032b6570032100") + base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
print("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PUBLIC KEY-----")
PY
    [ -f "$HOME/.jwt_tool/jwtconf.ini" ] || (cd jwt_tool && ../venv/bin/python jwt_tool.py "$tok" > /dev/null 2>&1)
    # Where a spoofed JWKS (-X s) is served: the gateway must never fetch it.
    local jwks; jwks=$(free_port)
    (cd "$HOME/.jwt_tool" && exec python3 -m http.server "$jwks" --bind 127.0.0.1 > "$WORK/logs/jwks-host.log" 2>&1) & pids+=($!)
    jt() { (cd jwt_tool && ../venv/bin/python jwt_tool.py -np -t "http://127.0.0.1:$http/calendar/events" \
        -rh "Authorization: Bearer $tok" -cv "portcullis static demo upstream" "$@"); }
    for x in a n b i; do jt -X $x > "logs/jwt_tool-X$x.out" 2>&1; done
    jt -X s -ju "http://127.0.0.1:$jwks/jwttool_custom_jwks.json" > logs/jwt_tool-Xs.out 2>&1
    jt -X k -pk "$WORK/gateway-key.pem" > logs/jwt_tool-Xk.out 2>&1
    jt -M pb > logs/jwt_tool-Mpb.out 2>&1
    jt -M at > logs/jwt_tool-Mat.out 2>&1
    echo "jwt_tool (a 200 other than for the original token is a forged token accepted):"
    for f in logs/jwt_tool-*.out; do
        sed 's/\x1b\[[0-9;]*m//g' "$f" > "${f%.out}.txt"
        printf "  %-16s requests %4s  forged accepted %s\n" "$(basename "$f" .out)" \
            "$(grep -c 'Response Code' "${f%.out}.txt")" \
            "$(grep 'Response Code: 2' "${f%.out}.txt" | grep -vcE 'Sending token|original token|Persistence check')"
    done
    echo "  spoofed JWKS fetched: $(grep -c 'GET /' logs/jwks-host.log) times"
}

# ---------------------------------------------------------------- testssl.sh
run_testssl() {
    command -v testssl > /dev/null || { echo "testssl: missing (apt-get install testssl.sh)"; return; }
    testssl --quiet --color 0 --warnings off --jsonfile logs/testssl.json "127.0.0.1:$https" > logs/testssl.txt 2>&1
    echo "testssl.sh (findings above INFO; cert_* and DNS_CAArecord are the self-signed test certificate's):"
    python3 - logs/testssl.json <<'PY'
import collections, json, sys
found = json.load(open(sys.argv[1]))
print("  severities:", dict(collections.Counter(f["severity"] for f in found)))
for f in found:
    if f["severity"] not in ("OK", "INFO"):
        print(f"  {f['severity']:8} {f['id']}: {f['finding']}")
PY
}

# ---------------------------------------------------------------- h2spec
run_h2spec() {
    command -v go > /dev/null || { echo "h2spec: needs Go (apt-get install golang-go)"; return; }
    if [ ! -x h2spec ]; then
        clone summerwind/h2spec src/h2spec af83a65
        dep() { clone "$1" "deps/$2" "$3"; [ -f "deps/$2/go.mod" ] || printf 'module %s\n\ngo 1.12\n' "$4" > "deps/$2/go.mod"; }
        dep golang/net net 55a3084c9119 golang.org/x/net
        dep golang/sys sys 3b5209105503 golang.org/x/sys
        dep fatih/color color bf82308e8c85 github.com/fatih/color
        dep spf13/cobra cobra dc208f4211e7 github.com/spf13/cobra
        dep spf13/pflag pflag v1.0.3 github.com/spf13/pflag
        dep mattn/go-isatty go-isatty v0.0.4 github.com/mattn/go-isatty
        dep mattn/go-colorable go-colorable v0.1.0 github.com/mattn/go-colorable
        dep inconshreveable/mousetrap mousetrap v1.0.0 github.com/inconshreveable/mousetrap
        (cd src/h2spec && export GOPROXY=off GOFLAGS=-mod=mod GOSUMDB=off GOPATH=$WORK/gopath GOCACHE=$WORK/gocache &&
            for m in golang.org/x/net=net golang.org/x/sys=sys github.com/fatih/color=color github.com/spf13/cobra=cobra \
                github.com/spf13/pflag=pflag github.com/mattn/go-isatty=go-isatty \
                github.com/mattn/go-colorable=go-colorable github.com/inconshreveable/mousetrap=mousetrap; do
                go mod edit -replace "${m%%=*}=$WORK/deps/${m#*=}"
            done && go build -o "$WORK/h2spec" ./cmd/h2spec) || { echo "h2spec: the build failed"; return; }
    fi
    # A public route to nginx, which reads the whole request before it
    # answers: the demo's static:// answers at once, and some tests then
    # race the answer's end of stream (see the README).
    ./h2spec -t -k -h 127.0.0.1 -p "$https" --path /api/ -j logs/h2spec.xml > logs/h2spec.txt 2>&1
    echo "h2spec: $(grep -E '^[0-9]+ tests' logs/h2spec.txt)"
    grep -A4 '×' logs/h2spec.txt | sed 's/^/  /'
}

for tool in "${tools[@]}"; do "run_$tool"; done
