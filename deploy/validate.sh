#!/bin/bash
# Checks everything under deploy/ with real tools, offline (scripts/test.sh's deploy-validate
# stage runs it):
#   nginx      `nginx -t` on deploy/nginx/yunmin.conf (made stand-alone by render.sh), and its
#              body limits against yunmind's;
#   systemd    `systemd-analyze verify` and `systemd-analyze security --offline` on the unit;
#              its stop timeout against the drain timeout;
#   Dockerfile dockerfile-utils' linter; the runtime stage's packages cover every library the
#              built programs link (ldd + dpkg + apt-cache); non-root numeric USER, exec-form
#              ENTRYPOINT, HEALTHCHECK; the container settings accepted by yunmind;
#   compose    dclint: the Compose Specification's JSON schema and its best-practice rules;
#   k8s        deploy/validate/k8s.mjs: the Kubernetes API schemas (kubernetes-models), unknown
#              fields (TypeScript with kubernetes-types), consistency with yunmind's settings;
#              deploy/k8s alone, then with the optional store (deploy/k8s/store);
#   monitoring `promtool check rules` and `promtool test rules` on deploy/monitoring's alert
#              rules; every yunmin_* series they and the Grafana dashboard use is exported.
#
#   deploy/validate.sh [BUILD_DIR]     (default build-test; needs BUILD_DIR/server/yunmind)
#
# Installs the pinned npm tools (deploy/validate/package-lock.json) when they are missing.
# Exit status 0 when every check passed.
set -u
cd "$(dirname "$0")/.."
build=${1:-build-test}
yunmind=$build/server/yunmind
yunmin=$build/tools/yunmin
failed=0
ok() { echo "deploy-validate: ok: $*"; }
bad() { echo "deploy-validate: FAILED: $*" >&2; failed=1; }

for exe in "$yunmind" "$yunmin"; do
    [ -x "$exe" ] || { echo "deploy-validate: no $exe (build first)" >&2; exit 2; }
done
for tool in nginx systemd-analyze node npm dpkg apt-cache ldd promtool; do
    command -v $tool >/dev/null || { echo "deploy-validate: $tool not found (scripts/deps.sh test)" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Effective yunmind settings without this shell's YUNMIN_* variables.
clean_env() { env $(env | sed -n 's/^\(YUNMIN_[A-Z_]*\)=.*/-u \1/p') "$@"; }
setting() { # FILE KEY -> the value yunmind would use
    clean_env "$yunmind" --config "$1" --print-config |
        node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]]))' "$2"
}
defaults=conf/yunmind.json

# ---- npm tools ----------------------------------------------------------------------------
if [ ! -d deploy/validate/node_modules/kubernetes-models ] || [ ! -d deploy/validate/node_modules/dclint ]; then
    echo "deploy-validate: npm ci in deploy/validate" >&2
    (cd deploy/validate && npm ci --no-audit --no-fund >&2) || { echo "deploy-validate: npm ci failed" >&2; exit 1; }
fi
bin=deploy/validate/node_modules/.bin

# ---- nginx --------------------------------------------------------------------------------
mkdir -p "$tmp/nginx"
if deploy/nginx/render.sh "$tmp/nginx" 127.0.0.1:18080 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083 &&
    nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" -t 2>"$tmp/nginx.out"; then
    ok "nginx -t ($(nginx -v 2>&1 | sed 's/.*: //')) on deploy/nginx/yunmin.conf"
else
    cat "$tmp/nginx.out" >&2
    bad "nginx -t"
fi
# nginx's body limits must be yunmind's: 4 MiB for /v1 bodies, max_upload_bytes for adapters.
size_of() { # nginx size (4m, 256m, 1g, bytes) -> bytes
    case $1 in
        *k) echo $((${1%k} * 1024)) ;; *m) echo $((${1%m} * 1048576)) ;;
        *g) echo $((${1%g} * 1073741824)) ;; *) echo "$1" ;;
    esac
}
limits=$(sed -n 's/^ *client_max_body_size \([0-9]*[kmg]*\);.*/\1/p' deploy/nginx/yunmin.conf)
body=$(size_of "$(echo "$limits" | sed -n 1p)")
upload=$(size_of "$(echo "$limits" | sed -n 2p)")
want_body=$(setting $defaults max_body_bytes)
# yunmind takes an upload whose Content-Length is at most max_upload_bytes + 64 KiB (the
# multipart framing; server/adapters_api.c).
want_upload=$(($(setting $defaults max_upload_bytes) + 65536))
if [ "$body" = "$want_body" ] && [ "$upload" = "$want_upload" ]; then
    ok "client_max_body_size $body / $upload = yunmind's max_body_bytes / max_upload_bytes + 64 KiB"
