//! End-to-end tests of the default pipeline (scripts/pipeline.lua): the real binary, a real ipykernel from
//! the test venv, and the loopback fake LLM server answering by the kind of request (generation, strategy,
//! fix, report narrative), routed on the system prompt of the bundled prompt files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::fake_llm::{FakeLlm, Reply};
use crate::util::{self, cellsci, Running};

const KEY: &str = "sk-test-SECRET123456789";

/// What kind of request the pipeline sent, read from its system prompt (the bundled prompts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Generation,
    Strategy,
    Fix,
    Report,
}

pub(crate) fn kind_of(req: &Value) -> Kind {
    let system = req["messages"][0]["content"].as_str().unwrap_or("");
    if system.contains("repair failing cells") {
        Kind::Fix
    } else if system.contains("plan computational experiments") {
        Kind::Strategy
    } else if system.contains("discussion section") {
        Kind::Report
    } else {
        Kind::Generation
    }
}

/// Python code for a cell that writes metrics.json with a baseline and a model scoring `score` (PCC).
pub(crate) fn metrics_cell(score: f64) -> String {
    format!(
        r#"import json, os
folds = {{"0": {s0}, "1": {s1}, "2": {s2}}}
models = {{
    "ridge_baseline": {{"per_fold": {{f: {{"PCC": 0.1 + 0.01 * i, "MSE": 1.0}} for i, f in enumerate(folds)}}}},
    "better": {{"per_fold": {{f: {{"PCC": v, "MSE": 0.5}} for f, v in folds.items()}}, "aggregate": {{"PCC": {score}, "MSE": 0.5}}}},
}}
with open(os.path.join(os.environ["OUTPUT_DIR"], "metrics.json"), "w") as fh:
    json.dump({{"models": models, "winner": "better"}}, fh)
print("metrics written")"#,
        s0 = score - 0.01,
        s1 = score,
        s2 = score + 0.01,
    )
}

/// A generation reply holding these (id, code) cells, in a fence with prose around it as models write.
pub(crate) fn generation_reply(cells: &[(&str, &str)]) -> String {
    let cells: Vec<Value> = cells
        .iter()
        .map(|(id, code)| json!({"id": id, "name": format!("step {id}"), "purpose": "test", "code": code}))
        .collect();
    let heads: Vec<Value> = cells.windows(2).map(|w| json!({"tail": [w[0]["id"]], "head": w[1]["id"]})).collect();
    let doc = json!({"cells": cells, "hypergraph": {"hyperedges": heads}});
    format!("Here is the notebook.\n```json\n{}\n```\n", serde_json::to_string_pretty(&doc).unwrap())
}

pub(crate) fn fix_reply(cell_index: i64, source: &str) -> String {
    json!({"edits": [{"cell_index": cell_index, "source": source}]}).to_string()
}

pub(crate) type Handler = Box<dyn Fn(Kind, &Value, usize) -> Reply + Send + Sync>;

/// A temporary phase-2 project: config, stage-1 folder, the fake LLM server.
pub(crate) struct Project {
    pub(crate) dir: tempfile::TempDir,
    /// Kept alive for the project's lifetime (the server stops when dropped).
    pub(crate) _srv: FakeLlm,
    pub(crate) seen: Arc<Mutex<Vec<(Kind, Value)>>>,
}

impl Project {
    /// `handler(kind, request, n)` answers the n-th request of that kind (0-based).
    pub(crate) fn new(config: Value, handler: Handler) -> Project {
        let dir = util::tempdir();
        let srv = FakeLlm::start();
        let seen: Arc<Mutex<Vec<(Kind, Value)>>> = Arc::default();
        let counts: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
        let seen2 = seen.clone();
        srv.set_responder(move |req| {
            let kind = kind_of(req);
            seen2.lock().unwrap().push((kind, req.clone()));
            let n = {
                let mut c = counts.lock().unwrap();
                let e = c.entry(format!("{kind:?}")).or_insert(0);
                *e += 1;
                *e - 1
            };
            handler(kind, req, n)
        });
        util::write(dir.path(), "stage1/20260101_000000/REFERENCE_DATA.h5", "not really hdf5");
        util::write(
            dir.path(),
            "stage1/20260101_000000/idea.json",
            r#"{"ideas": [{"title": "Dose matters", "description": "Model the dose response."}]}"#,
        );
        let python = util::test_venv().join("bin/python");
        let mut cfg = json!({
            "dataset_name": "TESTSET",
            "paths": {"stage1_analysis_dir": "stage1", "design_execution_root": "out/${dataset_name}"},
            "llm": {"model": "fake-model", "base_url": srv.url(), "api_key": KEY, "timeout": 30,
                     "retry": {"deadline": 1.0, "base": 0.05, "max_wait": 0.2}},
            "experiment": {"primary_metric": "PCC", "max_iterations": 2, "success_threshold": 0.5},
            "prompt_branch": {"json_retries": 1},
            "exec": {"timeout_seconds": 30, "max_fix_rounds": 2, "enable_llm_autofix": true,
                      "python": python.display().to_string()},
            "literature": {"enabled": false}
        });
        merge(&mut cfg, config);
        util::write(dir.path(), "generate_execution_config.json", &serde_json::to_string_pretty(&cfg).unwrap());
        Project { dir, _srv: srv, seen }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        cellsci(self.path()).arg("--config").arg("generate_execution_config.json").args(args).output().unwrap()
    }

    pub(crate) fn save_root(&self) -> PathBuf {
        self.path().join("out/TESTSET")
    }

