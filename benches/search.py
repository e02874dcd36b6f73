#!/usr/bin/env python3
"""Search policies on a scripted task with heterogeneous nodes: slot utilisation, time to the threshold and
the best score, for serial, best_of_n, greedy, mcts and evolve (issue "Search that finds more per hour").

The task, served by a loopback fake OpenAI server (standard library only):
- a draft scores U(0.30, 0.90); an improvement scores its parent's score plus U(-0.02, 0.10); a repair of a
  buggy node scores like a draft; a crossover scores the better parent's plus U(0.00, 0.09);
- one notebook in five trains for 4.5 s, the others for 0.2-0.9 s; one in four is buggy (raises);
- generation replies take 0.3 s, report narratives 0.05 s. Scores and durations are drawn from a seeded
  generator by the order of requests, so a run is repeatable for one policy.
The score a notebook gets is decided when it is generated and written into the notebook itself, so the
cellsci side is real: real kernels, real cells, real metrics.json files.

Figures (from each run's summary, records `t_start`/`t_end`):
- utilisation = node-seconds / (search span x slots), the span from the first node's start to the last
  node's end;
- time to the threshold = seconds from the first node's start to the end of the first node that met it;
- best score at the same node budget.
A benchmark, not a test: it prints a table, it asserts nothing.

    python3 benches/search.py [--cellsci target/release/cellsci] [--python .venv/bin/python] [--nodes 24]
                              [--slots 4] [--threshold 0.85] [--reps 3] [--policies serial,best_of_n,...]
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"rng": random.Random(1), "lock": threading.Lock()}

CELL = """import json, os, time
time.sleep({secs})
{bug}
folds = {{str(i): {score} + 0.01 * (i - 2) for i in range(5)}}
m = {{"models": {{"ridge_baseline": {{"per_fold": {{f: {{"PCC": 0.2}} for f in folds}}}},
                "model": {{"per_fold": {{f: {{"PCC": v}} for f, v in folds.items()}}, "aggregate": {{"PCC": {score}}}}}}},
      "winner": "model"}}
json.dump(m, open(os.path.join(os.environ["OUTPUT_DIR"], "metrics.json"), "w"))
print("SCORE", {score})
"""


def draw(kind, parents):
    """Score, training seconds and bugginess of the next notebook."""
    with STATE["lock"]:
        r = STATE["rng"]
        if kind == "improve":
            score = parents[0] + r.uniform(-0.02, 0.10)
        elif kind == "crossover":
            score = max(parents) + r.uniform(0.0, 0.09)
        else:
            score = r.uniform(0.30, 0.90)
        secs = 4.5 if r.random() < 0.2 else r.uniform(0.2, 0.9)
        buggy = r.random() < 0.25
    return min(score, 0.999), secs, buggy


def kind_of(user):
    m = re.search(r"Combine two earlier notebooks that both worked: attempt \d+ scored ([0-9]+\.[0-9]+) and attempt \d+ scored ([0-9]+\.[0-9]+)", user)
    if m:
        return "crossover", [float(m.group(1)), float(m.group(2))]
    m = re.search(r"Start from this earlier notebook \(attempt \d+\)\. It scored ([0-9]+\.[0-9]+)", user)
    if m:
        return "improve", [float(m.group(1))]
    if "Start from this earlier notebook" in user:
        return "debug", []
    return "draft", []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        if "discussion section" in system:
            time.sleep(0.05)
            text = "The model did better than the baseline."
        else:
            time.sleep(0.3)
            kind, parents = kind_of(user)
            score, secs, buggy = draw(kind, parents)
            code = CELL.format(secs=round(secs, 2), score=round(score, 4),
                               bug="raise ValueError('a bug')" if buggy else "")
            text = json.dumps({"cells": [{"id": "T1", "name": "train", "purpose": "bench", "code": code}]})
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def run(cellsci, python, url, policy, nodes, slots, threshold, seed):
    STATE["rng"] = random.Random(seed)
    d = tempfile.mkdtemp(prefix="cellsci-search-")
    os.makedirs(os.path.join(d, "stage1", "20260101_000000"))
    open(os.path.join(d, "stage1", "20260101_000000", "REFERENCE_DATA.h5"), "w").write("x")
    cfg = {"dataset_name": "BENCH",
           "paths": {"stage1_analysis_dir": "stage1", "design_execution_root": "out"},
           "llm": {"model": "bench", "base_url": url, "api_key": "sk-bench-00000000000", "timeout": 60},
           # never met: every policy spends the whole node budget; the bench reads when a score first passed
           # the threshold from the records
           "experiment": {"primary_metric": "PCC", "max_iterations": nodes, "success_threshold": 2.0},
           "exec": {"timeout_seconds": 60, "python": python, "max_fix_rounds": 0},
           "search": {"strategy": policy, "branches": 1 if policy == "serial" else slots, "seed": seed}}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    t0 = time.time()
    p = subprocess.run([cellsci, "--config", "config.json", "run"], cwd=d, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{policy}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    summ = [f for f in os.listdir(os.path.join(d, "out")) if f.startswith("phase2_loop_summary_")][0]
    s = json.load(open(os.path.join(d, "out", summ)))
    recs = [r for r in s["iterations"] if r["status"] != "CANCELLED"]
    start = min(r["t_start"] for r in recs)
    end = max(r["t_end"] for r in recs)
    busy = sum(r["t_end"] - r["t_start"] for r in recs)
    used = 1 if policy == "serial" else slots
    met = [r["t_end"] - start for r in recs if r["status"] == "VALID" and r["score"] >= threshold]
    return {"util": busy / ((end - start) * used), "to_threshold": min(met) if met else None,
            "best": max([r["score"] for r in recs if r["status"] == "VALID"] or [-999.0]), "nodes": len(recs), "span": end - start, "wall": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cellsci", default="target/release/cellsci")
    ap.add_argument("--python", default=".venv/bin/python")
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--policies", default="serial,best_of_n,greedy,mcts,evolve")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    python = os.path.abspath(a.python)
    cellsci = os.path.abspath(a.cellsci)
    rows = {}
    for pol in a.policies.split(","):
        rows[pol] = [run(cellsci, python, url, pol, a.nodes, a.slots, a.threshold, seed) for seed in range(1, a.reps + 1)]
        for r in rows[pol]:
            print(f"{pol}: {json.dumps(r)}", file=sys.stderr)
    serial_t = [r["to_threshold"] for r in rows.get("serial", []) if r["to_threshold"] is not None]
    base = statistics.median(serial_t) if serial_t else None
    print(f"{a.nodes} nodes, {a.slots} slots, threshold {a.threshold}, {a.reps} seeds (medians)")
    print("| policy | utilisation | time to threshold (s) | vs serial | met in | best score | span (s) |")
    print("|---|---|---|---|---|---|---|")
    for pol, rs in rows.items():
        ts = [r["to_threshold"] for r in rs if r["to_threshold"] is not None]
        t = statistics.median(ts) if ts else None
        ratio = f"{t / base:.2f}x" if (t is not None and base) else "-"
        print(f"| {pol} | {statistics.median(r['util'] for r in rs):.2f} | {f'{t:.1f}' if t is not None else 'never'} | "
              f"{ratio} | {len(ts)}/{len(rs)} | {statistics.median(r['best'] for r in rs):.3f} | "
              f"{statistics.median(r['span'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
