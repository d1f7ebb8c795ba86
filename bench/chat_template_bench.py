#!/usr/bin/python3
"""bench/chat_template_bench.py - Jinja2's parse and render cost for a chat template, set up as
transformers sets it up; the reference for bench/chat_template_bench.c's figures.

/usr/bin/python3 bench/chat_template_bench.py TEMPLATE tests/fixtures/chat_templates/conversations.json N
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
import make_chat_template_fixtures as fixtures  # noqa: E402

env = fixtures.make_env()
with open(sys.argv[1], encoding="utf-8") as f:
    src = f.read()
with open(sys.argv[2], encoding="utf-8") as f:
    conv = json.load(f)["system_multi_turn"]
n = int(sys.argv[3])
t0 = time.perf_counter()
for _ in range(max(1, n // 10)):
    env.from_string(src)
parse = (time.perf_counter() - t0) / max(1, n // 10)
t = env.from_string(src)
t0 = time.perf_counter()
for _ in range(n):
    t.render(messages=conv, add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
             tools=None, documents=None)
render = (time.perf_counter() - t0) / n
print(f"{sys.argv[1]}: Jinja2 parse {parse * 1e6:.1f} us, render {render * 1e6:.1f} us")