else
    bad "client_max_body_size $body / $upload, yunmind's limits are $want_body / $want_upload"
fi
if grep -q 'hash \$yunmin_route_key consistent;' deploy/nginx/yunmin.conf &&
    grep -q 'proxy_buffering off;' deploy/nginx/yunmin.conf; then
    ok "consistent hashing on the session key; proxy_buffering off"
else
    bad "yunmin.conf lost its hash or proxy_buffering line"
fi

# ---- systemd ------------------------------------------------------------------------------
unit=deploy/systemd/yunmind.service
mkdir -p "$tmp/systemd"
# verify checks that ExecStart's program exists: point it at the one just built.
sed "s|/usr/local/bin/yunmind|$PWD/$yunmind|" $unit >"$tmp/systemd/yunmind.service"
if systemd-analyze verify "$tmp/systemd/yunmind.service" >"$tmp/verify.out" 2>&1 && [ ! -s "$tmp/verify.out" ]; then
    ok "systemd-analyze verify ($(systemd-analyze --version | sed -n '1s/ (.*//p')) on $unit"
else
    cat "$tmp/verify.out" >&2
    bad "systemd-analyze verify $unit"
fi
if systemd-analyze security --offline=yes --threshold=20 "$tmp/systemd/yunmind.service" >"$tmp/security.out" 2>&1; then
    ok "systemd-analyze security: $(sed -n 's/^→ Overall exposure level for [^:]*: //p' "$tmp/security.out")"
else
    tail -n 25 "$tmp/security.out" >&2
    bad "systemd-analyze security: exposure above 2.0"
fi
state=$(sed -n 's/^StateDirectory=\([^ ]*\).*/\1/p' $unit)
adir=$(setting deploy/yunmind.json adapter_dir)
if [ -n "$state" ] && case $adir in "/var/lib/$state"/*) true ;; *) false ;; esac; then
    ok "the unit's settings file keeps adapters ($adir) in its StateDirectory"
else
    bad "deploy/yunmind.json's adapter_dir ($adir) is not under the unit's StateDirectory (/var/lib/$state)"
fi
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' $unit)
drain=$(setting deploy/yunmind.json drain_timeout_s)
if [ -n "$stop" ] && [ "$stop" -gt "$drain" ] && grep -q '^KillSignal=SIGTERM$' $unit &&
    grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' $unit; then
    ok "TimeoutStopSec=$stop > drain_timeout_s=$drain; SIGTERM stops, SIGHUP reloads"
else
    bad "the unit's stop/reload settings (TimeoutStopSec=$stop, drain_timeout_s=$drain)"
fi

# ---- Dockerfile ---------------------------------------------------------------------------
df=deploy/Dockerfile
if $bin/dockerfile-utils lint $df >"$tmp/df.out" 2>&1 && [ ! -s "$tmp/df.out" ]; then
    ok "dockerfile-utils lint $df ($($bin/dockerfile-utils --version | sed 's/ (.*//'))"
else
    cat "$tmp/df.out" >&2
    bad "dockerfile-utils lint $df"
fi
# The runtime stage: everything after the last FROM, continuation lines joined.
runtime=$(awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END{printf "%s", buf}' $df | sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
pkgs=$(echo "$runtime" | grep 'apt-get install' | sed 's/.*--no-install-recommends//; s/&&.*//')
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $pkgs 2>/dev/null | grep -v '^ ' | sort -u)
pkg_of() { # library path -> the Debian package that ships it
    { dpkg -S "$1" || dpkg -S "/usr$1" || dpkg -S "$(realpath "$1")"; } 2>/dev/null | sed -n '1s/:.*//p'
}
missing=""
for lib in $(ldd "$yunmind" "$yunmin" | awk '/=> \//{print $3}' | sort -u); do
    p=$(pkg_of "$lib")
    if [ -z "$p" ] || ! echo "$closure" | grep -qx "$p"; then missing="$missing $lib(${p:-?})"; fi