    pub(crate) fn trials(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.save_root().join("prompt"))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub(crate) fn archived(&self) -> Vec<PathBuf> {
        self.trials()
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("prompt_run_"))
            .collect()
    }

    /// The run's loop summary file (the first `phase2_loop_summary_*` of the save root).
    pub(crate) fn summary_path(&self) -> PathBuf {
        std::fs::read_dir(self.save_root())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
            .expect("a loop summary")
    }

    pub(crate) fn summary(&self) -> Value {
        let files: Vec<PathBuf> = std::fs::read_dir(self.save_root())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
            .collect();
        assert_eq!(files.len(), 1, "one loop summary: {files:?}");
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap()
    }

    pub(crate) fn requests(&self, kind: Kind) -> Vec<Value> {
        self.seen.lock().unwrap().iter().filter(|(k, _)| *k == kind).map(|(_, r)| r.clone()).collect()
    }

    /// The key must appear in no file of the project (but the config) and in no output.
    pub(crate) fn assert_key_hidden(&self, out: &Output) {
        assert!(!util::text(out).contains(KEY), "key printed");
        for f in walk(self.path()) {
            if f.ends_with("generate_execution_config.json") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(KEY), "key written to {}", f.display());
        }
    }

    /// `run` in the background; once the cell (`SLEEPING_CELL`) has printed and said so in a file,
    /// Ctrl-C; what cellsci printed and its exit status.
    pub(crate) fn run_and_interrupt(&self) -> (Option<i32>, String) {
        let run = Running::start(cellsci(self.path()).args(["--config", "generate_execution_config.json", "run"]));
        util::wait_until("the cell to start", 60, || {
            self.trials().first().is_some_and(|t| t.join("cell_started").exists())
        });
        let stopped = Instant::now();
        run.signal(libc::SIGINT);
        let (status, out) = run.finish();
        assert!(stopped.elapsed() < Duration::from_secs(30), "cellsci did not stop after Ctrl-C");
        (status.code(), out)
    }

    /// No process (a kernel) still runs with its working directory inside the project.
    pub(crate) fn assert_no_kernel_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_under(self.path());
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "processes still running under the project: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A cell that prints, then tells the test it runs (a file), then sleeps: what Ctrl-C tests interrupt.
pub(crate) const SLEEPING_CELL: &str = "import os, time\nprint('sleeping', flush=True)\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'cell_started'), 'w').close()\ntime.sleep(60)";

pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub(crate) fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(&dir) {
                pids.push(pid);
            }
        }
    }
    pids
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub(crate) fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Every loop-summary field the design names, with the iteration records.
pub(crate) fn assert_summary_shape(s: &Value) {
    for key in [
        "dataset",
        "started_at",
        "finished_at",
        "primary_metric",
        "success_threshold",
        "max_iterations",
        "iterations_executed",
        "valid_iterations",
        "criteria_met_iterations",
        "success_rate",
        "validity_rate",
        "best_score",
        "best_trial_dir",
        "archived_dir",
        "total_tokens",
        "llm_latency_sec",
        "iterations",
        "best_at_budget",
        "total_cost_tokens",
        "total_cost_latency",
        "total_time_sec",
    ] {
        assert!(s.get(key).is_some(), "summary has no {key}: {s:#}");
    }
    for it in s["iterations"].as_array().unwrap() {
        for key in ["iter", "status", "score", "trial_dir", "duration_sec", "criteria_met", "tokens", "usage"] {
            assert!(it.get(key).is_some(), "iteration has no {key}: {it:#}");
        }
    }
}

/// A user's success.lua whose judge returns `met` with the explanation `why`.
pub(crate) fn success_lua(met: bool, why: &str) -> String {
    format!(
        "local M = {{}}\nfunction M.direction() return 'higher' end\nfunction M.better(a, b) return b == nil or a > b end\nfunction M.judge(t) return {met}, '{why}' end\nreturn M\n"
    )
}

pub(crate) fn simple_handler(gen: Vec<String>) -> Handler {
    Box::new(move |kind, _req, n| match kind {
        Kind::Generation => Reply::text(&gen[n.min(gen.len() - 1)]),
        Kind::Strategy => Reply::text("Test the dose response with a baseline and one better model."),
        Kind::Report => Reply::text("The better model wins on every fold."),
        Kind::Fix => Reply::text("{}"),
    })
}

