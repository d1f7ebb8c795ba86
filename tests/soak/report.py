#!/usr/bin/python3
"""Markdown tables of a soak run (docs/RELIABILITY.md, "Soak") from soak.py's output directory.

usage: /usr/bin/python3 tests/soak/report.py OUT_DIR [--every-s 300]

Reads OUT_DIR/summary.json and OUT_DIR/soak.csv (written by tests/soak/soak.py --out OUT_DIR)
and prints the figures table and the time series sampled every --every-s seconds.
"""
import argparse
import csv
import json
import os
import sys


def n(v):
    return f"{v:,}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--every-s", type=float, default=300)
    a = p.parse_args()
    try:
        s = json.load(open(os.path.join(a.out, "summary.json")))
        rows = list(csv.DictReader(open(os.path.join(a.out, "soak.csv"))))
    except (OSError, ValueError) as e:
        sys.exit(f"report.py: {e}")
    req, cnt, lat, chk = s["requests"], s["counters"], s["latency_ms_after_warmup"], s["checks"]

    def l3(k):
        v = lat.get(k, {})
        return f"{v.get('p50', 0)} / {v.get('p99', 0)} / {v.get('max', 0)} ms"

    total = req.get("plain", 0) + req.get("stream", 0) + req.get("session", 0) + \
        req.get("adapter_use", 0)
    after = [r for r in rows if float(r["t_s"]) > s["warmup_s"]]
    fds = [int(r["fds"]) for r in after] or [0]
    entries = [int(r["cache_sessions"]) + int(r["cache_prefixes"]) for r in after] or [0]
    print("| figure | value |")
    print("|---|---|")
    print(f"| completions | {n(total)}: {n(req.get('plain', 0))} plain, "
          f"{n(req.get('stream', 0))} streamed, {n(req.get('session', 0))} session turns, "
          f"{n(req.get('adapter_use', 0))} on a scratch adapter |")
    print(f"| rate after the warm-up | {s['req_per_s_after_warmup']:.0f} completions/s, "
          f"{s['tokens_per_s_after_warmup']:,.0f} generated tokens/s "
          f"({s['completion_tokens'] / 1e6:.1f} M tokens in all) |")
    print(f"| latency after the warm-up (p50 / p99 / max) | plain {l3('plain')}; streamed "
          f"{l3('stream')}; time to first token {l3('ttft')}; session turn {l3('session')} |")
    print(f"| sessions | {n(cnt.get('session_resumed', 0))} turns resumed from their session, "
          f"{n(cnt.get('session_cold', 0))} cold; {n(cnt.get('session_deleted', 0))} deleted "
          "at their end |")
    print(f"| adapter churn | {n(cnt.get('uploads', 0))} uploads and {n(cnt.get('deletes', 0))} "
          f"deletes of a scratch adapter; {n(cnt.get('hot_swaps', 0))} hot swaps of adapters "
          "in use |")
    print(f"| cancellations | {n(cnt.get('cancelled_streams', 0))} streams closed mid-way, "
          f"{n(cnt.get('cancelled_plain', 0))} plain requests hung up on |")
    prov = ", ".join(f"{k} × {n(v)}" for k, v in sorted(s["provoked"].items()))
    print(f"| provoked failures, each with its status | {prov} |")
    print(f"| unexpected answers or client errors | {s['unexpected']} |")
    print(f"| state cache | {int(after[-1]['cache_bytes']) / 2**20:.1f} MiB of "
          f"{s['cache_budget_bytes'] / 2**20:.1f} MiB at the end, {min(entries):,}–"
          f"{max(entries):,} entries after the warm-up; "
          f"{int(rows[-1]['cache_evictions']):,} evictions |" if after else "| state cache | |")
    print(f"| RSS, first / last third of the post-warm-up samples (max) | "
          f"{chk['rss_first_third_max_kib']:,} / {chk['rss_last_third_max_kib']:,} KiB "
          f"({chk['rss_last_third_max_kib'] - chk['rss_first_third_max_kib']:+,} KiB); "
          f"least-squares slope {chk['rss_slope_kib_per_hour'] / 1024:.2f} MiB per hour |")
    print(f"| open descriptors after the warm-up | {min(fds)}–{max(fds)} (first third's max "
          f"{chk['fds_first_third_max']}, last third's {chk['fds_last_third_max']}) |")
    print(f"| SIGTERM at the end | exit {s['exit_status']} |")
    print(f"| pass | {'yes' if s['pass'] else 'no: ' + '; '.join(s['reasons'])} |")
    print()
    print("| time | RSS MiB | peak RSS MiB | fds | threads | cache MiB | cache entries "
          "| completions/s | tokens/s | plain p50/p99 ms | TTFT p50/p99 ms | stream p50/p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    next_t = 0.0
    for i, r in enumerate(rows):
        t = float(r["t_s"])
        if t + 1e-9 < next_t and i != len(rows) - 1:
            continue
        next_t = (t // a.every_s + 1) * a.every_s
        ent = int(r["cache_sessions"]) + int(r["cache_prefixes"])
        print(f"| {t:.0f} s | {int(r['rss_kib']) / 1024:.1f} | {int(r['hwm_kib']) / 1024:.1f} "
              f"| {r['fds']} | {r['threads']} | {int(r['cache_bytes']) / 2**20:.1f} | {ent} "
              f"| {float(r['req_per_s']):.0f} | {float(r['tokens_per_s']):.0f} "
              f"| {r['plain_p50_ms']} / {r['plain_p99_ms']} | {r['ttft_p50_ms']} / "
              f"{r['ttft_p99_ms']} | {r['stream_p50_ms']} / {r['stream_p99_ms']} |")


if __name__ == "__main__":
    main()
