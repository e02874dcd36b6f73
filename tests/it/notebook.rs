//! Tests for the notebook area: faithful read/write of Jupyter-written notebooks, the Lua API, and
//! `cellsci notebook run` with a real ipykernel.

use std::path::Path;

use crate::kernel::{lua, python, validate};
use crate::util;
use crate::util::ok;

fn data(name: &str) -> std::path::PathBuf {
    util::repo().join("tests/data/notebooks").join(name)
}

/// True when two JSON files hold the same document (compared by Python's json, floats included).
#[track_caller]
fn same_json(a: &Path, b: &Path) {
    let o = std::process::Command::new(python())
        .args(["-c", "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(0 if a==b else 1)"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{} and {} differ: {}", a.display(), b.display(), util::text(&o));
}

#[test]
fn jupyter_written_notebooks_round_trip_with_nothing_lost() {
    let d = util::tempdir();
    for name in ["jupyter_written_45.ipynb", "jupyter_written_44.ipynb"] {
        let src = data(name);
        let o = lua(
            d.path(),
            &format!(
                "local nb = assert(notebook.read({:?}))\nassert(nb:len() == 7)\nassert(nb:write('rt.ipynb'))",
                src.display().to_string()
            ),
        );
        ok(&o);
        let rt = d.path().join("rt.ipynb");
        same_json(&src, &rt);
        validate(&rt);
        // Byte for byte too (floats are spelled as Python spells them).
        let a = std::fs::read_to_string(&src).unwrap();
        let b = std::fs::read_to_string(&rt).unwrap();
        assert_eq!(a, b, "{name} is written back byte for byte");
    }
}

#[test]
fn lua_notebook_api_edits_cells_and_writes_valid_notebooks() {
    let d = util::tempdir();
    let src = data("jupyter_written_45.ipynb");
    let o = lua(
        d.path(),
        &format!(
            r##"
local nb = assert(notebook.read({src:?}))
local c = nb:cell(2)
assert(c.cell_type == "code" and c.source == "import numpy as np\nx = np.arange(3)\nx", c.source)
assert(c.metadata.subtask.purpose == "données")
assert(c.outputs[1].data["text/plain"] == "array([0, 1, 2])")
assert(nb:cell(3).outputs[1].text == "a\nb\n")
assert(nb:cell(1).id and #nb:cell(1).id > 0)

local n = notebook.new()
assert(n:len() == 0)
assert(n:push("print(1)") == 1)
n:push({{cell_type = "markdown", source = "# Title\ntext"}})
n:insert(1, {{cell_type = "code", source = "x = 1\n", metadata = {{subtask = {{id = "c0", name = "n", purpose = "p"}}}}}})
assert(n:len() == 3 and #n == 3)
assert(n:cell(1).metadata.subtask.id == "c0")
assert(n:cell(3).cell_type == "markdown")
n:set_source(2, "print(2)\nprint(3)")
assert(n:cell(2).source == "print(2)\nprint(3)")
local removed = n:remove(3)
assert(removed.cell_type == "markdown" and n:len() == 2)
assert(n:cell(1).id ~= n:cell(2).id)
local m = n.metadata
m.execution = {{hypergraph = {{hyperedges = {{ {{tail = {{"c0"}}, head = "c1"}} }}}}}}
n.metadata = m
assert(n.metadata.execution.hypergraph.hyperedges[1].head == "c1")
n:set_outputs(2, {{outputs = {{ {{output_type = "stream", name = "stdout", text = "2\n3\n"}} }}, execution_count = 5}})
assert(n:cell(2).execution_count == 5)
local t = n:to_table()
assert(t.nbformat == 4 and t.nbformat_minor == 5 and #t.cells == 2)
assert(type(t.cells[2].source) == "table", "sources are stored as line lists, like Jupyter")
assert(n:write("sub/new.ipynb"))
local back = notebook.from_table(t)
assert(back:len() == 2 and back:cell(2).outputs[1].text == "2\n3\n")
back:clear_outputs()
assert(#back:cell(2).outputs == 0 and back:cell(2).execution_count == nil)
assert(back:write("cleared.ipynb"))

local ok1, e1 = pcall(function() return n:cell(9) end)
assert(not ok1 and tostring(e1):find("t.lua:%d+: cell index 9 out of range"), tostring(e1))
local ok2, e2 = pcall(function() n:push({{cell_type = "weird"}}) end)
assert(not ok2 and tostring(e2):find("cell_type"), tostring(e2))

local none, err = notebook.read("missing.ipynb")
assert(none == nil and err.kind == "not_found", tostring(err))
local f = io.open("bad.ipynb", "w"); f:write("{{ not json"); f:close()
local bad, err2 = notebook.read("bad.ipynb")
assert(bad == nil and err2.kind == "invalid", tostring(err2))
local f3 = io.open("v3.ipynb", "w"); f3:write('{{"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "metadata": {{}}}}'); f3:close()
local v3, err3 = notebook.read("v3.ipynb")
assert(v3 == nil and err3.message:find("nbformat 3"), tostring(err3))

-- a 4.4 notebook gets no ids (the 4.4 schema forbids them)
local old = assert(notebook.read({old:?}))
old:push("y = 2")
assert(old:cell(old:len()).id == nil)
assert(old:write("old.ipynb"))
"##,
            src = src.display().to_string(),
            old = data("jupyter_written_44.ipynb").display().to_string()
        ),
    );
    ok(&o);
    for f in ["sub/new.ipynb", "cleared.ipynb", "old.ipynb"] {
        validate(&d.path().join(f));
    }
}

fn write_nb(dir: &Path, name: &str, cells: &[&str]) -> std::path::PathBuf {
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"cell_type": "code", "execution_count": null, "id": format!("c{i}"), "metadata": {},
                               "outputs": [], "source": s})
        })
        .collect();
    let nb = serde_json::json!({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "P", "language": "python"}},
                                "nbformat": 4, "nbformat_minor": 5});
    util::write(dir, name, &serde_json::to_string_pretty(&nb).unwrap())
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn stdout_of(cell: &serde_json::Value) -> String {
    cell["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["output_type"] == "stream")
        .map(|o| o["text"].as_array().map(|a| a.iter().map(|l| l.as_str().unwrap()).collect()).unwrap_or_default())
        .collect::<Vec<String>>()
        .join("")
}

#[test]
fn notebook_run_executes_every_cell_and_saves_a_valid_notebook() {
    let d = util::tempdir();
    std::fs::create_dir_all(d.path().join("wd")).unwrap();
    let nb = write_nb(
        d.path(),
        "in.ipynb",
        &[
            "import os\nprint(os.environ['GREETING'], os.path.basename(os.getcwd()))",
            "",
            "x = 6 * 7\nx",
            "print('π ✓')",
        ],
    );
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "out.ipynb", "--python"])
        .arg(python())
        .args(["--env", "GREETING=hello", "--cwd", "wd", "--log-output", "--timeout", "60"])
        .output()
        .unwrap();
    let text = ok(&o);
    assert!(text.contains("hello wd"), "--log-output shows cell output: {text}");
    let out = d.path().join("out.ipynb");
    validate(&out);
    let v = read_json(&out);
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(stdout_of(&cells[0]), "hello wd\n");
    assert_eq!(cells[0]["execution_count"], 1);
    assert!(cells[1]["execution_count"].is_null(), "empty cells are skipped");
    assert_eq!(cells[2]["outputs"][0]["data"]["text/plain"][0], "42");
    assert_eq!(stdout_of(&cells[3]), "π ✓\n");
    assert!(cells[0]["metadata"]["execution"]["shell.execute_reply"].is_string(), "timing recorded");
    assert_eq!(read_json(&nb)["cells"][0]["outputs"], serde_json::json!([]), "the input is not touched");
}