#[test]
fn run_succeeds_on_first_iteration_with_the_full_output_tree() {
    let p = Project::new(
        json!({}),
        simple_handler(vec![generation_reply(&[("T1", "x = 1\nprint('hello')"), ("T2", &metrics_cell(0.8))])]),
    );
    let out = p.run(&["run", "--use-idea"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("ITERATION 1/2\n"), "{so}");
    assert!(so.contains("[CHECK] better | PCC: 0.8000"), "{so}");
    assert!(so.contains("[EXEC] Saved final state: "), "{so}");
    assert!(!so.contains("ITERATION 2/2"), "stops at the first success: {so}");
    let archived = p.archived();
    assert_eq!(archived.len(), 1, "{:?}", p.trials());
    let name = archived[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(so.contains(&format!("[ARCHIVE] Saved run to: {name}")), "{so}");
    let t = &archived[0];
    for f in [
        "notebook_prompt.ipynb",
        "notebook_prompt_exec.ipynb",
        "research_strategy.md",
        "metrics.json",
        "experiment_report.md",
        "hypergraph.json",
        "hypergraph.md",
        "events.jsonl",
    ] {
        assert!(t.join(f).is_file(), "{f} missing in {}", t.display());
    }
    assert!(t.join("intermediate").is_dir());

    // The generated notebook: strategy markdown first, one code cell per generated cell with its subtask,
    // the hypergraph in the metadata.
    let nb = read_json(&t.join("notebook_prompt.ipynb"));
    assert_eq!(nb["nbformat"], 4);
    let cells = nb["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[0]["cell_type"], "markdown");
    assert_eq!(cells[1]["metadata"]["subtask"]["id"], "T1");
    assert_eq!(cells[2]["metadata"]["subtask"]["name"], "step T2");
    assert_eq!(nb["metadata"]["execution"]["hypergraph"]["hyperedges"][0]["head"], "T2");

    // The executed notebook: outputs kept, the set-up (OUTPUT_DIR, the sys.exit guard) not visible.
    let ex = read_json(&t.join("notebook_prompt_exec.ipynb"));
    let text = serde_json::to_string(&ex).unwrap();
    assert!(text.contains("hello"), "cell output kept");
    assert!(!text.contains("_cellsci_blocked_exit"), "set-up code leaked into the notebook");
    assert_eq!(ex["cells"][1]["execution_count"], 1, "set-up must not use up execution counts");
    assert!(std::fs::read_to_string(t.join("hypergraph.md")).unwrap().contains("flowchart TD"));
    let report = std::fs::read_to_string(t.join("experiment_report.md")).unwrap();
    assert!(report.contains("| Model |") && report.contains("better"), "{report}");
    assert!(report.contains("The better model wins on every fold."), "{report}");

    let s = p.summary();
    assert_summary_shape(&s);
    assert_eq!(s["dataset"], "TESTSET");
    assert_eq!(s["iterations_executed"], 1);
    assert_eq!(s["valid_iterations"], 1);
    assert_eq!(s["criteria_met_iterations"], 1);
    assert_eq!(s["success_rate"], 1.0);
    assert_eq!(s["best_score"], 0.8);
    assert_eq!(s["archived_dir"].as_str().unwrap(), t.display().to_string());
    assert!(s["finished_at"].is_string());
    assert!(s["total_tokens"].as_u64().unwrap() > 0);
    let it = &s["iterations"][0];
    assert_eq!(it["status"], "VALID");
    assert_eq!(it["criteria_met"], true);
    assert_eq!(it["score"], 0.8);
    assert_eq!(it["llm_calls"], 3, "strategy, generation, narrative");
    // The generation request: the bundled spec with the device filled in, and the strategy.
    let gen = &p.requests(Kind::Generation)[0];
    let user = gen["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("cuda:0") && !user.contains("${cuda_device_str}"), "{user}");
    assert!(user.contains("Test the dose response"), "strategy sent with the generation request");
    p.assert_key_hidden(&out);
    p.assert_no_kernel_left();
}

#[test]
fn run_fails_the_threshold_then_succeeds_on_the_second_iteration() {
    let p = Project::new(
        json!({}),
        simple_handler(vec![
            generation_reply(&[("T1", &metrics_cell(0.3))]),
            generation_reply(&[("T1", &metrics_cell(0.9))]),
        ]),
    );
    let out = p.run(&["run"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("ITERATION 1/2") && so.contains("ITERATION 2/2"), "{so}");
    assert!(
        so.contains("[CHECK] better | PCC: 0.3000") && so.contains("[CHECK] better | PCC: 0.9000"),
        "{}",
        util::text(&out)
    );
    let s = p.summary();
    assert_summary_shape(&s);
    assert_eq!(s["iterations_executed"], 2);
    assert_eq!(s["valid_iterations"], 2);
    assert_eq!(s["criteria_met_iterations"], 1);
    assert_eq!(s["iterations"][0]["criteria_met"], false);
    assert_eq!(s["iterations"][1]["criteria_met"], true);
    assert_eq!(s["best_score"], 0.9);
    // Each iteration has its own folder; the successful one is archived, the other kept as it was.
    let trials = p.trials();
    assert_eq!(trials.len(), 2, "{trials:?}");
    assert_eq!(p.archived().len(), 1);
    assert!(trials.iter().any(|t| t.file_name().unwrap().to_string_lossy().ends_with("_iter001")));
    assert!(!Path::new(s["iterations"][0]["trial_dir"].as_str().unwrap()).join("research_strategy.md").exists());
    p.assert_key_hidden(&out);
}

#[test]
fn llm_fixes_a_failing_cell_with_the_notebook_cell_index() {
    let bad = "y = undefined_name + 1";
    let good = "y = 2\nprint('fixed', y)";
    let handler: Handler = Box::new(move |kind, req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", "x = 1"), ("T2", bad), ("T3", &metrics_cell(0.7))])),
        Kind::Strategy => Reply::text("A strategy."),
        Kind::Report => Reply::text("Narrative."),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            let idx = doc["errors"][0]["cell_index"].as_i64().unwrap();
            Reply::text(&format!("Fixed:\n```json\n{}\n```", fix_reply(idx, good)))
        }
    });
    let p = Project::new(json!({}), handler);
    let out = p.run(&["run", "--use-idea"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("Error in Node T2"), "{so}");
    assert!(so.contains("[FIX] T2 | Round 1/2"), "{so}");
    // The fix request (DESIGN §1): the index is the cell's index in the notebook file (the strategy
    // markdown is cell 0, so T2 is cell 2), with the error, traceback and failing source.
    let fixes = p.requests(Kind::Fix);
    assert_eq!(fixes.len(), 1);
    let doc: Value = serde_json::from_str(fixes[0]["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert!(doc["task"].is_string() && doc["instruction"].is_string());
    assert_eq!(doc["errors"][0]["cell_index"], 2);
    assert!(doc["errors"][0]["error"].as_str().unwrap().contains("NameError"));
    assert!(doc["errors"][0]["traceback"].as_str().unwrap().contains("undefined_name"));
    assert_eq!(doc["failing_code"][0]["cell_index"], 2);
    assert_eq!(doc["failing_code"][0]["source"], bad);
    let t = &p.archived()[0];
    let ex = read_json(&t.join("notebook_prompt_exec.ipynb"));
    assert_eq!(
        ex["cells"][2]["source"].as_array().map(|a| a.iter().map(|l| l.as_str().unwrap()).collect::<String>()),
        Some(good.to_string())
    );
    let text = serde_json::to_string(&ex["cells"][2]["outputs"]).unwrap();
    assert!(text.contains("fixed 2") && !text.contains("NameError"), "{text}");
    let events = std::fs::read_to_string(t.join("events.jsonl")).unwrap();
    assert!(events.contains("\"kind\":\"fix\""), "fix rounds are in the event log");
}

#[test]
fn hung_cell_is_interrupted_and_fixed() {
    let handler: Handler = Box::new(|kind, req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[
            ("T1", "x = 5"),
            ("T2", "import time\ntime.sleep(120)"),
            ("T3", &metrics_cell(0.75)),
        ])),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            assert!(doc["errors"][0]["error"].as_str().unwrap().contains("Timeout"), "{doc}");
            Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), "print('fast now', x)"))
        }
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"exec": {"timeout_seconds": 2}, "experiment": {"max_iterations": 1}}), handler);
    let out = p.run(&["run"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("Error in Node T2") && so.contains("timed out"), "{so}");
    let ex = read_json(&p.archived()[0].join("notebook_prompt_exec.ipynb"));
    assert!(
        serde_json::to_string(&ex["cells"][1]["outputs"]).unwrap().contains("fast now 5"),
        "state kept or replayed"
    );
    p.assert_no_kernel_left();
}

