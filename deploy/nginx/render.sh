#!/bin/sh
# Makes a stand-alone nginx set-up from deploy/nginx/yunmin.conf, for a bare nginx run by the
# current user (the multi-replica test, deploy/validate.sh's `nginx -t`):
#
#   deploy/nginx/render.sh DIR LISTEN UPSTREAM...
#     e.g. deploy/nginx/render.sh /tmp/lb 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
#
# DIR/yunmin.conf is yunmin.conf with only these changed: the server lines between the
# "upstream servers" markers (one per UPSTREAM, same parameters), the listen address, and the
# access log (DIR/access.log). DIR/nginx.conf is the main file around it: pid, error log and
# temporary files under DIR. Run it with
#   nginx -p DIR -c DIR/nginx.conf -e DIR/error.log [-t | -g 'daemon off;']
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 DIR LISTEN UPSTREAM..." >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$(cd "$1" && pwd)
listen=$2
shift 2

mkdir -p "$dir/tmp"
# Each new server line keeps the parameters of the first shipped one (max_fails...).
params=$(sed -n '/# upstream servers: begin/,/# upstream servers: end/s/^ *server [^ ;]*\(.*\);$/\1/p' \
    "$here/yunmin.conf" | sed -n 1p)
servers=""
for u in "$@"; do
    servers="$servers    server $u$params;
"
done

awk -v servers="$servers" -v listen="$listen" -v logfile="$dir/access.log" '
    /# upstream servers: begin/ { print; printf "%s", servers; skip = 1; next }
    /# upstream servers: end/   { skip = 0 }
    skip { next }
    /^    listen 8080;$/ { print "    listen " listen ";"; n_listen++; next }
    /^    access_log \/dev\/stdout yunmin;$/ { print "    access_log " logfile " yunmin;"; n_log++; next }
    { print }
    END { if (n_listen != 1 || n_log != 1) exit 3 }
' "$here/yunmin.conf" >"$dir/yunmin.conf" || {
    echo "$0: yunmin.conf no longer has the lines this script replaces" >&2
    exit 1
}

# Workers of a master started as root would run as "nobody", which cannot enter a private
# temporary directory: keep them as the current user.
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user $(id -un) $(id -gn);"

cat >"$dir/nginx.conf" <<EOF
# Made by deploy/nginx/render.sh for a bare nginx run by the current user.
$user_line
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events {
    worker_connections 1024;
}
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $dir/yunmin.conf;
}
EOF