#[test]
fn notebook_run_stops_at_an_error_unless_errors_are_allowed() {
    let d = util::tempdir();
    write_nb(d.path(), "in.ipynb", &["print('one')", "1/0", "print('three')"]);
    let o = util::cellsci(d.path()).args(["notebook", "run", "in.ipynb", "--python"]).arg(python()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", util::text(&o));
    assert!(util::text(&o).contains("ZeroDivisionError"));
    let v = read_json(&d.path().join("in.out.ipynb"));
    assert_eq!(v["cells"][1]["outputs"][0]["ename"], "ZeroDivisionError");
    assert!(v["cells"][2]["execution_count"].is_null(), "cells after the error are not run");

    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "all.ipynb", "--allow-errors", "--python"])
        .arg(python())
        .output()
        .unwrap();
    ok(&o);
    let v = read_json(&d.path().join("all.ipynb"));
    assert_eq!(stdout_of(&v["cells"][2]), "three\n");
}

#[test]
fn notebook_run_saves_after_every_cell_so_a_crash_keeps_finished_cells() {
    let d = util::tempdir();
    // The second cell kills cellsci itself (the kernel's parent) with SIGKILL: no clean-up can run.
    write_nb(d.path(), "in.ipynb", &["print('finished')", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"]);
    let o = util::cellsci(d.path()).args(["notebook", "run", "in.ipynb", "--python"]).arg(python()).output().unwrap();
    assert_eq!(o.status.code(), None, "cellsci was killed");
    let out = d.path().join("in.out.ipynb");
    validate(&out);
    let v = read_json(&out);
    assert_eq!(stdout_of(&v["cells"][0]), "finished\n");
    assert_eq!(v["metadata"]["cellsci"]["run"]["status"], "running", "a killed run never says it finished");
}

#[test]
fn notebook_run_keeps_a_20mb_output_intact_across_later_saves() {
    let d = util::tempdir();
    // Large cells are not kept in memory between saves: later saves copy them from the previous file.
    write_nb(
        d.path(),
        "in.ipynb",
        &[
            "import base64, os\nfrom IPython.display import display\ndata = base64.b64encode(os.urandom(15_000_000)).decode()\ndisplay({'image/png': data}, raw=True)",
            "print(len(data))",
            "print(data[:12])",
        ],
    );
    let o = util::cellsci(d.path()).args(["notebook", "run", "in.ipynb", "--python"]).arg(python()).output().unwrap();
    ok(&o);
    let out = d.path().join("in.out.ipynb");
    validate(&out);
    let v = read_json(&out);
    let png = v["cells"][0]["outputs"][0]["data"]["image/png"].as_str().unwrap();
    assert_eq!(png.len(), 20_000_000);
    assert_eq!(stdout_of(&v["cells"][1]), "20000000\n");
    assert_eq!(stdout_of(&v["cells"][2]), format!("{}\n", &png[..12]));
}

/// nbclient's test suite's `normalize_output`: output metadata dropped, memory addresses and IPython's
/// input names (`Cell In[3]`, `/tmp/ipykernel_…/….py`) replaced, tracebacks without ANSI codes; text
/// lists joined.
fn normalize_output(o: &serde_json::Value) -> serde_json::Value {
    let addr = regex::Regex::new(r"0x[0-9a-fA-F]+").unwrap();
    let input = regex::Regex::new(r"Cell In\[\d+\]|/[^\s,]*ipykernel_\d+/\d+\.py|<ipython-input-[^>]*>").unwrap();
    let ansi = regex::Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").unwrap();
    let join = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => serde_json::json!(a.iter().filter_map(|x| x.as_str()).collect::<String>()),
        x => x.clone(),
    };
    let mut o = o.as_object().unwrap().clone();
    o.remove("metadata");
    if let Some(t) = o.get("text").map(join) {
        o.insert("text".into(), serde_json::json!(addr.replace_all(t.as_str().unwrap(), "<HEXADDR>")));
    }
    if let Some(serde_json::Value::Object(d)) = o.get_mut("data") {
        for (_, v) in d.iter_mut() {
            if let serde_json::Value::String(s) = join(v) {
                *v = serde_json::json!(addr.replace_all(&s, "<HEXADDR>"));
            }
        }
    }
    if let Some(serde_json::Value::Array(tb)) = o.get_mut("traceback") {
        for l in tb.iter_mut() {
            let s = ansi.replace_all(l.as_str().unwrap(), "").into_owned();
            *l = serde_json::json!(input.replace_all(&s, "<IPY-INPUT>"));
        }
    }
    serde_json::Value::Object(o)
}

/// Run one of the notebooks written in the shape of nbclient's test notebooks (see
/// tests/data/notebooks/nbclient_style/make.py) and compare every cell's outputs and execution count
/// with what nbclient produced, as nbclient's own `assert_notebooks_equal` does.
#[track_caller]
fn same_outputs_as_nbclient(name: &str, args: &[&str]) {
    let d = util::tempdir();
    let src = util::repo().join("tests/data/notebooks/nbclient_style").join(name);
    let o = util::cellsci(d.path())
        .args(["notebook", "run"])
        .arg(&src)
        .arg("out.ipynb")
        .arg("--python")
        .arg(python())
        .args(args)
        .env("COLUMNS", "80")
        .env("LINES", "24")
        .output()
        .unwrap();
    ok(&o);
    let out = d.path().join("out.ipynb");
    validate(&out);
    let (want, got) = (read_json(&src), read_json(&out));
    let (want, got) = (want["cells"].as_array().unwrap(), got["cells"].as_array().unwrap());
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let norm = |c: &serde_json::Value| -> Vec<serde_json::Value> {
            c["outputs"].as_array().map(|a| a.iter().map(normalize_output).collect()).unwrap_or_default()
        };
        assert_eq!(
            serde_json::json!(norm(g)),
            serde_json::json!(norm(w)),
            "{name}: outputs of cell {} (got, then nbclient's)",
            i + 1
        );
        assert_eq!(g["execution_count"], w["execution_count"], "{name}: execution count of cell {}", i + 1);
    }
}