#[test]
fn kernel_death_is_restarted_replayed_and_fixed() {
    let handler: Handler = Box::new(|kind, req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[
            ("T1", "x = 41"),
            ("T2", "import os\nos._exit(3)"),
            ("T3", &format!("assert x + 1 == 42\n{}", metrics_cell(0.66))),
        ])),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            assert!(doc["errors"][0]["error"].as_str().unwrap().contains("KernelDied"), "{doc}");
            Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), "print('alive', x)"))
        }
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), handler);
    let out = p.run(&["run"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("Error in Node T2") && so.contains("kernel died"), "{so}");
    assert!(so.contains("[CHECK] better | PCC: 0.6600"), "{so}");
    p.assert_no_kernel_left();
}

#[test]
fn unfixable_cell_is_recorded_as_a_crash_and_the_loop_still_exits_0() {
    let bad = "raise RuntimeError('this cannot work')";
    let handler: Handler = Box::new(move |kind, req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &metrics_cell(0.9)), ("T2", bad)])),
        // The model keeps sending the same code: not applied, so the cell is given up.
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), bad))
        }
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), handler);
    let out = p.run(&["run"]);
    // The loop ran to its end: 0, so that CellScientist's runner goes on to phase 3.
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    assert_summary_shape(&s);
    let it = &s["iterations"][0];
    assert_eq!(it["status"], "CRASH", "{it:#}");
    assert_eq!(it["criteria_met"], false, "metrics written before the failing cell never count as success");
    assert!(it["error"].as_str().unwrap().contains("cell 1 (T2)"), "{it:#}");
    assert_eq!(s["criteria_met_iterations"], 0);
    assert!(p.archived().is_empty(), "a failed notebook is not archived as the run");
    // The failure is in the executed notebook too.
    let t = &p.trials()[0];
    let ex = read_json(&t.join("notebook_prompt_exec.ipynb"));
    assert_eq!(ex["metadata"]["execution"]["cellsci"]["failed_cell"], 1);
    p.assert_no_kernel_left();
}

#[test]
fn llm_outage_during_the_report_still_gives_the_computed_report() {
    let handler: Handler = Box::new(|kind, _req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &metrics_cell(0.8))])),
        Kind::Report => Reply::Http {
            status: 503,
            headers: vec![],
            body: b"<html><body>upstream unavailable</body></html>".to_vec(),
        },
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), handler);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let report = std::fs::read_to_string(p.archived()[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("| **better** (winner)") || report.contains("better"), "{report}");
    assert!(report.contains("0.8"), "computed numbers present: {report}");
    assert!(report.contains("503"), "the report says why the narrative is missing: {report}");
    assert!(p.requests(Kind::Report).len() > 1, "the report request was retried");
    p.assert_key_hidden(&out);
}

#[test]
fn ctrl_c_mid_cell_records_interrupted_and_leaves_no_kernel() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3}}),
        simple_handler(vec![generation_reply(&[("T1", SLEEPING_CELL)])]),
    );
    let (code, out) = p.run_and_interrupt();
    assert_eq!(code, Some(130), "{out}");
    let s = p.summary();
    assert_summary_shape(&s);
    assert_eq!(s["iterations_executed"], 1);
    assert_eq!(s["iterations"][0]["status"], "INTERRUPTED");
    assert!(s["finished_at"].is_string());
    // What the interrupted cell printed is saved in the executed notebook.
    let ex = std::fs::read_to_string(p.trials()[0].join("notebook_prompt_exec.ipynb")).unwrap();
    assert!(ex.contains("sleeping"), "{ex}");
    p.assert_no_kernel_left();
}

#[test]
fn a_prompt_file_in_the_seeds_shape_works() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}}),
        simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.8))])]),
    );
    // The seed's pipeline_prompt.yaml shape: no `system` key, dataset/split/metrics sections, ${dataset_name}.
    util::write(
        p.path(),
        "prompts/pipeline_prompt.yaml",
        "dataset:\n  name: \"${dataset_name}\"\n  columns:\n    smiles: \"SMILES\"\nsplit:\n  method: \"leave-smiles-out\"\n  n_folds: 5\nmetrics:\n  primary: \"PCC\"\nruntime:\n  device: \"${cuda_device_str}\"\n",
    );
    let out = p.run(&["run", "--prompt-file", "prompts/pipeline_prompt.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let gen = &p.requests(Kind::Generation)[0];
    let user = gen["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("leave-smiles-out") && user.contains("TESTSET") && user.contains("cuda:0"), "{user}");
}

#[test]
fn a_users_success_lua_shadows_the_bundled_one() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}}),
        simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.3))])]),
    );
    // A criterion of the user's own: any score counts.
    util::write(p.path(), "policies/success.lua", &success_lua(true, "the user says so"));
    let out = p.run(&["--scripts", "policies", "run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    assert_eq!(s["iterations"][0]["criteria_met"], true);
    assert_eq!(s["iterations"][0]["judgement"], "the user says so");
}

#[test]
fn editing_success_lua_during_a_run_takes_effect_on_the_next_iteration() {
    let dir_holder: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let gens = Arc::new(AtomicUsize::new(0));
    let (dh, g) = (dir_holder.clone(), gens.clone());
    let handler: Handler = Box::new(move |kind, _req, n| match kind {
        Kind::Generation => {
            g.fetch_add(1, Ordering::SeqCst);
            if n == 1 {
                // The user edits the criterion while iteration 2 is generating.
                let d = dh.lock().unwrap().clone().unwrap();
                std::fs::write(d.join("policies/success.lua"), success_lua(true, "edited: now met")).unwrap();
            }
            Reply::text(&generation_reply(&[("T1", &metrics_cell(0.3))]))
        }
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 3}}), handler);
    *dir_holder.lock().unwrap() = Some(p.path().to_path_buf());
    util::write(p.path(), "policies/success.lua", &success_lua(false, "never"));
    let out = p.run(&["--scripts", "policies", "run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    assert_eq!(s["iterations_executed"], 2, "{s:#}");
    assert_eq!(s["iterations"][0]["judgement"], "never");
    assert_eq!(s["iterations"][1]["judgement"], "edited: now met");
    assert_eq!(gens.load(Ordering::SeqCst), 2);
    // the reload is recorded in the events.jsonl of the trial that was running (issue 26 item 15)
    let trial = PathBuf::from(s["iterations"][1]["archived_as"].as_str().unwrap_or_else(|| panic!("{s:#}")));
    let events = std::fs::read_to_string(trial.join("events.jsonl")).unwrap();
    let reload: Vec<Value> =
        events.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|e| e["kind"] == "reload").collect();
    assert_eq!(reload.len(), 1, "{events}");
    assert_eq!(reload[0]["module"], "success");
    assert_eq!(reload[0]["ok"], true);
    assert!(reload[0]["file"].as_str().unwrap().ends_with("policies/success.lua"), "{:?}", reload[0]);
    assert!(util::text(&out).contains("reloaded success"), "{}", util::text(&out));
}

#[test]
fn generate_execute_analyze_work_step_by_step_on_the_newest_trial() {
    let p = Project::new(json!({}), simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.8))])]));
    let out = p.run(&["generate", "--use-idea"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let trials = p.trials();
    assert_eq!(trials.len(), 1);
    assert!(trials[0].join("notebook_prompt.ipynb").is_file() && trials[0].join("research_strategy.md").is_file());
    assert!(!trials[0].join("notebook_prompt_exec.ipynb").exists());
    let out = p.run(&["execute"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(trials[0].join("notebook_prompt_exec.ipynb").is_file() && trials[0].join("metrics.json").is_file());
    let out = p.run(&["analyze", "--trial", trials[0].to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(stdout(&out).contains("[CHECK] better | PCC: 0.8000"));
    assert!(trials[0].join("experiment_report.md").is_file());
}

#[test]
fn unusable_generation_replies_are_saved_and_reported() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}, "prompt_branch": {"json_retries": 1}}),
        simple_handler(vec!["I would rather not write JSON today.".into()]),
    );
    let out = p.run(&["generate"]);
    // Not an error in the input: the command could not produce its notebook.
    assert_eq!(out.status.code(), Some(1), "{}", util::text(&out));
    assert!(util::text(&out).contains("generation failed"), "{}", util::text(&out));
    let fail = p.trials()[0].join("generation_failure.json");
    let doc = read_json(&fail);
    assert_eq!(doc["attempts"].as_array().unwrap().len(), 2, "the reply and one reformat request");
    assert_eq!(doc["attempts"][0]["raw"], "I would rather not write JSON today.");
    assert_eq!(doc["attempts"][0]["raw_file"], "generation_reply_1.txt");
    assert_eq!(p.requests(Kind::Generation).len(), 2);
}

