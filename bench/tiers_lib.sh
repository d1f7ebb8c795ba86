# Helpers shared by bench/tiers_load.sh and bench/tiers_ab.sh (sourced, not run): reading a
# daemon's metrics over loopback and the CPU its process and its state writer threads used.
# The caller keeps each daemon's port in the associative array `port`, keyed by its name.

http_get() { # http_get PORT PATH -> body on stdout
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    cat <&3
    exec 3<&-
}
cpu_ticks() { # cpu_ticks PID -> utime + stime in clock ticks (fields 14 and 15 of stat)
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
writer_ticks() { # writer_ticks PID -> CPU ticks of its state writer threads (named ym-*-writer)
    local t sum=0
    for t in /proc/"$1"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
        ym-disk-writer | ym-store-writer)
            sum=$((sum + $(sed 's/^.*) //' "$t/stat" | awk '{print $12 + $13}'))) ;;
        esac
    done
    echo "$sum"
}
metric() { # metric NAME SERIES -> the daemon's value of SERIES (0 when absent)
    http_get "${port[$1]}" /metrics 2>/dev/null |
        awk -v s="$2" '$1 == s {printf "%d\n", $2; f = 1} END {if (!f) print 0}'
}
gen_tokens() { metric "$1" yunmin_generation_tokens_total; }
states() { metric "$1" yunmin_state_disk_writes_total; }