/// Issue 13: `update_display_data` (and a new display with a used id) left earlier outputs with that
/// display id unchanged when they were in an earlier cell.
#[test]
fn display_updates_reach_every_earlier_output_with_that_id_across_cells() {
    same_outputs_as_nbclient("display_ids.ipynb", &[]);
}

/// Issue 13: `clear_output(wait=True)` clears at the next output (an update is none), and a cleared
/// output no longer receives updates by its display id.
#[test]
fn clear_output_waits_for_the_next_output_and_forgets_cleared_display_ids() {
    same_outputs_as_nbclient("clear_output.ipynb", &[]);
}

/// Issue 13: a cell tagged `raises-exception` stopped the run; its error is expected.
#[test]
fn a_cell_tagged_raises_exception_does_not_stop_the_run() {
    same_outputs_as_nbclient("raises_exception_tag.ipynb", &[]);
}

/// Issue 13: a cell tagged `skip-execution` was run.
#[test]
fn a_cell_tagged_skip_execution_is_not_run() {
    same_outputs_as_nbclient("skip_execution_tag.ipynb", &[]);
}

/// `--allow-errors` runs every cell and keeps each error, as nbclient's `allow_errors`.
#[test]
fn allow_errors_runs_every_cell_and_keeps_each_error() {
    same_outputs_as_nbclient("allow_errors.ipynb", &["--allow-errors"]);
}

/// Comm messages (a comm with no handler on our side) make no output and no error.
#[test]
fn comm_messages_are_ignored_cleanly() {
    same_outputs_as_nbclient("comms.ipynb", &[]);
}

/// Consecutive pieces of one stream are one output; stdout and stderr interleaving is kept.
#[test]
fn stream_pieces_merge_like_jupyter() {
    same_outputs_as_nbclient("streams.ipynb", &[]);
}