#[test]
fn the_custom_strategy_example_generates_in_parallel_and_keeps_the_best() {
    let gen = Arc::new(AtomicUsize::new(0));
    let g = gen.clone();
    let handler: Handler = Box::new(move |kind, req, _n| match kind {
        Kind::Generation => {
            let user = req["messages"][1]["content"].as_str().unwrap_or("").to_string();
            // Three drafts scoring 0.4, 0.5 and 0.45, whatever order the branches ask in; an improvement
            // of the best (told "It scored 0.5") scores 0.8.
            let score = if user.contains("It scored 0.5") {
                0.8
            } else {
                [0.4, 0.5, 0.45][g.fetch_add(1, Ordering::SeqCst) % 3]
            };
            Reply::Slow(
                Duration::from_millis(300),
                Box::new(Reply::text(&generation_reply(&[("T1", &metrics_cell(score))]))),
            )
        }
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 6, "success_threshold": 0.7}}), handler);
    let script = util::repo().join("examples/strategies/best_of_n.lua");
    let out = p.run(&["run", "--strategy", script.to_str().unwrap()]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(p._srv.max_in_flight() >= 2, "the generation requests were not concurrent");
    assert!(so.contains("[SUCCESS] Success threshold met"), "{so}");
    assert_eq!(p.archived().len(), 1);
    assert_eq!(read_json(&p.archived()[0].join("metrics.json"))["models"]["better"]["aggregate"]["PCC"], 0.8);
    let s = p.summary();
    let improved = s["iterations"].as_array().unwrap().iter().find(|r| r["kind"] == "improve").unwrap().clone();
    assert!(improved["parent"].is_number(), "{improved:#}");
}

/// The README's demo: the recorded cassette must still match every request the pipeline sends (a prompt
/// or pipeline change that alters a request breaks the offline demo; re-record with examples/demo/record.sh).
#[test]
fn the_demo_replays_offline_and_ends_with_a_report() {
    let dir = util::tempdir();
    let demo = util::repo().join("examples/demo");
    for rel in [
        "stage1/reference/20261101_120000/REFERENCE_DATA.h5",
        "stage1/reference/20261101_120000/idea.json",
        "cassette.jsonl",
    ] {
        let dest = dir.path().join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(demo.join(rel), &dest).unwrap();
    }
    let mut cfg = read_json(&demo.join("generate_execution_config.json"));
    // The test venv instead of a provisioned one (tests never install from the network).
    cfg["exec"].as_object_mut().unwrap().remove("kernel_packages");
    cfg["exec"]["python"] = json!(util::test_venv().join("bin/python").display().to_string());
    util::write(dir.path(), "generate_execution_config.json", &serde_json::to_string_pretty(&cfg).unwrap());
    let out = cellsci(dir.path()).args(["-c", "generate_execution_config.json", "run", "--use-idea"]).output().unwrap();
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("Error in Node T4") && so.contains("[FIX] T4 | Round 1/2"), "the recorded fix ran: {so}");
    assert!(so.contains("[CHECK] composition_ridge | PCC: 0.7586"), "{so}");
    let root = dir.path().join("results/DEMO/generate_execution/prompt");
    let archived: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(archived.len(), 1);
    let report = std::fs::read_to_string(archived[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("composition-aware model"), "the recorded narrative was replayed: {report}");
    assert!(!util::text(&out).contains("replay_miss"), "{}", util::text(&out));
}

#[test]
fn an_error_metric_as_primary_succeeds_when_it_is_below_the_threshold() {
    // MSE 0.5 against a threshold of 0.6: lower is better, so this meets the criterion (the original
    // compared `score > threshold` for every metric and would have called it a failure).
    let p = Project::new(
        json!({"experiment": {"primary_metric": "MSE", "success_threshold": 0.6, "max_iterations": 1}}),
        simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.8))])]),
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(stdout(&out).contains("[CHECK] better | MSE: 0.5000"), "{}", stdout(&out));
    let s = p.summary();
    assert_eq!(s["direction"], "lower");
    assert_eq!(s["iterations"][0]["criteria_met"], true);
    let report = std::fs::read_to_string(p.archived()[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("lower is better"), "{report}");
}

