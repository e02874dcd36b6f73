#!/usr/bin/env python3
"""What one save costs as a notebook grows: `cellsci __notebook-saver` (the helper `notebook run` hands each
finished cell to) fed one cell at a time, each cell 20 KB of output, with the time from sending a cell to the
file holding it. A benchmark, not a test: it prints figures, it asserts nothing.

The saver is driven directly, so the figures are the save's own cost, with no kernel sharing the cores: the
median latency per save over each tenth of the run (a save that rewrote the whole file grows with the
notebook; one that writes what the cell added stays flat), and the total.

    python3 benches/notebook_saver.py [--cellsci target/release/cellsci] [--cells 300] [--kb 20]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cellsci", default=os.path.join(REPO, "target", "release", "cellsci"))
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--kb", type=int, default=20)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cellsci-saver-bench-")
    out = os.path.join(work, "out.ipynb")
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
         "source": f"print('x' * {args.kb * 1024})"}
        for i in range(args.cells)
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(out, "w") as f:
        json.dump(nb, f, indent=1)
    p = subprocess.Popen([args.cellsci, "__notebook-saver", out], stdin=subprocess.PIPE)
    line = "x" * (args.kb * 1024 - 1) + "\n"

    def state():
        st = os.stat(out)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    lat = []
    t_all = time.perf_counter()
    for i in range(args.cells):
        before = state()
        change = {"op": "cell", "i": i, "count": i + 1, "timing": None,
                  "outputs": [{"output_type": "stream", "name": "stdout", "text": line}]}
        t0 = time.perf_counter()
        p.stdin.write((json.dumps(change) + "\n").encode())
        p.stdin.flush()
        while state() == before:
            time.sleep(0.0002)
        lat.append(time.perf_counter() - t0)
    p.stdin.close()
    p.wait()
    total = time.perf_counter() - t_all
    with open(out) as f:
        back = json.load(f)
    whole = all(len(c["outputs"][0]["text"]) > 0 for c in back["cells"])
    size = os.path.getsize(out) / 1e6
    tenth = max(1, args.cells // 10)
    meds = [statistics.median(lat[k:k + tenth]) * 1000 for k in range(0, args.cells, tenth)]
    print(f"{args.cells} cells x {args.kb} KB ({size:.1f} MB at the end), {os.path.basename(args.cellsci)}: "
          f"total {total:.2f} s, every cell saved and readable: {whole}")
    print("median ms per save, by tenth of the run: " + " ".join(f"{m:.2f}" for m in meds))
    print(f"last tenth / first tenth: {meds[-1] / meds[0]:.1f}x")


if __name__ == "__main__":
    main()