/// Issue 13: `{"not": "a notebook"}` ran as a notebook of 0 cells, exit 0, and wrote an output file
/// holding the stray key.
#[test]
fn a_json_file_that_is_not_a_notebook_is_refused_naming_what_is_missing() {
    let d = util::tempdir();
    util::write(d.path(), "data.json", r#"{"not": "a notebook"}"#);
    util::write(d.path(), "half.ipynb", r#"{"cells": [], "metadata": {}}"#);
    for (f, missing) in [
        ("data.json", "'cells', 'metadata', 'nbformat', 'nbformat_minor'"),
        ("half.ipynb", "'nbformat', 'nbformat_minor'"),
    ] {
        let o = util::cellsci(d.path())
            .args(["notebook", "run", f, "out.ipynb", "--python"])
            .arg(python())
            .output()
            .unwrap();
        let t = util::text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(t.contains(&format!("{f} is not a Jupyter notebook: it has no {missing}")), "{t}");
        assert!(!d.path().join("out.ipynb").exists(), "nothing is written for a file that is not a notebook");
    }
}

/// Notebooks of every nbformat 4 minor version (4.0–4.5) run, and what their schema allows beyond
/// the known fields (notebook, cell and output metadata, attachments) is written back.
#[test]
fn notebooks_of_nbformat_4_0_to_4_5_run_and_keep_unknown_fields() {
    let d = util::tempdir();
    for minor in 0..=5 {
        let mut code = serde_json::json!({"cell_type": "code", "execution_count": 3, "metadata": {"custom": {"k": [1, 2.5]}, "tags": ["t"]},
            "outputs": [{"output_type": "stream", "name": "stdout", "text": ["old\n"]}], "source": ["print('new')"]});
        let mut md = serde_json::json!({"cell_type": "markdown", "metadata": {"editable": false, "x-tool": "kept"}, "source": ["# t"]});
        if minor >= 1 {
            md["attachments"] = serde_json::json!({"a.png": {"image/png": "iVBORw0KGgo="}});
        }
        if minor >= 5 {
            code["id"] = serde_json::json!("code-1");
            md["id"] = serde_json::json!("md-1");
        }
        let nb = serde_json::json!({"cells": [md, code, {"cell_type": "code", "execution_count": null, "metadata": {},
            "outputs": [], "source": "from IPython.display import display\ndisplay({'text/plain': 'x'}, raw=True, metadata={'mine': {'a': 1}})"}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "P", "language": "python", "extra": 1},
                         "authors": [{"name": "me"}], "my_tool": {"setting": true}},
            "nbformat": 4, "nbformat_minor": minor});
        let name = format!("v4{minor}.ipynb");
        util::write(d.path(), &name, &serde_json::to_string_pretty(&nb).unwrap());
        let out = format!("v4{minor}.out.ipynb");
        let o =
            util::cellsci(d.path()).args(["notebook", "run", &name, &out, "--python"]).arg(python()).output().unwrap();
        ok(&o);
        let p = d.path().join(&out);
        validate(&p);
        let v = read_json(&p);
        assert_eq!(v["nbformat_minor"], minor, "the minor version is kept");
        assert_eq!(v["metadata"]["my_tool"]["setting"], true);
        assert_eq!(v["metadata"]["authors"][0]["name"], "me");
        assert_eq!(v["metadata"]["kernelspec"]["extra"], 1);
        let cells = v["cells"].as_array().unwrap();
        assert_eq!(cells[0]["metadata"]["x-tool"], "kept");
        assert_eq!(cells[0]["attachments"].is_object(), minor >= 1);
        assert_eq!(cells[1]["metadata"]["custom"]["k"][1], 2.5);
        assert_eq!(stdout_of(&cells[1]), "new\n");
        assert_eq!(cells[2]["outputs"][0]["metadata"]["mine"]["a"], 1, "output metadata is kept");
        assert_eq!(cells.iter().any(|c| c.get("id").is_some()), minor >= 5, "ids only where the schema has them");
    }
}

/// Issue 13: saves after every cell are handed to a saver process so that they cost no time between
/// cells; a SIGKILLed cellsci must still lose no finished cell, even when cells finish faster than the
/// notebook can be written.
#[test]
fn a_sigkilled_run_keeps_every_finished_cell_of_a_fast_notebook() {
    let d = util::tempdir();
    let mut cells: Vec<String> = (0..300).map(|i| format!("print({i})")).collect();
    cells.push("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)".into());
    let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    write_nb(d.path(), "in.ipynb", &refs);
    let o = util::cellsci(d.path()).args(["notebook", "run", "in.ipynb", "--python"]).arg(python()).output().unwrap();
    assert_eq!(o.status.code(), None, "cellsci was killed");
    let out = d.path().join("in.out.ipynb");
    // the saver finishes on its own once cellsci is gone (it saves in place: a read while it writes
    // may see the file half written)
    let t0 = std::time::Instant::now();
    loop {
        let v: Option<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).ok();
        if v.is_some_and(|v| stdout_of(&v["cells"][299]) == "299\n")
            || t0.elapsed() > std::time::Duration::from_secs(10)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    validate(&out);
    let v = read_json(&out);
    for i in 0..300 {
        assert_eq!(stdout_of(&v["cells"][i]), format!("{i}\n"), "finished cell {} was lost", i + 1);
    }
    assert!(v["cells"][300]["execution_count"].is_null());
}

#[test]
fn nb_metadata_writes_reach_the_notebook_and_cell_writes_raise() {
    // nb.metadata and nb:cell(i) returned copies: `nb.metadata.x = y` and `nb:cell(1).source = s` did
    // nothing, silently.
    let d = util::tempdir();
    let out = crate::kernel::lua(
        d.path(),
        r#"local notebook, json = require("notebook"), require("json")
local nb = notebook.new()
nb:push({cell_type = "code", source = "x = 1", metadata = {subtask = {id = "T1"}}})
nb.metadata.owner = "lab"
nb.metadata.execution = {}
nb.metadata.execution.hypergraph = {hyperedges = {{tail = {"T1"}, head = "T2"}}}
nb.metadata.kernelspec.display_name = "Python 3 (cellsci)"
assert(nb.metadata.owner == "lab")
assert(nb.metadata.execution.hypergraph.hyperedges[1].head == "T2")
assert(#nb.metadata.execution.hypergraph.hyperedges == 1)
local keys = {}
for k in pairs(nb.metadata) do keys[#keys + 1] = k end
table.sort(keys)
assert(table.concat(keys, ",") == "execution,kernelspec,language_info,owner", table.concat(keys, ","))
-- the old pattern still works: copy, change, assign back
local md = nb.metadata
md.tags = {"a"}
nb.metadata = md
assert(nb.metadata.tags[1] == "a")
assert(json.decode(json.encode(nb.metadata)).owner == "lab")
assert(nb:write("n.ipynb"))
local back = assert(notebook.read("n.ipynb"))
assert(back.metadata.execution.hypergraph.hyperedges[1].tail[1] == "T1")
assert(back.metadata.kernelspec.display_name == "Python 3 (cellsci)")
-- a cell is a read-only view
local c = nb:cell(1)
assert(c.source == "x = 1" and c.metadata.subtask.id == "T1")
local ok, e = pcall(function() nb:cell(1).source = "y = 2" end)
assert(not ok and tostring(e):find("nb:set_source%(1, src%)"), tostring(e))
local ok2, e2 = pcall(function() c.metadata.subtask.id = "T9" end)
assert(not ok2 and tostring(e2):find("read%-only"), tostring(e2))
assert(nb:cell(1).metadata.subtask.id == "T1")
print("ok")"#,
    );
    assert!(util::ok(&out).contains("ok"));
}

// ---- issue 24: parameters as papermill injects them, the run's record, honest reporting ----

/// papermill from the test venv, or None after saying the comparison is skipped. Under `CI=true` a
/// missing papermill fails the test instead: CI must compare with papermill itself.
fn papermill() -> Option<std::path::PathBuf> {
    let p = util::test_venv().join("bin/papermill");
    if p.is_file() {
        return Some(p);
    }
    util::skip_unless_ci(&format!("no papermill in {} (.ci/run installs it there)", p.display()));
    None
}

/// A notebook of code cells, each `(source, tags)`.
fn write_tagged(dir: &Path, name: &str, cells: &[(&str, &[&str])]) -> std::path::PathBuf {
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .enumerate()
        .map(|(i, (s, tags))| {
            serde_json::json!({"cell_type": "code", "execution_count": null, "id": format!("c{i}"), "metadata": {"tags": tags},
                               "outputs": [], "source": s})
        })
        .collect();
    let nb = serde_json::json!({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                                "nbformat": 4, "nbformat_minor": 5});
    util::write(dir, name, &serde_json::to_string_pretty(&nb).unwrap())
}

fn source_of(cell: &serde_json::Value) -> String {
    match &cell["source"] {
        serde_json::Value::Array(a) => a.iter().map(|l| l.as_str().unwrap()).collect(),
        v => v.as_str().unwrap_or_default().to_string(),
    }
}

/// Each cell's (source, tags): what the injection changes.
fn sources_and_tags(nb: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (source_of(c), c["metadata"].get("tags").cloned().unwrap_or(serde_json::json!([]))))
        .collect()
}

/// Prepare `input` with `args` by cellsci and by papermill (`--prepare-only` both) and compare every
/// cell's source and tags, and the recorded parameters; returns cellsci's notebook.
#[track_caller]
fn same_injection_as_papermill(dir: &Path, input: &str, args: &[&str], pm: &Path) -> serde_json::Value {
    let ours = format!("ours-{input}");
    let theirs = format!("theirs-{input}");
    let o = util::cellsci(dir).args(["notebook", "run", input, &ours, "--prepare-only"]).args(args).output().unwrap();
    ok(&o);
    let o = std::process::Command::new(pm)
        .current_dir(dir)
        .args([input, theirs.as_str(), "--prepare-only"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "papermill failed: {}", util::text(&o));
    let (a, b) = (read_json(&dir.join(&ours)), read_json(&dir.join(&theirs)));
    let (sa, sb) = (sources_and_tags(&a), sources_and_tags(&b));
    assert_eq!(sa, sb, "cells (source, tags) for {args:?}: cellsci's, then papermill's");
    // (an int past 64 bits is recorded as its digits in a string: strict JSON numbers cannot hold it)
    let mut pa = a["metadata"]["papermill"]["parameters"].clone();
    let mut pb = b["metadata"]["papermill"]["parameters"].clone();
    if let Some(big) = pa.as_object_mut().and_then(|m| m.shift_remove("big")) {
        assert_eq!(big, "123456789012345678901234567890");
        pb.as_object_mut().unwrap().shift_remove("big");
    }
    assert_eq!(pa, pb, "metadata.papermill.parameters for {args:?}: cellsci's, then papermill's");
    assert_eq!(
        pa.as_object().unwrap().keys().collect::<Vec<_>>(),
        pb.as_object().unwrap().keys().collect::<Vec<_>>(),
        "sorted keys, as nbformat writes them"
    );
    validate(&dir.join(&ours));
    a
}

#[test]
fn notebook_run_parameters_are_typed_and_injected_as_papermill_does() {
    let Some(pm) = papermill() else { return };
    let d = util::tempdir();
    write_tagged(
        d.path(),
        "nb.ipynb",
        &[("import sys", &[]), ("alpha = 0.1\nname = 'x'", &["parameters"]), ("print(alpha, name)", &[])],
    );
    // -p types: int (leading zeros, underscores, sign, spaces, any size), float, bool, None, strings
    // that look like other things, escapes
    let a = same_injection_as_papermill(
        d.path(),
        "nb.ipynb",
        &[
            "-p",
            "i",
            "007",
            "-p",
            "u",
            "1_000",
            "-p",
            "neg",
            "-42",
            "-p",
            "sp",
            " 2.50 ",
            "-p",
            "big",
            "123456789012345678901234567890",
            "-p",
            "f",
            "1e3",
            "-p",
            "tiny",
            "1e-5",
            "-p",
            "b",
            "True",
            "-p",
            "lb",
            "true",
            "-p",
            "n",
            "None",
            "-p",
            "hex",
            "0x10",
            "-p",
            "bad_us",
            "1__0",
            "-p",
            "s",
            "it's \"q\" \\ é 😀\ttab\nline",
            "-p",
            "empty",
            "",
        ],
        &pm,
    );
    let cells = a["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[2]["metadata"]["tags"], serde_json::json!(["injected-parameters"]));
    assert!(
        source_of(&cells[2]).starts_with("# Parameters\ni = 7\nu = 1000\nneg = -42\nsp = 2.5\n"),
        "{}",
        source_of(&cells[2])
    );
    // -r raw strings, and a later option replacing an earlier value of the same name
    same_injection_as_papermill(
        d.path(),
        "nb.ipynb",
        &["-r", "i", "5", "-r", "b", "True", "-p", "x", "1", "-r", "x", "2", "-p", "alpha", "0.5"],
        &pm,
    );
    // -y: YAML 1.1 as PyYAML reads it (yes/off are booleans, 1e5 a string, 0x1F and 017 ints, dates
    // strings), nested lists and mappings
    same_injection_as_papermill(
        d.path(),
        "nb.ipynb",
        &[
            "-y",
            "{d: {x: yes, k: [1.0e+3, 1e5, 0x1F, 017, 1:30, \"x\", ~, 2020-01-01, 'it''s']}, l: [a, {b: off}], e: {}}",
            "-y",
            "alpha: .5",
        ],
        &pm,
    );
    // -f YAML files (block style, anchors and merge keys, block scalars), overridden by -y then -p
    // whatever the order on the command line (papermill applies -f, -y, -p, -r in that order)
    util::write(
        d.path(),
        "p.yaml",
        "base: &b\n  lr: 0.01\n  layers: [64, 32]\nmodel:\n  <<: *b\n  lr: 0.1\ntext: |\n  two\n  lines\nfolded: >\n  one\n  line\nalpha: 1\nname: from-file\n",
    );
    util::write(d.path(), "q.yml", "name: second-file\nseed: 7\n");
    same_injection_as_papermill(
        d.path(),
        "nb.ipynb",
        &["-p", "alpha", "3", "-y", "name: from-y", "-f", "p.yaml", "-f", "q.yml"],
        &pm,
    );
}

#[test]
fn notebook_run_replaces_an_earlier_injection_and_injects_first_without_a_parameters_cell() {
    let Some(pm) = papermill() else { return };
    let d = util::tempdir();
    write_tagged(d.path(), "nb.ipynb", &[("alpha = 0.1", &["parameters"]), ("print(alpha)", &[])]);
    // papermill's own output, parameterized once, parameterized again: the injected cell is replaced
    let o = std::process::Command::new(&pm)
        .current_dir(d.path())
        .args(["nb.ipynb", "once.ipynb", "--prepare-only", "-p", "alpha", "1", "-p", "old", "x"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", util::text(&o));
    let v = same_injection_as_papermill(d.path(), "once.ipynb", &["-p", "alpha", "2"], &pm);
    let injected: Vec<_> =
        sources_and_tags(&v).into_iter().filter(|(_, t)| t == &serde_json::json!(["injected-parameters"])).collect();
    assert_eq!(injected, vec![("# Parameters\nalpha = 2\n".to_string(), serde_json::json!(["injected-parameters"]))]);
    // and cellsci's own output parameterized again
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "ours-once.ipynb", "twice.ipynb", "--prepare-only", "-p", "alpha", "3"])
        .output()
        .unwrap();
    ok(&o);
    let v = read_json(&d.path().join("twice.ipynb"));
    assert_eq!(v["cells"].as_array().unwrap().len(), 3, "one injected cell, replaced");
    assert_eq!(source_of(&v["cells"][1]), "# Parameters\nalpha = 3\n");

    // no cell tagged parameters: the injected cell comes first (and stderr says why)
    write_tagged(d.path(), "plain.ipynb", &[("alpha = 0.1", &[]), ("print(alpha)", &[])]);
    same_injection_as_papermill(d.path(), "plain.ipynb", &["-p", "alpha", "0.2"], &pm);
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "plain.ipynb", "p.ipynb", "--prepare-only", "-p", "alpha", "0.2"])
        .output()
        .unwrap();
    assert!(
        ok(&o).contains("injected as cell 1 (as the first cell: no cell is tagged parameters)"),
        "{}",
        util::text(&o)
    );
}

#[test]
fn notebook_run_parameters_reach_the_kernel_and_prepare_only_starts_none() {
    let d = util::tempdir();
    write_tagged(
        d.path(),
        "nb.ipynb",
        &[("alpha = 0.1\nname = 'x'", &["parameters"]), ("print(alpha * 2, name, flag)", &[])],
    );
    let o = util::cellsci(d.path())
        .args([
            "notebook",
            "run",
            "nb.ipynb",
            "out.ipynb",
            "-p",
            "alpha",
            "0.25",
            "-r",
            "name",
            "007",
            "-y",
            "flag: on",
            "--python",
        ])
        .arg(python())
        .output()
        .unwrap();
    ok(&o);
    let v = read_json(&d.path().join("out.ipynb"));
    assert_eq!(stdout_of(&v["cells"][2]), "0.5 007 True\n");
    assert_eq!(
        v["metadata"]["papermill"]["parameters"],
        serde_json::json!({"alpha": 0.25, "name": "007", "flag": true})
    );
    assert_eq!(v["metadata"]["papermill"]["exception"], serde_json::Value::Null);
    // --prepare-only starts no kernel: an interpreter that does not exist is never looked at
    let o = util::cellsci(d.path())
        .args([
            "notebook",
            "run",
            "nb.ipynb",
            "prep.ipynb",
            "--prepare-only",
            "-p",
            "alpha",
            "1",
            "--python",
            "/nonexistent/python",
        ])
        .output()
        .unwrap();
    ok(&o);
    let v = read_json(&d.path().join("prep.ipynb"));
    assert!(v["cells"][2]["execution_count"].is_null());
    assert!(v["metadata"].get("cellsci").is_none(), "a prepared notebook has no run record");
}

#[test]
fn notebook_run_refuses_bad_parameters_and_non_python_kernels_with_exit_2() {
    let d = util::tempdir();
    write_tagged(d.path(), "nb.ipynb", &[("alpha = 0.1", &["parameters"])]);
    let r = serde_json::json!({"cells": [], "metadata": {"kernelspec": {"name": "ir", "display_name": "R", "language": "R"}},
                               "nbformat": 4, "nbformat_minor": 5});
    util::write(d.path(), "r.ipynb", &r.to_string());
    for (nb, args, want) in [
        (
            "nb.ipynb",
            vec!["-p", "bad name", "1"],
            "-p bad name: parameter name \"bad name\" is not a Python identifier",
        ),
        ("nb.ipynb", vec!["-p", "class", "1"], "parameter name \"class\" is not a Python identifier"),
        (
            "nb.ipynb",
            vec!["-y", "[1, 2]"],
            "-y \"[1, 2]\": expected a mapping of parameter names to values, got a list",
        ),
        ("nb.ipynb", vec!["-y", "{a: [1"], "-y \"{a: [1\": not valid YAML"),
        ("nb.ipynb", vec!["-y", "1: x"], "parameter names must be strings, got an int (1)"),
        ("nb.ipynb", vec!["-y", "a: !!binary aGk="], "the YAML tag tag:yaml.org,2002:binary is not supported"),
        ("nb.ipynb", vec!["-f", "missing.yaml"], "-f missing.yaml: cannot read the file"),
        ("r.ipynb", vec!["-p", "x", "1"], "injected only for Python kernels; the kernel 'ir' is R"),
    ] {
        let o = util::cellsci(d.path()).args(["notebook", "run", nb, "out.ipynb"]).args(&args).output().unwrap();
        let t = util::text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected {want:?} in: {t}");
        assert!(!d.path().join("out.ipynb").exists(), "{args:?}: nothing is written");
    }
}

/// The run's record in `metadata.cellsci.run`: the cells that ran, the failed cell with its error,
/// the cells that did not run; the count printed is the cells that ran.
#[test]
fn notebook_run_records_a_failure_in_the_notebook_and_prints_what_ran() {
    let d = util::tempdir();
    write_nb(d.path(), "in.ipynb", &["print('one')", "1/0", "print('three')", "print('four')"]);
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "out.ipynb", "--python"])
        .arg(python())
        .output()
        .unwrap();
    let t = util::text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("executed 2 of 4 code cells in "), "{t}");
    assert!(t.contains("(stopped at the failed cell 2; 2 not run) -> out.ipynb"), "{t}");
    let v = read_json(&d.path().join("out.ipynb"));
    let r = &v["metadata"]["cellsci"]["run"];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["code_cells"], 4);
    assert_eq!(r["cells_run"], 2);
    assert_eq!(
        r["failed"],
        serde_json::json!([{"cell": 2, "id": "c1", "status": "error", "execution_count": 2, "ename": "ZeroDivisionError", "evalue": "division by zero"}])
    );
    assert_eq!(r["not_run"], serde_json::json!([3, 4]));
    assert!(r["finished"].is_string() && r["duration"].as_f64().unwrap() > 0.0);
    assert_eq!(v["cells"].as_array().unwrap().len(), 4, "no banner without --banner");
    assert!(v["metadata"].get("papermill").is_none(), "no papermill metadata without parameters");

    // --allow-errors: every cell ran, the failures are listed, exit 0
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "all.ipynb", "--allow-errors", "--python"])
        .arg(python())
        .output()
        .unwrap();
    assert!(ok(&o).contains("executed 4 code cells in "), "{}", util::text(&o));
    let r = &read_json(&d.path().join("all.ipynb"))["metadata"]["cellsci"]["run"];
    assert_eq!((r["status"].as_str(), r["cells_run"].as_u64()), (Some("errors"), Some(4)));
    assert_eq!(r["not_run"], serde_json::json!([]));
    assert_eq!(r["failed"][0]["cell"], 2);

    // a clean run
    write_nb(d.path(), "good.ipynb", &["x = 1", "", "print(x)"]);
    let o = util::cellsci(d.path()).args(["notebook", "run", "good.ipynb", "--python"]).arg(python()).output().unwrap();
    assert!(ok(&o).contains("executed 2 code cells in "), "{}", util::text(&o));
    let r = &read_json(&d.path().join("good.out.ipynb"))["metadata"]["cellsci"]["run"];
    assert_eq!(
        (r["status"].as_str(), r["cells_run"].as_u64(), r["code_cells"].as_u64()),
        (Some("ok"), Some(2), Some(2))
    );
    assert_eq!(r["failed"], serde_json::json!([]));
}