#[test]
fn a_success_policy_that_raises_is_reported_and_the_run_goes_on() {
    let p = Project::new(json!({}), simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.9))])]));
    util::write(
        p.path(),
        "policies/success.lua",
        "local M = {}\nfunction M.judge(t)\n  error('threshold table is missing')\nend\nreturn M\n",
    );
    let out = p.run(&["--scripts", "policies", "run"]);
    assert_eq!(out.status.code(), Some(0), "never met, never crashed: {}", util::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("success.lua:3: threshold table is missing"), "{err}");
    let s = p.summary();
    assert_eq!(s["iterations_executed"], 2);
    for it in s["iterations"].as_array().unwrap() {
        assert_eq!(it["status"], "VALID", "{it:#}");
        assert_eq!(it["criteria_met"], false);
        assert!(it["judgement"].as_str().unwrap().contains("success.judge failed"), "{it:#}");
    }
    assert_eq!(s["best_score"], 0.9, "the best is still chosen by the metric's direction");
    assert_eq!(p.archived().len(), 1, "the best trial is archived");
}

#[test]
fn a_failure_that_would_repeat_stops_the_loop_with_the_summary_written() {
    // HTTP 401 (a bad key) is a `client` failure: no retry, and no point in starting iteration 2.
    let handler: Handler = Box::new(|_kind, _req, _n| Reply::Http {
        status: 401,
        headers: vec![],
        body: br#"{"error": {"message": "Incorrect API key provided"}}"#.to_vec(),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 3}}), handler);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    let s = p.summary();
    assert_eq!(s["iterations_executed"], 1);
    assert_eq!(s["iterations"][0]["status"], "CRASH");
    assert!(s["iterations"][0]["error"].as_str().unwrap().contains("401"), "{s:#}");
    assert!(s["finished_at"].is_string());
    p.assert_key_hidden(&out);
}

#[test]
fn an_interrupted_run_is_resumed_from_its_summary() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3}}),
        simple_handler(vec![
            generation_reply(&[("T1", SLEEPING_CELL)]),
            generation_reply(&[("T1", &metrics_cell(0.3))]),
            generation_reply(&[("T1", &metrics_cell(0.9))]),
        ]),
    );
    let (code, out) = p.run_and_interrupt();
    assert_eq!(code, Some(130), "{out}");
    let first = p.summary();
    assert_eq!(first["iterations"][0]["status"], "INTERRUPTED");

    // Resume: the interrupted iteration is done again, then the loop goes on in the same summary.
    let summary_file: PathBuf = std::fs::read_dir(p.save_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
        .unwrap();
    let out = p.run(&["run", "--resume", summary_file.to_str().unwrap()]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("[RESUME]") && so.contains("ITERATION 1/3") && so.contains("ITERATION 2/3"), "{so}");
    let s = p.summary();
    assert_summary_shape(&s);
    assert_eq!(s["started_at"], first["started_at"], "the same loop, continued");
    assert_eq!(s["iterations_executed"], 2);
    assert_eq!(s["iterations"][0]["status"], "VALID");
    assert_eq!(s["iterations"][1]["criteria_met"], true);
    assert_eq!(s["best_score"], 0.9);
    assert_eq!(p.archived().len(), 1);
    p.assert_no_kernel_left();
}

/// Regression: a notebook's `os.symlink('/usr', OUTPUT_DIR + '/intermediate/usr')` made the listing walk
/// /usr (22 GB of memory, never finished), two links to `.` looped forever, 20,000 files printed 20,000
/// lines, and a symlinked events.jsonl was appended through. Links are listed as links, the listing is
/// capped with one summary line, and the link's target is left alone.
#[test]
fn symlinks_the_notebook_makes_are_listed_not_followed() {
    let dir = util::tempdir();
    let outside = util::write(dir.path(), "outside.txt", "precious\n");
    let cell = format!(
        r#"import os
d = os.path.join(os.environ["OUTPUT_DIR"], "intermediate")
os.makedirs(os.path.join(d, "many"), exist_ok=True)
os.symlink("/usr", os.path.join(d, "usr"))
os.symlink(".", os.path.join(d, "loop1"))
os.symlink("..", os.path.join(d, "many", "loop2"))
for i in range(2000):
    open(os.path.join(d, "many", "f%05d.csv" % i), "w").close()
ev = os.path.join(os.environ["OUTPUT_DIR"], "events.jsonl")
os.remove(ev)
os.symlink({outside:?}, ev)
print("links made")"#,
        outside = outside.to_str().unwrap()
    );
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}}),
        simple_handler(vec![generation_reply(&[("T1", &cell), ("T2", &metrics_cell(0.8))])]),
    );
    let started = Instant::now();
    let out = p.run(&["run"]);
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert!(text.contains("intermediate/usr") && text.contains("-> /usr (symlink, not followed)"), "{text}");
    assert!(text.contains("more entries not listed"), "{text}");
    let listed = text.lines().filter(|l| l.contains("[EXEC]   intermediate/")).count();
    assert!(listed <= 100, "{listed} lines listed");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n", "written through the events.jsonl link");
    assert_eq!(text.matches("cannot append to the event log").count(), 1, "{text}");
}

