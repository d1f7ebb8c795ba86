#!/bin/bash
# The image's HEALTHCHECK: GET /healthz from the yunmind in this container; exit 0 on a 200.
# Plain bash (its /dev/tcp), so the image needs no HTTP client. The port is
# YUNMIN_HEALTHCHECK_PORT, else YUNMIN_PORT, else 8080; the daemon must listen on 0.0.0.0 or
# 127.0.0.1 (the image's settings do).
port=${YUNMIN_HEALTHCHECK_PORT:-${YUNMIN_PORT:-8080}}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
case $status in
    "HTTP/1."?" 200 "*) exit 0 ;;
esac
echo "yunmind-healthcheck: $status" >&2
exit 1