/// `--banner` adds papermill's two error cells (compared with what papermill itself writes for the same
/// failing notebook), and the next run removes them.
#[test]
fn notebook_run_banner_matches_papermills_and_is_removed_by_the_next_run() {
    let Some(pm) = papermill() else { return };
    let d = util::tempdir();
    write_tagged(
        d.path(),
        "in.ipynb",
        &[("x = 1", &["parameters"]), ("print(x)", &[]), ("1/0", &[]), ("print('after')", &[])],
    );
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "ours.ipynb", "--banner", "-p", "x", "2", "--python"])
        .arg(python())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", util::text(&o));
    let o = std::process::Command::new(&pm)
        .current_dir(d.path())
        .args(["in.ipynb", "theirs.ipynb", "-p", "x", "2", "-k", "python3"])
        .env("JUPYTER_PATH", util::test_venv().join("share/jupyter"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "papermill fails on the same cell: {}", util::text(&o));
    let (a, b) = (read_json(&d.path().join("ours.ipynb")), read_json(&d.path().join("theirs.ipynb")));
    let ours: Vec<_> = sources_and_tags(&a).into_iter().map(|(s, t)| (s.replace("cellsci", "papermill"), t)).collect();
    assert_eq!(ours, sources_and_tags(&b), "cells with the banner: cellsci's, then papermill's");
    assert_eq!(a["cells"][0]["cell_type"], "markdown");
    // the kernel's language_info, as nbclient (under papermill) writes it
    assert_eq!(a["metadata"]["language_info"], b["metadata"]["language_info"]);
    assert_eq!(a["metadata"]["language_info"]["name"], "python");
    assert_eq!(a["metadata"]["papermill"]["exception"], true);
    let r = &a["metadata"]["cellsci"]["run"];
    assert_eq!(r["failed"][0]["cell"], 6, "the failed cell's place in the saved notebook, banner included");
    assert_eq!(r["not_run"], serde_json::json!([7]));
    validate(&d.path().join("ours.ipynb"));
    // run again on the output: the old banner goes, the parameters are replaced
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "ours.ipynb", "again.ipynb", "-p", "x", "3", "--python"])
        .arg(python())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v = read_json(&d.path().join("again.ipynb"));
    assert!(!v["cells"].as_array().unwrap().iter().any(|c| c["cell_type"] == "markdown"), "the banner was removed");
    assert_eq!(stdout_of(&v["cells"][2]), "3\n");
}