done
if [ -n "$pkgs" ] && [ -z "$missing" ]; then
    ok "runtime packages ($(echo $pkgs)) bring every library yunmind and yunmin link"
else
    bad "libraries not brought by the runtime stage's packages:$missing"
fi
user=$(echo "$runtime" | sed -n 's/^USER \([0-9]*\)\(:[0-9]*\)\{0,1\}$/\1/p')
if [ -n "$user" ] && [ "$user" -ne 0 ] &&
    echo "$runtime" | grep -q '^ENTRYPOINT \["/usr/local/bin/yunmind"\]$' &&
    echo "$runtime" | grep -q '^HEALTHCHECK .*CMD \["/usr/local/bin/yunmind-healthcheck"\]' &&
    grep -q '^ARG DEBIAN_IMAGE=debian:12-slim$' $df && [ "$(grep -c '^FROM \${DEBIAN_IMAGE}' $df)" = 2 ]; then
    ok "Debian 12 slim stages, USER $user, exec-form ENTRYPOINT, HEALTHCHECK"
else
    bad "$df: want debian:12-slim stages, a numeric non-root USER, ENTRYPOINT [\"/usr/local/bin/yunmind\"] and the HEALTHCHECK"
fi
for src in $(echo "$runtime" "$(cat $df)" | sed -n 's/^COPY \([^-][^ ]*\) .*/\1/p' | sort -u); do
    [ -e "$src" ] || bad "$df copies $src, which does not exist"
done
if clean_env "$yunmind" --config deploy/yunmind.json --print-config >/dev/null 2>"$tmp/conf.out"; then
    ok "deploy/yunmind.json (the image's settings) accepted by yunmind"
else
    cat "$tmp/conf.out" >&2
    bad "yunmind refuses deploy/yunmind.json"
fi

# ---- compose ------------------------------------------------------------------------------
if $bin/dclint --max-warnings 0 deploy/compose.yaml >"$tmp/dclint.out" 2>&1; then
    ok "dclint $($bin/dclint --version) on deploy/compose.yaml (Compose Specification schema + rules)"
else
    cat "$tmp/dclint.out" >&2
    bad "dclint deploy/compose.yaml"
fi
grace=$(sed -n 's/^  stop_grace_period: \([0-9]*\)s$/\1/p' deploy/compose.yaml | sed -n 1p)
if [ -n "$grace" ] && [ "$grace" -gt "$drain" ] &&
    grep -q -- '- ./nginx/yunmin.conf:/etc/nginx/conf.d/default.conf:ro' deploy/compose.yaml; then
    ok "compose: stop_grace_period ${grace}s > drain; nginx uses deploy/nginx/yunmin.conf"
else
    bad "compose: stop_grace_period (${grace:-none}) must exceed the drain timeout; nginx must mount yunmin.conf"
fi

# ---- Kubernetes ---------------------------------------------------------------------------
if node deploy/validate/k8s.mjs deploy/k8s --yunmind "$yunmind" &&
    node deploy/validate/k8s.mjs deploy/k8s deploy/k8s/store --yunmind "$yunmind"; then
    ok "Kubernetes manifests (kubernetes-models $(node -p 'require("./deploy/validate/node_modules/kubernetes-models/package.json").version'), kubernetes-types $(node -p 'require("./deploy/validate/node_modules/kubernetes-types/package.json").version'), typescript $(node -p 'require("./deploy/validate/node_modules/typescript/package.json").version'))"
else
    bad "Kubernetes manifests"
fi

# ---- monitoring ---------------------------------------------------------------------------
if promtool check rules deploy/monitoring/alerts.yaml >"$tmp/promtool.out" 2>&1 &&
   (cd deploy/monitoring && promtool test rules alerts.test.yaml) >>"$tmp/promtool.out" 2>&1; then
    ok "promtool check rules and test rules on deploy/monitoring/alerts.yaml"
else
    cat "$tmp/promtool.out" >&2
    bad "promtool on deploy/monitoring/alerts.yaml"
fi
if /usr/bin/python3 deploy/monitoring/check_metrics.py "$yunmind" >"$tmp/cm.out" 2>&1; then
    ok "$(cat "$tmp/cm.out") (alert rules and Grafana dashboard)"
else
    cat "$tmp/cm.out" >&2
    bad "deploy/monitoring: series not exported by yunmind"
fi

[ $failed -eq 0 ] && echo "deploy-validate: all checks passed"
exit $failed
