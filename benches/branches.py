#!/usr/bin/env python3
"""Wall time of 1, 2 and 4 parallel branches (`cellsci run --strategy best_of_n`), as a ratio to one.

Each branch is one node: a generation request and a report request that each take 1 s at a loopback fake
OpenAI server, and a notebook whose one cell sleeps 1 s. The goal (issue "Parallel exploration") is 4
branches <= 1.3x one branch. A benchmark, not a test: it prints figures, it asserts nothing.

    python3 benches/branches.py [--cellsci target/release/cellsci] [--python .venv/bin/python] [--reps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CELL = """import json, os, time
time.sleep(1)
m = {"models": {"ridge_baseline": {"per_fold": {"0": {"PCC": 0.1}, "1": {"PCC": 0.1}}},
                "model": {"per_fold": {"0": {"PCC": 0.3}, "1": {"PCC": 0.3}}}}, "winner": "model"}
json.dump(m, open(os.path.join(os.environ["OUTPUT_DIR"], "metrics.json"), "w"))
"""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        system = body["messages"][0]["content"]
        time.sleep(1.0)
        if "discussion section" in system:
            text = "The model did better than the baseline."
        else:
            text = json.dumps({"cells": [{"id": "T1", "name": "all", "purpose": "bench", "code": CELL}]})
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def run(cellsci, python, url, branches):
    d = tempfile.mkdtemp(prefix="cellsci-bench-")
    os.makedirs(os.path.join(d, "stage1", "20260101_000000"))
    open(os.path.join(d, "stage1", "20260101_000000", "REFERENCE_DATA.h5"), "w").write("x")
    cfg = {"dataset_name": "BENCH",
           "paths": {"stage1_analysis_dir": "stage1", "design_execution_root": "out"},
           "llm": {"model": "bench", "base_url": url, "api_key": "sk-bench-00000000000", "timeout": 60},
           "experiment": {"primary_metric": "PCC", "max_iterations": branches, "success_threshold": 0.99},
           "exec": {"timeout_seconds": 60, "python": python},
           "search": {"branches": branches}}
    json.dump(cfg, open(os.path.join(d, "cfg.json"), "w"))
    t = time.monotonic()
    p = subprocess.run([cellsci, "-q", "--config", "cfg.json", "run", "--strategy", "best_of_n"], cwd=d,
                       capture_output=True, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"cellsci failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cellsci", default="target/release/cellsci")
    ap.add_argument("--python", default=".venv/bin/python")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    cellsci, python = os.path.abspath(a.cellsci), os.path.abspath(a.python)
    base = None
    print("| branches | wall s (median of %d) | ratio to 1 branch |" % a.reps)
    print("|---|---|---|")
    for n in (1, 2, 4):
        times = sorted(run(cellsci, python, url, n) for _ in range(a.reps))
        med = times[len(times) // 2]
        base = base or med
        print(f"| {n} | {med:.2f} | {med / base:.2f} |")
    srv.shutdown()


if __name__ == "__main__":
    main()