/// The kernel chosen is named on stderr with the reason: --python, or a kernelspec (where it was found
/// and where its name came from).
#[test]
fn notebook_run_says_which_kernel_runs_and_why() {
    let d = util::tempdir();
    write_nb(d.path(), "in.ipynb", &["import sys\nprint(sys.executable)"]);
    let o = util::cellsci(d.path()).args(["notebook", "run", "in.ipynb", "--python"]).arg(python()).output().unwrap();
    let t = ok(&o);
    assert!(t.contains(&format!("kernel: {} -m ipykernel_launcher (--python)", python().display())), "{t}");
    let r = &read_json(&d.path().join("in.out.ipynb"))["metadata"]["cellsci"]["run"]["kernel"];
    assert_eq!(r["chosen_by"], "--python");

    // a kernelspec named in the notebook's metadata, found on JUPYTER_PATH
    let spec_dir = d.path().join("share/jupyter/kernels/mykern");
    let spec = serde_json::json!({"argv": [python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                  "display_name": "My Kernel", "language": "python"});
    util::write(&spec_dir, "kernel.json", &spec.to_string());
    let mut nb = read_json(&d.path().join("in.ipynb"));
    nb["metadata"]["kernelspec"] =
        serde_json::json!({"name": "mykern", "display_name": "My Kernel", "language": "python"});
    util::write(d.path(), "k.ipynb", &nb.to_string());
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "k.ipynb"])
        .env("JUPYTER_PATH", d.path().join("share/jupyter"))
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(
        t.contains(&format!(
            "kernel: kernelspec 'mykern' (My Kernel) in {}: {} -m ipykernel_launcher (the name from the notebook's metadata.kernelspec.name)",
            spec_dir.display(),
            python().display()
        )),
        "{t}"
    );
}

