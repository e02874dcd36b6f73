#!/usr/bin/env python3
"""Writes the notebooks of this folder: inputs in the shape of nbclient's own test notebooks, with the
outputs nbclient gives them stored as the expected outputs (`tests/it/notebook.rs` runs them with
`cellsci notebook run` and compares outputs the way nbclient's test suite does).

Run with a Python that has nbclient (e.g. the benchmark venv):  /work/bench-venv/bin/python make.py
nbclient stores each stream message as its own output; Jupyter's frontends, and cellsci, merge
consecutive outputs of the same stream, so the expected outputs here are merged that way.
"""
import copy
import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def code(src, tags=None):
    c = nbformat.v4.new_code_cell(src)
    if tags:
        c.metadata["tags"] = tags
    return c


NOTEBOOKS = {
    # update-display-id.ipynb: raw display messages with transient display ids, updated across cells
    "display_ids.ipynb": ([
        code('''ip = get_ipython()
from IPython.display import display


def display_with_id(obj, display_id, update=False, execute_result=False):
    iopub = ip.kernel.iopub_socket
    session = ip.kernel.session
    data, md = ip.display_formatter.format(obj)
    transient = {"display_id": str(display_id)}
    content = {"data": data, "metadata": md, "transient": transient}
    if execute_result:
        msg_type = "execute_result"
        content["execution_count"] = ip.execution_count
    else:
        msg_type = "update_display_data" if update else "display_data"
    session.send(iopub, msg_type, content, parent=ip.parent_header)'''),
        code('display("first")\ndisplay_with_id("a1", "alpha")\ndisplay("last")'),
        code('display_with_id("a2", "alpha")\ndisplay_with_id("b1", "beta")\ndisplay_with_id("a3", "alpha")'),
        code('display_with_id("b2", "beta")\ndisplay_with_id("b3", "beta", update=True)'),
        code('display_with_id("a4", "alpha")\ndisplay_with_id("a5", "alpha", update=True)\n'
             'display_with_id("r1", "result", execute_result=True)'),
        code('display_with_id("r2", "result", update=True)\ndisplay_with_id("nobody", "unknown", update=True)'),
        # the public API: a handle from display(..., display_id=True), updated from a later cell
        code('h = display({"text/plain": "handle v1", "text/html": "<b>v1</b>"}, raw=True, display_id=True)'),
        code('h.update({"text/plain": "handle v2"}, raw=True)\nprint("updated")'),
    ], {}),
    # Clear Output.ipynb
    "clear_output.ipynb": ([
        code('from IPython.display import clear_output, display'),
        code('for i in range(10):\n    clear_output()\n    print(i)'),
        code('print("Hello world")\nclear_output()'),
        code('print("Hello world", end="")\nclear_output(wait=True)  # no output after this'),
        code('print("Hello", end="")\nclear_output(wait=True)  # new output after wait=True\nprint("world", end="")'),
        code('handle0 = display("Hello world", display_id="id0")\nhandle1 = display("Hello", display_id="id1")\n'
             'handle1.update("world")\nhandle2 = display("Hello world", display_id="id2")\n'
             'clear_output()  # clears all output, also with display_ids\n'
             'handle3 = display("Hello world", display_id="id3")\nhandle4 = display("Hello", display_id="id4")\n'
             'clear_output(wait=True)\nhandle4.update("world")  # an update is no output: the clear still waits'),
        code('handle0.update("Goodbye world")  # its output was cleared: nothing to update\n'
             'handle3.update("Goodbye world")  # updates the output of the previous cell'),
        code('print("a")\nclear_output(wait=True)\ndisplay("b")\nclear_output(wait=True)\n'
             'handle5 = display("c", display_id="id5")'),
        code('handle5.update("d")'),
    ], {}),
    # Skip Exceptions with Cell Tags.ipynb
    "raises_exception_tag.ipynb": ([
        code('import sys\nprint("hello", flush=True)\nprint("errored", file=sys.stderr, flush=True)\n# üñîçø∂é\n'
             'raise Exception("message")',
             tags=["raises-exception"]),
        code('print("ok")'),
    ], {}),
    # Skip Execution with Cell Tag.ipynb
    "skip_execution_tag.ipynb": ([
        code('print("a")'),
        code('print("b")\nraise Exception("should not run")', tags=["skip-execution"]),
        code('print("c")'),
    ], {}),
    # Skip Exceptions.ipynb (run with allow_errors)
    "allow_errors.ipynb": ([
        code('raise Exception("message")'),
        code('print("ok")'),
        code('1 / 0'),
        code('"still running"'),
    ], {"allow_errors": True}),
    # Other Comms.ipynb: comm messages to a target the client has no handler for
    "comms.ipynb": ([
        code('from comm import create_comm'),
        code('comm = create_comm("this-comm-tests-a-missing-handler", data={"id": "foo"})'),
        code('comm.send(data={"id": "bar"})\nprint("after the comm")'),
        code('comm.close()\n"closed"'),
    ], {}),
    # streams: consecutive pieces of one stream are one output; stdout and stderr interleave
    "streams.ipynb": ([
        code('import sys\nfor i in range(3):\n    print(i, end=" ", flush=True)\nprint(flush=True)\n'
             'print("err", file=sys.stderr, flush=True)\nprint("out again", flush=True)'),
        code('print("one", flush=True)\nprint("two")'),
        code('import sys\nsys.stderr.write("only stderr\\n")'),
    ], {}),
}


def merge_streams(outputs):
    merged = []
    for o in outputs:
        if (o["output_type"] == "stream" and merged and merged[-1]["output_type"] == "stream"
                and merged[-1]["name"] == o["name"]):
            merged[-1]["text"] += o["text"]
        else:
            merged.append(copy.deepcopy(o))
    return merged


def main():
    os.environ["COLUMNS"], os.environ["LINES"] = "80", "24"
    for name, (cells, opts) in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        nb.cells = cells
        for i, c in enumerate(nb.cells):
            c["id"] = f"cell-{i}"
        NotebookClient(nb, kernel_name="python3", record_timing=False, **opts).execute()
        for c in nb.cells:
            if c.cell_type == "code":
                c.outputs = merge_streams(c.outputs)
        nb.metadata.pop("language_info", None)
        nbformat.write(nb, os.path.join(HERE, name))
        print("wrote", name, file=sys.stderr)


if __name__ == "__main__":
    main()
