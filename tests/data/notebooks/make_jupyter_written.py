"""Writes jupyter_written_45.ipynb and jupyter_written_44.ipynb with the real nbformat library.

Run with the test venv: .venv/bin/python tests/data/notebooks/make_jupyter_written.py
The notebooks hold every cell and output type, unknown metadata, unicode, ANSI tracebacks and floats,
so the round-trip test can check that cellsci loses nothing Jupyter wrote.
"""
import os
import nbformat
from nbformat.v4 import (new_notebook, new_code_cell, new_markdown_cell, new_raw_cell, new_output)

here = os.path.dirname(os.path.abspath(__file__))
png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\n"


def cells():
    return [
        new_markdown_cell("# Título ünïcödé 🧪\n\nSome *markdown* with an attachment ![a](attachment:a.png)",
                          attachments={"a.png": {"image/png": png}}, metadata={"tags": ["intro"]}),
        new_code_cell("import numpy as np\nx = np.arange(3)\nx", execution_count=1,
                      metadata={"collapsed": False, "scrolled": True, "custom": {"nested": [1, 2.5, None, True]},
                                "subtask": {"id": "c1", "name": "load", "purpose": "données"}},
                      outputs=[new_output("execute_result", data={"text/plain": "array([0, 1, 2])"},
                                          execution_count=1)]),
        new_code_cell("print('a\\nb')\nimport sys; print('err', file=sys.stderr)", execution_count=2,
                      outputs=[new_output("stream", name="stdout", text="a\nb\n"),
                               new_output("stream", name="stderr", text="err\n")]),
        new_code_cell("display(...)", execution_count=3,
                      outputs=[new_output("display_data",
                                          data={"image/png": png, "text/plain": "<Figure size 640x480 with 1 Axes>",
                                                "text/html": "<b>bold</b>\n<i>it</i>",
                                                "application/json": {"a": [1, 2, {"b": 0.1}]},
                                                "image/svg+xml": "<svg>\n</svg>"},
                                          metadata={"image/png": {"width": 600, "height": 400}})]),
        new_code_cell("1/0", execution_count=4,
                      outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                          traceback=["\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
                                                     "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"])]),
        new_code_cell("", execution_count=None),
        new_raw_cell("raw text\n\twith tab", metadata={"format": "text/x-rst"}),
    ]


for minor in (5, 4):
    nb = new_notebook(cells=cells(), metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": "3.11.7", "codemirror_mode": {"name": "ipython", "version": 3}},
        "unknown_tool": {"setting": 1e-05, "list": ["ß", 3]},
    })
    nb.nbformat_minor = minor
    if minor < 5:
        for c in nb.cells:
            c.pop("id", None)
    nbformat.validate(nb)
    nbformat.write(nb, os.path.join(here, f"jupyter_written_4{minor}.ipynb"))