/// Regression: re-asking after an unusable generation reply sent the whole reply back (50 MB requests, a
/// 157 MB generation_failure.json). The reformat request echoes its start and end and says what was cut;
/// the reply is kept whole once, in generation_reply_1.txt.
#[test]
fn a_huge_unusable_generation_reply_is_echoed_clipped_and_saved_once() {
    let huge = format!("I cannot write JSON, but here is my thinking: {}", "blah ".repeat(600_000));
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}, "prompt_branch": {"json_retries": 1}}),
        simple_handler(vec![huge.clone(), generation_reply(&[("T1", "x = 1")])]),
    );
    let out = p.run(&["generate"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let reqs = p.requests(Kind::Generation);
    assert_eq!(reqs.len(), 2);
    let second = serde_json::to_string(&reqs[1]).unwrap();
    assert!(second.len() < 64 * 1024, "the re-ask is {} bytes", second.len());
    let ask = reqs[1]["messages"][3]["content"].as_str().unwrap();
    assert!(ask.contains(&format!("it was {} bytes long", huge.len())) && ask.contains("left out above"), "{ask}");
    let trial = &p.trials()[0];
    assert_eq!(std::fs::read_to_string(trial.join("generation_reply_1.txt")).unwrap(), huge);
}

/// Regression: the fix request carried the exception message whole (a cell raising with a 2 MB message
/// sent 2 MB to the LLM on every round); it keeps the message's start and the traceback's end, marked.
#[test]
fn a_megabyte_exception_message_is_clipped_in_the_fix_request() {
    let bad = "raise ValueError('start of the message ' + 'x' * 2_000_000 + ' end of the message')";
    let handler: Handler = Box::new(move |kind, req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", bad), ("T2", &metrics_cell(0.7))])),
        Kind::Strategy => Reply::text("A strategy."),
        Kind::Report => Reply::text("Narrative."),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            let idx = doc["errors"][0]["cell_index"].as_i64().unwrap();
            Reply::text(&fix_reply(idx, "print('fixed')"))
        }
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), handler);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let fixes = p.requests(Kind::Fix);
    assert_eq!(fixes.len(), 1);
    let body = serde_json::to_string(&fixes[0]).unwrap();
    assert!(body.len() < 32 * 1024, "the fix request is {} bytes", body.len());
    let doc: Value = serde_json::from_str(fixes[0]["messages"][1]["content"].as_str().unwrap()).unwrap();
    let error = doc["errors"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("ValueError: start of the message") && error.contains("bytes cut"), "{error}");
    assert!(error.ends_with("end of the message"), "{error}");
}

/// Regression: a prompt file holding a YAML list was taken as a prompt and the run went on to the LLM.
#[test]
fn a_prompt_file_that_is_a_list_stops_run_with_exit_2_naming_the_file() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3}}),
        simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.8))])]),
    );
    util::write(p.path(), "prompts/list_prompt.yaml", "- system: You write notebooks.\n- task: predict\n");
    let out = p.run(&["run", "--prompt-file", "prompts/list_prompt.yaml"]);
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("prompts/list_prompt.yaml") && text.contains("expected a mapping"), "{text}");
    assert!(p.requests(Kind::Generation).is_empty(), "the broken prompt went to the LLM");
    let s = p.summary();
    assert_eq!(s["iterations_executed"], 1, "the loop stops at once: {s:#}");
    assert_eq!(s["stopped"], "config");
    let out = p.run(&["generate", "--prompt-file", "prompts/list_prompt.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(util::text(&out).contains("prompts/list_prompt.yaml"), "{}", util::text(&out));
}

/// A user's report_policy.lua decides the direction, the baseline and which number is the score of a
/// real `cellsci run`: its report, [CHECK] line, criterion and summary all follow it.
#[test]
fn a_users_report_policy_changes_direction_baseline_and_score_of_cellsci_run() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1, "success_threshold": 0.5}}),
        simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.8))])]),
    );
    util::write(
        p.path(),
        "policies/report_policy.lua",
        r#"local M = load(require("host").bundled("stdlib/report_policy.lua"), "@<bundled>/stdlib/report_policy.lua")()
table.insert(M.lower_is_better, "pcc")
M.baseline_words = { { "better" } }
function M.score_rule(metrics) return { model = "ridge_baseline", from = { "folds" } } end
return M
"#,
    );
    let out = p.run(&["--scripts", "policies", "run"]);
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // the score: ridge_baseline's mean PCC over its folds (0.10, 0.11, 0.12), below 0.5 and lower is better
    assert!(stdout(&out).contains("[CHECK] ridge_baseline | PCC: 0.1100"), "{text}");
    let s = p.summary();
    assert_eq!(s["direction"], "lower");
    assert_eq!(s["iterations"][0]["criteria_met"], true, "{s:#}");
    let report = std::fs::read_to_string(p.archived()[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("PCC (lower is better)"), "{report}");
    assert!(report.contains("- **Baseline:** better"), "{report}");
    let narrative = &p.requests(Kind::Report)[0]["messages"][1]["content"];
    assert!(narrative.as_str().unwrap().contains("\"baseline\": \"better\""), "{narrative}");
}

/// Regression (seen as a flaky tree-strategy test): parallel nodes finish out of order, so a kill can
/// leave iteration 2 unrecorded while 3 is. Resuming redid nothing below the last recorded number: the
/// loop ended one iteration short. Now the missing numbers are done again first.
#[test]
fn a_resume_redoes_an_iteration_missing_below_the_last_recorded_one() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3, "success_threshold": 0.99}}),
        simple_handler(vec![
            generation_reply(&[("T1", &metrics_cell(0.3))]),
            generation_reply(&[("T1", &metrics_cell(0.4))]),
            generation_reply(&[("T1", &metrics_cell(0.5))]),
            generation_reply(&[("T1", &metrics_cell(0.6))]),
        ]),
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    // As a kill while iteration 2 ran and 3 had finished leaves it: no record of 2, no finish time.
    let file: PathBuf = std::fs::read_dir(p.save_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
        .unwrap();
    let mut s: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    s["iterations"].as_array_mut().unwrap().retain(|r| r["iter"] != 2);
    s["finished_at"] = Value::Null;
    std::fs::write(&file, s.to_string()).unwrap();
    let out = p.run(&["run", "--resume", file.to_str().unwrap()]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("redoing 2") && so.contains("ITERATION 2/3") && !so.contains("ITERATION 4"), "{so}");
    let s = p.summary();
    assert_eq!(s["iterations_executed"], 3, "{s:#}");
    let mut iters: Vec<i64> = s["iterations"].as_array().unwrap().iter().map(|r| r["iter"].as_i64().unwrap()).collect();
    iters.sort();
    assert_eq!(iters, vec![1, 2, 3]);
}

#[test]
fn a_kernel_retry_setting_the_policy_refuses_stops_run_with_exit_2_before_the_loop() {
    let p = Project::new(
        json!({"exec": {"kernel_retry": {"per_kind": {"server": 2}, "bogus": 1}}}),
        simple_handler(vec![]),
    );
    let out = p.run(&["run"]);
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("exec.kernel_retry") && text.contains("unknown option 'bogus'"), "{text}");
    assert!(!text.contains("ITERATION"), "{text}");
}

