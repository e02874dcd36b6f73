#!/usr/bin/env python3
"""Benchmark: `cellsci notebook run` against nbclient and papermill on the same notebooks.

Usage:
    python3 benches/notebook_bench.py [--cellsci target/release/cellsci] [--venv /tmp/cellsci-bench-venv]
                                      [--repeat 3] [--only NAME,...]

The venv (created once if missing, never by the tests) holds ipykernel, nbclient and papermill; all
three tools run the same kernel from it. For every case (empty, 10/100/1000 trivial cells,
stream-heavy, a 20 MB output, sleeps, 300 cells of 20 KB output) the script prints the median wall time of each tool, cellsci's
ratio to each, and peak resident memory (VmHWM): of the host process (the Python process running
nbclient/papermill), and for cellsci of cellsci itself plus its notebook saver process (the kernel
is counted for none of them). Fixed cost is the "empty" case; per-cell cost is
(t(1000) - t(empty)) / 1000. Build cellsci with `cargo build --release` first.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def notebook(sources):
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
        for i, s in enumerate(sources)
    ]
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


CASES = {
    "empty": [],
    "trivial_10": [f"x = {i}" for i in range(10)],
    "trivial_100": [f"x = {i}" for i in range(100)],
    "trivial_1000": [f"x = {i}" for i in range(1000)],
    # stream-heavy: 400k printed lines in 20 cells
    "print_20x20000": ["for i in range(20000):\n    print(i)"] * 20,
    # one 20 MB output (a base64 image)
    "image_20MB": [
        "import base64, os\nfrom IPython.display import display\n"
        "display({'image/png': base64.b64encode(os.urandom(15_000_000)).decode()}, raw=True)"
    ],
    "sleep_5x0.2": ["import time\ntime.sleep(0.2)"] * 5,
    # 300 cells of 20 KB output each (6 MB at the end): what saving after every cell costs as it grows
    "output_300x20KB": ["print('x' * 20000)"] * 300,
}


def ensure_venv(venv):
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "ipykernel", "nbclient", "papermill"])
    # the kernelspec the Python tools use: this venv's own python3 spec
    return py


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def savers(pid):
    """cellsci's notebook saver children of `pid`."""
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                for c in f.read().split():
                    try:
                        with open(f"/proc/{c}/cmdline", "rb") as g:
                            if b"__notebook-saver" in g.read():
                                out.append(int(c))
                    except OSError:
                        pass
    except OSError:
        pass
    return out


def peak_rss_kib(pid, stop, out):
    """Poll VmHWM of `pid` (and of its notebook saver) until `stop` is set; keep the largest sum seen."""
    peaks = {}
    while not stop.is_set():
        host = vm_hwm(pid)
        if host == 0:
            break
        peaks[pid] = max(peaks.get(pid, 0), host)
        for s in savers(pid):
            peaks[s] = max(peaks.get(s, 0), vm_hwm(s))
        out[0] = sum(peaks.values())
        time.sleep(0.005)


def timed(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stop, peak = threading.Event(), [0]
    th = threading.Thread(target=peak_rss_kib, args=(p.pid, stop, peak), daemon=True)
    th.start()
    _, err = p.communicate()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {err.decode()[-2000:]}")
    return dt, peak[0] / 1024.0


NBCLIENT = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3").execute()
nbformat.write(nb, sys.argv[2])
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cellsci", default=os.path.join(REPO, "target", "release", "cellsci"))
    ap.add_argument("--venv", default="/tmp/cellsci-bench-venv", help="venv with ipykernel, nbclient, papermill")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--tools", default="cellsci,nbclient,papermill", help="comma-separated tools")
    args = ap.parse_args()
    py = ensure_venv(args.venv)
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = args.venv
    env["PATH"] = os.path.join(args.venv, "bin") + os.pathsep + env.get("PATH", "")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.pop("JUPYTER_PATH", None)
    only = [c for c in args.only.split(",") if c]
    work = tempfile.mkdtemp(prefix="cellsci-bench-")
    rows = []
    for name, sources in CASES.items():
        if only and name not in only:
            continue
        src = os.path.join(work, f"{name}.ipynb")
        with open(src, "w") as f:
            json.dump(notebook(sources), f)
        tools = {
            "cellsci": lambda o: [args.cellsci, "-q", "notebook", "run", src, o, "--python", py],
            "nbclient": lambda o: [py, "-c", NBCLIENT, src, o],
            "papermill": lambda o: [py, "-m", "papermill", "-k", "python3", "--no-progress-bar", src, o],
        }
        res = {}
        wanted = args.tools.split(",")
        for tool, cmd in tools.items():
            if tool not in wanted:
                continue
            times, mems = [], []
            for r in range(args.repeat):
                out = os.path.join(work, f"{name}.{tool}.{r}.ipynb")
                dt, mem = timed(cmd(out), env)
                times.append(dt)
                mems.append(mem)
            res[tool] = (statistics.median(times), max(mems))
            print(f"  {name:16} {tool:10} {res[tool][0]:8.3f} s  {res[tool][1]:7.1f} MiB", file=sys.stderr, flush=True)
        rows.append((name, res))

    print()
    print("| case | cellsci s | nbclient s | papermill s | cellsci/nbclient | cellsci/papermill | peak MiB cellsci / nbclient / papermill |")
    print("|---|---|---|---|---|---|---|")
    nan = (float("nan"), float("nan"))
    for name, r in rows:
        c, n, p = (r.get(t, nan) for t in ("cellsci", "nbclient", "papermill"))
        print(
            f"| {name} | {c[0]:.3f} | {n[0]:.3f} | {p[0]:.3f} | {c[0] / n[0]:.2f} | {c[0] / p[0]:.2f} | "
            f"{c[1]:.0f} / {n[1]:.0f} / {p[1]:.0f} |"
        )
    by = dict(rows)
    if "empty" in by and "trivial_1000" in by and all(t in by["empty"] for t in ("cellsci", "nbclient", "papermill")):
        print()
        for tool in ("cellsci", "nbclient", "papermill"):
            fixed = by["empty"][tool][0]
            per = (by["trivial_1000"][tool][0] - fixed) / 1000
            print(f"{tool:10} fixed {fixed * 1000:7.1f} ms   per cell {per * 1000:7.2f} ms")
        cf, nf = by["empty"]["cellsci"][0], by["empty"]["nbclient"][0]
        cp = (by["trivial_1000"]["cellsci"][0] - cf) / 1000
        npc = (by["trivial_1000"]["nbclient"][0] - nf) / 1000
        print(f"fixed cost ratio cellsci/nbclient: {cf / nf:.2f} (aim <= 0.4); per-cell ratio: {cp / npc:.2f} (aim <= 0.9)")


if __name__ == "__main__":
    main()