/// Ctrl-C: exit 130, the record says which cell was interrupted and which never ran.
#[test]
fn notebook_run_records_an_interrupt() {
    let d = util::tempdir();
    write_nb(
        d.path(),
        "in.ipynb",
        &["print('one')", "import time\nprint('sleeping', flush=True)\ntime.sleep(60)", "print('three')"],
    );
    let mut cmd = util::cellsci(d.path());
    cmd.args(["notebook", "run", "in.ipynb", "--log-output", "--python"]).arg(python());
    let mut run = util::Running::start(&mut cmd);
    run.wait_for("sleeping");
    run.signal(libc::SIGINT);
    let (st, out) = run.finish();
    assert_eq!(st.code(), Some(130), "{out}");
    let v = read_json(&d.path().join("in.out.ipynb"));
    let r = &v["metadata"]["cellsci"]["run"];
    assert_eq!(r["status"], "interrupted", "{r}");
    assert_eq!((r["interrupted_cell"].as_u64(), r["cells_run"].as_u64()), (Some(2), Some(2)));
    assert_eq!(r["not_run"], serde_json::json!([3]));
    assert_eq!(stdout_of(&v["cells"][1]), "sleeping\n", "what the interrupted cell printed is kept");
}

/// The saver writes in place from the first changed cell on (issue 24: a save costs what the cell added);
/// cellsci SIGKILLed at any moment of a 300-cell run with 20 KB outputs still leaves a valid notebook
/// holding every finished cell whole, once its saver has written what it was sent.
#[test]
fn notebook_run_sigkilled_mid_run_leaves_a_valid_notebook_with_whole_cells() {
    let d = util::tempdir();
    let cells: Vec<String> = (0..300).map(|i| format!("print('{}' * 20000)", i % 10)).collect();
    let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    write_nb(d.path(), "in.ipynb", &refs);
    for kill_at in [7, 180] {
        let out = format!("out{kill_at}.ipynb");
        let mut cmd = util::cellsci(d.path());
        cmd.args(["notebook", "run", "in.ipynb", &out, "--log-output", "--python"]).arg(python());
        let mut run = util::Running::start(&mut cmd);
        run.wait_for(&format!("--- cell {kill_at} "));
        run.signal(libc::SIGKILL);
        let (st, _) = run.finish();
        assert_eq!(st.code(), None, "cellsci was killed");
        let out = d.path().join(out);
        // the saver ends on its own: wait until the file stops changing and parses
        let mut last = None;
        util::wait_until("the saver to finish", 30, || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = std::fs::read(&out).ok();
            let settled = now.is_some()
                && now == last
                && serde_json::from_slice::<serde_json::Value>(now.as_ref().unwrap()).is_ok();
            last = now;
            settled
        });
        validate(&out);
        let v = read_json(&out);
        assert_eq!(v["metadata"]["cellsci"]["run"]["status"], "running");
        let done: Vec<usize> = (0..300).filter(|&i| !v["cells"][i]["outputs"].as_array().unwrap().is_empty()).collect();
        assert!(done.len() >= kill_at - 2, "killed at cell {kill_at}: only {} cells saved", done.len());
        assert_eq!(done, (0..done.len()).collect::<Vec<_>>(), "finished cells are a prefix");
        for &i in &done {
            let want = format!("{}\n", ((i % 10) as u8 + b'0') as char).repeat(1);
            let got = stdout_of(&v["cells"][i]);
            assert_eq!(got.len(), 20001, "cell {} is whole", i + 1);
            assert!(got.ends_with(&want), "cell {}", i + 1);
        }
    }
}

/// A kernel that cannot start: exit 2, and the saved notebook's record says why and that nothing ran.
#[test]
fn notebook_run_records_a_kernel_that_did_not_start() {
    let d = util::tempdir();
    write_nb(d.path(), "in.ipynb", &["print(1)", "print(2)"]);
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "out.ipynb", "--python", "/nonexistent/python"])
        .output()
        .unwrap();
    let t = util::text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("python interpreter /nonexistent/python does not exist"), "{t}");
    let r = &read_json(&d.path().join("out.ipynb"))["metadata"]["cellsci"]["run"];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["cells_run"], 0);
    assert_eq!(r["not_run"], serde_json::json!([1, 2]));
    assert_eq!(r["error"], "the kernel did not start: python interpreter /nonexistent/python does not exist");
}

