#!/usr/bin/env python3
"""Runs nbclient's own test notebooks (from nbclient's source distribution, which `.ci/run` unpacks into
the test venv) through nbclient itself, as nbclient's `test_run_all_notebooks` does, and writes each
result to OUT_DIR. `tests/it/notebook.rs` runs the same notebooks with `cellsci notebook run` in the same
kernel and compares the two.

Usage: run_nbclient.py FILES_DIR OUT_DIR NAME[:allow_errors] ...

nbclient stores each stream message as its own output; Jupyter's frontends, and cellsci, merge
consecutive outputs of the same stream, so the outputs written here are merged that way.
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

# the stream merging of the nbclient-style notebooks' generator
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbclient_style"))
from make import merge_streams  # noqa: E402


def main():
    files, out = sys.argv[1], sys.argv[2]
    os.environ["COLUMNS"], os.environ["LINES"] = "80", "24"
    for arg in sys.argv[3:]:
        name, _, flag = arg.partition(":")
        nb = nbformat.read(os.path.join(files, name), as_version=4)
        # as nbclient's test suite: the notebook's folder is the kernel's working directory
        NotebookClient(nb, kernel_name="python3", allow_errors=flag == "allow_errors",
                       resources={"metadata": {"path": files}}).execute()
        for c in nb.cells:
            if c.cell_type == "code":
                c.outputs = merge_streams(c.outputs)
        nbformat.write(nb, os.path.join(out, name))


if __name__ == "__main__":
    main()
