#!/usr/bin/python3
"""deploy/monitoring/check_metrics.py - every yunmin_* series the alert rules and the Grafana
dashboard query is one a running yunmind exports (histograms by their _bucket series), so a
renamed metric cannot leave a silent panel or an alert that never fires.

    deploy/monitoring/check_metrics.py BUILD/server/yunmind
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
exprs = []
with open(os.path.join(here, "alerts.yaml")) as f:
    exprs.append(f.read())
with open(os.path.join(here, "yunmind-dashboard.json")) as f:
    for p in json.load(f)["panels"]:
        exprs += [t["expr"] for t in p["targets"]]
wanted = set(re.findall(r"\b(yunmin_[a-z_]+)", "\n".join(exprs)))

env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
with tempfile.TemporaryDirectory() as state:
    proc = subprocess.Popen([sys.argv[1], "--port", "0", "--threads", "1", "--state-dir", state,
                             "--session-store", "redis://127.0.0.1:1/0", "--state-secret", "x"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        port = re.search(r":(\d+)\s*$", proc.stdout.readline().decode()).group(1)
        text = ""
        for _ in range(300):
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port).read().decode()
                # The second scrape also shows the first one in yunmin_http_requests_total.
                if re.search(r"^yunmin_http_requests_total\{", text, re.M):
                    break
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(60)
exported = set(re.findall(r"^(yunmin_[a-z_]+)", text, re.M))
missing = sorted(n for n in wanted if n not in exported)
if missing:
    sys.exit("check_metrics: not exported by yunmind: " + ", ".join(missing))
print("check_metrics: %d series used, all exported" % len(wanted))