/// Issue 26: a cell printing without end made a 335 MB notebook. A cell keeps the first and the last
/// 2 MiB of each stream (4 MiB in all) around a line saying how much was dropped, the kernel keeps
/// running, the cell finishes normally and the next one runs.
#[test]
fn a_cell_printing_50_mb_keeps_its_head_and_tail_and_the_next_cell_runs() {
    let d = util::tempdir();
    write_nb(
        d.path(),
        "in.ipynb",
        &[
            "import sys\nfor i in range(50):\n    sys.stdout.write(''.join(f'line {i*10000+j:07d} ' + 'y'*86 + '\\n' for j in range(10000)))\nprint('end of the flood')",
            "print('after the flood')",
        ],
    );
    let t0 = std::time::Instant::now();
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "out.ipynb", "--python"])
        .arg(python())
        .args(["--timeout", "120"])
        .output()
        .unwrap();
    ok(&o);
    let out = d.path().join("out.ipynb");
    let size = std::fs::metadata(&out).unwrap().len();
    println!("50 MB printed: notebook {size} bytes in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(size < 5_000_000, "the notebook stays small: {size} bytes");
    validate(&out);
    let v = read_json(&out);
    let cells = v["cells"].as_array().unwrap();
    let text = stdout_of(&cells[0]);
    assert!(text.starts_with("line 0000000 yyy"), "the head is kept: {}", &text[..100]);
    assert!(
        text.ends_with(&("line 0499999 ".to_string() + &"y".repeat(86) + "\nend of the flood\n")),
        "the tail is kept"
    );
    let marker =
        regex::Regex::new(r"\n\[\.\.\. cellsci: (\d+\.\d) MB of stdout dropped here; .*exec\.max_output_bytes")
            .unwrap();
    let dropped: f64 = marker.captures(&text).expect("a marker of what was dropped")[1].parse().unwrap();
    assert!((45.0..47.0).contains(&dropped), "about 50 MB - 4 MiB dropped: {dropped}");
    // whole lines on both sides of the marker
    let at = text.find("\n[... cellsci").unwrap();
    assert!(text[..at].ends_with(&("y".repeat(86) + "\n")), "the head ends with a whole line");
    assert_eq!(stdout_of(&cells[1]), "after the flood\n", "the kernel went on");
}

/// A cell that never stops printing is still stopped by its timeout (an output always waiting must not
/// starve the timer), keeps a bounded output, and the next cell runs in the same kernel.
#[test]
fn an_endless_print_is_cut_by_its_timeout_with_a_bounded_notebook() {
    let d = util::tempdir();
    write_nb(
        d.path(),
        "in.ipynb",
        &["x = 42\ni = 0\nwhile True:\n    print(f'line {i:09d} ' + 'y' * 84)\n    i += 1", "print('after', x)"],
    );
    let t0 = std::time::Instant::now();
    let o = util::cellsci(d.path())
        .args(["notebook", "run", "in.ipynb", "out.ipynb", "--allow-errors", "--timeout", "3", "--python"])
        .arg(python())
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let text = ok(&o);
    assert!(text.contains("did not finish within 3.0 s"), "{text}");
    let size = std::fs::metadata(d.path().join("out.ipynb")).unwrap().len();
    println!("endless print, 3 s timeout: {secs:.1} s, notebook {size} bytes");
    assert!(secs < 30.0, "the timeout fired: {secs:.1} s");
    assert!(size < 5_000_000, "{size} bytes");
    let v = read_json(&d.path().join("out.ipynb"));
    assert_eq!(stdout_of(&v["cells"][1]), "after 42\n", "the same kernel went on");
}

// ---- issue 24 item 5: nbclient's own test notebooks give what nbclient gives ----

/// The notebooks of nbclient's `test_run_all_notebooks` that need nothing beyond ipykernel (its
/// `Interrupt.ipynb` needs a timeout setting and `JupyterWidgets.ipynb` ipywidgets), with whether nbclient
/// runs them with `allow_errors`.
const NBCLIENT_SUITE: &[(&str, bool)] = &[
    ("Other Comms.ipynb", false),
    ("Clear Output.ipynb", false),
    ("Empty Cell.ipynb", false),
    ("Factorials.ipynb", false),
    ("HelloWorld.ipynb", false),
    ("Inline Image.ipynb", false),
    ("Skip Exceptions with Cell Tags.ipynb", false),
    ("Skip Exceptions.ipynb", true),
    ("Skip Execution with Cell Tag.ipynb", false),
    ("SVG.ipynb", false),
    ("Unicode.ipynb", false),
    ("UnicodePy3.ipynb", false),
    ("update-display-id.ipynb", false),
    ("Check History in Memory.ipynb", false),
];

/// The folder of nbclient's test notebooks that `.ci/run` unpacks from nbclient's source distribution,
/// or None after saying the comparison is skipped (under `CI=true` its absence fails instead).
fn nbclient_test_files() -> Option<std::path::PathBuf> {
    let p = util::test_venv().join("share/nbclient-tests/files");
    if p.join("HelloWorld.ipynb").is_file() {
        return Some(p);
    }
    util::skip_unless_ci(&format!("nbclient's test notebooks are not in {} (.ci/run unpacks them)", p.display()));
    None
}

/// Every one of nbclient's test notebooks, run by nbclient and by `cellsci notebook run` in the same
/// kernel (the test venv's), gives the same outputs and execution counts, compared as nbclient's test suite
/// compares them (the notebooks' stored outputs come from older IPython versions, whose tracebacks
/// nbclient itself no longer matches).
#[test]
fn nbclient_test_notebooks_give_the_outputs_nbclient_gives() {
    let Some(files) = nbclient_test_files() else { return };
    let d = util::tempdir();
    let want_dir = d.path().join("nbclient");
    let got_dir = d.path().join("cellsci");
    std::fs::create_dir_all(&want_dir).unwrap();
    std::fs::create_dir_all(&got_dir).unwrap();
    let runner = util::repo().join("tests/data/notebooks/nbclient_suite/run_nbclient.py");
    let names: Vec<String> =
        NBCLIENT_SUITE.iter().map(|(n, ae)| if *ae { format!("{n}:allow_errors") } else { n.to_string() }).collect();
    let o = std::process::Command::new(python())
        .arg(&runner)
        .arg(&files)
        .arg(&want_dir)
        .args(&names)
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "nbclient failed: {}", util::text(&o));
    let mut differ = Vec::new();
    for (name, allow_errors) in NBCLIENT_SUITE {
        let out = got_dir.join(name);
        let mut c = util::cellsci(&files);
        c.args(["notebook", "run"]).arg(files.join(name)).arg(&out).arg("--python").arg(python());
        if *allow_errors {
            c.arg("--allow-errors");
        }
        let o = c.env("COLUMNS", "80").env("LINES", "24").output().unwrap();
        ok(&o);
        validate(&out);
        let (want, got) = (read_json(&want_dir.join(name)), read_json(&out));
        let (want, got) = (want["cells"].as_array().unwrap(), got["cells"].as_array().unwrap());
        assert_eq!(want.len(), got.len(), "{name}: number of cells");
        let norm = |c: &serde_json::Value| -> serde_json::Value {
            serde_json::json!(c["outputs"]
                .as_array()
                .map(|a| a.iter().map(normalize_output).collect::<Vec<_>>())
                .unwrap_or_default())
        };
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            if norm(w) != norm(g) || w["execution_count"] != g["execution_count"] {
                differ.push(format!(
                    "{name}, cell {}:\n  nbclient: {} (count {})\n  cellsci:  {} (count {})",
                    i + 1,
                    norm(w),
                    w["execution_count"],
                    norm(g),
                    g["execution_count"]
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} cells of {} notebooks differ from nbclient:\n{}",
        differ.len(),
        NBCLIENT_SUITE.len(),
        differ.join("\n")
    );
}