/// Issue 26 item 14: a reasoning model that put the whole notebook in `reasoning_content` and left the
/// content empty ended as `empty`, its reasoning saved nowhere. The pipeline reads the notebook from the
/// reasoning as a last resort (and says so); when even that has no notebook, the reasoning is kept in
/// the trial's failure files.
#[test]
fn a_reply_with_only_reasoning_content_is_read_from_it_or_kept_in_the_failure_files() {
    let notebook = generation_reply(&[("T1", &metrics_cell(0.9))]);
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}, "prompt_branch": {"json_retries": 0},
               "llm": {"retry": {"per_kind": {"empty": 0}}}}),
        Box::new(move |kind, _req, _n| match kind {
            Kind::Generation => Reply::Thinking {
                reasoning: format!("Let me think it through. {notebook}"),
                text: String::new(),
                reasoning_tokens: 50,
            },
            Kind::Strategy => Reply::text("Test the dose response."),
            _ => Reply::text("The better model wins."),
        }),
    );
    let out = p.run(&["run"]);
    let text = util::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("its notebook (1 cells) was read from the model's reasoning, as a last resort"), "{text}");
    assert!(text.contains("[CHECK] better | PCC: 0.9000"), "{text}");
    let trial = p.archived().pop().expect("an archived trial");
    let events = std::fs::read_to_string(trial.join("events.jsonl")).unwrap();
    assert!(events.contains(r#""kind":"reply_from_reasoning""#), "{events}");
    p.assert_key_hidden(&out);

    // reasoning with no notebook in it: the generation fails, and the reasoning is in the failure files
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1}, "prompt_branch": {"json_retries": 0},
               "llm": {"retry": {"per_kind": {"empty": 0}}}}),
        Box::new(move |kind, _req, _n| match kind {
            Kind::Generation => Reply::Thinking {
                reasoning: format!("I considered {} and ran out of room.", "many designs ".repeat(300)),
                text: String::new(),
                reasoning_tokens: 900,
            },
            _ => Reply::text("Plan."),
        }),
    );
    let out = p.run(&["generate"]);
    assert_eq!(out.status.code(), Some(1), "{}", util::text(&out));
    let trial = &p.trials()[0];
    let doc = read_json(&trial.join("generation_failure.json"));
    let a = &doc["attempts"][0];
    assert!(a["error"].as_str().unwrap().starts_with("empty:"), "{doc:#}");
    assert_eq!(a["reasoning_file"], "generation_reply_1_reasoning.txt", "{doc:#}");
    assert!(a["reasoning_bytes"].as_u64().unwrap() > 3000, "{doc:#}");
    assert!(a["reasoning"].as_str().unwrap().starts_with("I considered many designs"), "{doc:#}");
    let kept = std::fs::read_to_string(trial.join("generation_reply_1_reasoning.txt")).unwrap();
    assert!(kept.ends_with("ran out of room."), "the whole reasoning is kept");
}

/// Issue 26 items 11 and 12. `cellsci scripts export .` and then the README's "start from the bundled
/// module" success.lua: host.bundled gives the built-in copy, not the user's file (which loaded itself
/// until the stack overflowed). And a folder laid out like the export works as `--scripts DIR`.
#[test]
fn an_exported_folder_works_as_is_and_as_scripts_dir_and_host_bundled_never_returns_the_users_file() {
    let reply = generation_reply(&[("T1", &metrics_cell(0.7))]);
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), simple_handler(vec![reply.clone()]));
    let shadow = |marker: &str| {
        format!(
            r#"local host = require("host")
local M = load(host.bundled("stdlib/success.lua"), "@<bundled>/stdlib/success.lua")()
local judge = M.judge
function M.judge(t)
  local met, why = judge(t)
  return met, "{marker} " .. tostring(why)
end
return M
"#
        )
    };
    // exported into the project folder: its stdlib/ is searched without --scripts
    util::ok(&cellsci(p.path()).args(["scripts", "export", "."]).output().unwrap());
    util::write(p.path(), "stdlib/success.lua", &shadow("FROM-EXPORT"));
    let t0 = Instant::now();
    let out = p.run(&["run"]);
    let text = util::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("FROM-EXPORT PCC 0.7000 > 0.5"), "the shadowing module ran, once: {text}");
    assert!(t0.elapsed() < Duration::from_secs(60), "no recursion");

    // exported into a folder of its own, used as --scripts: its stdlib/ and prompts/ count
    let p = Project::new(json!({"experiment": {"max_iterations": 1}}), simple_handler(vec![reply]));
    util::ok(&cellsci(p.path()).args(["scripts", "export", "mine"]).output().unwrap());
    util::write(p.path(), "mine/stdlib/success.lua", &shadow("FROM-MINE"));
    let prompt = std::fs::read_to_string(p.path().join("mine/prompts/generation.yaml")).unwrap();
    util::write(
        p.path(),
        "mine/prompts/generation.yaml",
        &prompt.replacen("system:", "system: |\n  MINE-PROMPT\n_was:", 1),
    );
    let out = p.run(&["--scripts", "mine", "run"]);
    let text = util::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("FROM-MINE PCC 0.7000"), "{text}");
    assert!(!text.contains("shadows no") && !text.contains("changes nothing"), "{text}");
    let gen = p.requests(Kind::Generation);
    assert!(gen[0]["messages"][0]["content"].as_str().unwrap().contains("MINE-PROMPT"), "the folder's prompt was used");

    // a folder that shadows nothing is warned about; one that does not exist is a usage error
    std::fs::create_dir_all(p.path().join("empty")).unwrap();
    util::write(p.path(), "empty/helper.lua", "return {}");
    util::write(p.path(), "t.lua", "print('ran')");
    let out = cellsci(p.path()).args(["--scripts", "empty", "script", "t.lua"]).output().unwrap();
    let text = util::ok(&out);
    assert!(text.contains("warning: --scripts") && text.contains("changes nothing the pipeline uses"), "{text}");
    let out = cellsci(p.path()).args(["--scripts", "nowhere", "script", "t.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(util::text(&out).contains("--scripts") && util::text(&out).contains("nowhere: no such folder"));
}
