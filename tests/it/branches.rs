//! Parallel exploration: strategies whose nodes run at the same time (best_of_n, tree), each in its own
//! trial context. Real binary, real kernels, the loopback fake LLM (with latency where it matters).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pipeline::{
    fix_reply, generation_reply, metrics_cell, read_json, stdout, Handler, Kind, Project, SLEEPING_CELL,
};
use crate::util::fake_llm::Reply;
use crate::util::{self, cellsci, Running};

fn summary(p: &Project) -> Value {
    p.summary()
}

/// The trial folders of a run (archived or not).
fn trials(p: &Project) -> Vec<PathBuf> {
    p.trials()
}

#[test]
fn parallel_branches_keep_their_events_in_their_own_trial() {
    // The event log was one global path: under task.all a branch's exchanges landed in whichever trial
    // set it last.
    let n = Arc::new(Mutex::new(0));
    let handler: Handler = Box::new(move |kind, _req, _| match kind {
        Kind::Generation => {
            let c = {
                let mut g = n.lock().unwrap();
                *g += 1;
                *g
            };
            std::thread::sleep(Duration::from_millis(300));
            let cell = format!("print('BRANCH-{c}')\n{}", metrics_cell(0.2 + 0.1 * c as f64));
            Reply::text(&generation_reply(&[("T1", &cell)]))
        }
        _ => Reply::text("The numbers."),
    });
    let p = Project::new(
        json!({"experiment": {"max_iterations": 2, "success_threshold": 0.99}, "search": {"branches": 2}}),
        handler,
    );
    let out = p.run(&["run", "--strategy", "best_of_n"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(p._srv.max_in_flight() >= 2, "the two generation requests were not concurrent");
    let ts = trials(&p);
    assert_eq!(ts.len(), 2, "{ts:?}");
    for t in ts {
        let nb = std::fs::read_to_string(t.join("notebook_prompt.ipynb")).unwrap();
        let mine = if nb.contains("BRANCH-1") { "BRANCH-1" } else { "BRANCH-2" };
        let other = if mine == "BRANCH-1" { "BRANCH-2" } else { "BRANCH-1" };
        let events = std::fs::read_to_string(t.join("events.jsonl")).unwrap();
        let evs: Vec<Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let llm: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "llm").collect();
        assert_eq!(llm.len(), 2, "its generation and its report narrative, nothing else: {events}");
        assert!(events.contains(mine) && !events.contains(other), "{t:?}: {events}");
        assert_eq!(evs.iter().filter(|e| e["kind"] == "cell").count(), 1, "{events}");
    }
    // Per-node usage comes from the node's own calls.
    let s = summary(&p);
    for it in s["iterations"].as_array().unwrap() {
        assert_eq!(it["usage"]["calls"], 2, "{it:#}");
    }
}

/// Generation and report requests take 1 s; the cell takes 1 s.
fn slow_project(nodes: u32, branches: u32) -> Project {
    let handler: Handler = Box::new(|kind, _req, _| {
        std::thread::sleep(Duration::from_secs(1));
        match kind {
            Kind::Generation => {
                Reply::text(&generation_reply(&[("T1", &format!("import time\ntime.sleep(1)\n{}", metrics_cell(0.3)))]))
            }
            _ => Reply::text("Slow numbers."),
        }
    });
    Project::new(
        json!({"experiment": {"max_iterations": nodes, "success_threshold": 0.99}, "search": {"branches": branches}}),
        handler,
    )
}

#[test]
fn four_branches_overlap_their_llm_calls_and_cells() {
    let one = slow_project(1, 1);
    let t = Instant::now();
    let out = one.run(&["run", "--strategy", "best_of_n"]);
    let t1 = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let four = slow_project(4, 4);
    let t = Instant::now();
    let out = four.run(&["run", "--strategy", "best_of_n"]);
    let t4 = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert_eq!(summary(&four)["iterations_executed"], 4);
    let ratio = t4.as_secs_f64() / t1.as_secs_f64();
    println!("one branch {t1:?}, four branches {t4:?}: ratio {ratio:.2}");
    assert!(ratio < 3.0, "four branches took {ratio:.2}x one branch ({t1:?} vs {t4:?})");
    // Each branch's lines come out as one block after its ITERATION line.
    let so = stdout(&out);
    for i in 1..=4 {
        let at = so.find(&format!("ITERATION {i}/4")).unwrap_or_else(|| panic!("{so}"));
        let block = &so[at..];
        let end = block[1..].find("ITERATION").map_or(block.len(), |e| e + 1);
        assert!(block[..end].contains("[CHECK]"), "iteration {i}'s block: {}", &block[..end]);
    }
}

#[test]
fn a_rate_limit_met_by_one_branch_holds_every_branch() {
    // A 429 with Retry-After in one branch must slow all of them (one API, one rate limit).
    let arrivals: Arc<Mutex<Vec<(Kind, Instant)>>> = Arc::default();
    let seen = arrivals.clone();
    let handler: Handler = Box::new(move |kind, _req, n| {
        seen.lock().unwrap().push((kind, Instant::now()));
        match (kind, n) {
            (Kind::Generation, 0) => Reply::Http {
                status: 429,
                headers: vec![("retry-after".into(), "4".into())],
                body: br#"{"error": {"message": "Rate limit reached"}}"#.to_vec(),
            },
            (Kind::Generation, _) => Reply::text(&generation_reply(&[("T1", &metrics_cell(0.3))])),
            _ => Reply::text("Numbers."),
        }
    });
    let p = Project::new(
        json!({"experiment": {"max_iterations": 2, "success_threshold": 0.99}, "search": {"branches": 2},
               "llm": {"retry": {"deadline": 30, "max_retry_after": 30}}}),
        handler,
    );
    let out = p.run(&["run", "--strategy", "best_of_n"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let a = arrivals.lock().unwrap().clone();
    let t429 = a.iter().find(|(k, _)| *k == Kind::Generation).unwrap().1;
    // The other branch's generation request was already on its way; every request sent after the 429
    // came back waited for its Retry-After.
    let later: Vec<f64> = a.iter().skip(2).map(|(_, t)| t.duration_since(t429).as_secs_f64()).collect();
    assert!(!later.is_empty(), "{a:?}");
    assert!(later.iter().all(|s| *s >= 3.8), "requests {later:?} s after the 429 (Retry-After: 4)");
}

#[test]
fn ctrl_c_with_four_busy_pool_kernels_leaves_none_running() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 4}, "search": {"branches": 4}}),
        crate::pipeline::simple_handler(vec![generation_reply(&[("T1", SLEEPING_CELL)])]),
    );
    let run = Running::start(cellsci(p.path()).args([
        "--config",
        "generate_execution_config.json",
        "run",
        "--strategy",
        "best_of_n",
    ]));
    util::wait_until("four cells running", 90, || {
        p.trials().iter().filter(|t| t.join("cell_started").exists()).count() == 4
    });
    run.signal(libc::SIGINT);
    let (status, out) = run.finish();
    assert_eq!(status.code(), Some(130), "{out}");
    let s = summary(&p);
    assert_eq!(s["stopped"], "interrupted", "{s:#}");
    p.assert_no_kernel_left();
}

/// Drafts score 0.2; a node told "It scored X" (an improvement of X) scores X + 0.25.
fn tree_handler() -> Handler {
    Box::new(|kind, req, _| match kind {
        Kind::Generation => {
            let user = req["messages"][1]["content"].as_str().unwrap_or("");
            let re = regex::Regex::new(r"It scored ([0-9]+(?:\.[0-9]+)?)").unwrap();
            let score = match re.captures(user) {
                Some(c) => c[1].parse::<f64>().unwrap() + 0.25,
                None => 0.2,
            };
            Reply::text(&generation_reply(&[("T1", &metrics_cell((score * 100.0).round() / 100.0))]))
        }
        Kind::Fix => Reply::text(&fix_reply(0, "x = 1")),
        _ => Reply::text("Numbers."),
    })
}

fn tree_project() -> Project {
    Project::new(
        json!({"experiment": {"max_iterations": 6, "success_threshold": 0.9},
               "search": {"branches": 2, "drafts": 2}}),
        tree_handler(),
    )
}

#[test]
fn the_tree_strategy_improves_its_best_node_and_archives_it() {
    let p = tree_project();
    let out = p.run(&["run", "--strategy", "tree"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = summary(&p);
    let its = s["iterations"].as_array().unwrap();
    assert!(its.len() >= 4 && its.len() <= 6, "{s:#}");
    let its: Vec<&Value> = its.iter().filter(|r| r["status"] != "CANCELLED").collect();
    let by: std::collections::HashMap<i64, &Value> = its.iter().map(|r| (r["iter"].as_i64().unwrap(), *r)).collect();
    let mut improved = 0;
    for r in &its {
        if r["kind"] == "improve" {
            let parent = by[&r["parent"].as_i64().unwrap()];
            assert!(r["score"].as_f64().unwrap() > parent["score"].as_f64().unwrap(), "{r:#} vs {parent:#}");
            improved += 1;
        }
    }
    assert!(improved >= 2, "{s:#}");
    // Rounds reached 0.7 in six nodes; the scheduler improves the best the moment it is recorded, so the
    // chain gets at least as far (0.95 meets the 0.9 threshold when no node waits for its round).
    let best = s["best_score"].as_f64().unwrap();
    assert!(best >= 0.7 - 1e-9, "{s:#}");
    let archived = p.archived();
    assert_eq!(archived.len(), 1);
    assert_eq!(read_json(&archived[0].join("metrics.json"))["models"]["better"]["aggregate"]["PCC"], best);
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
    // The improvement requests carried the parent's code and results.
    let improve_reqs: Vec<Value> = p
        .requests(Kind::Generation)
        .into_iter()
        .filter(|r| r["messages"][1]["content"].as_str().unwrap_or("").contains("It scored"))
        .collect();
    assert!(!improve_reqs.is_empty());
    assert!(improve_reqs[0]["messages"][1]["content"].as_str().unwrap().contains("Its code:"));
}

#[test]
fn a_killed_tree_run_resumes_to_a_finished_archived_loop() {
    let p = tree_project();
    let mut run = Running::start(cellsci(p.path()).args([
        "--config",
        "generate_execution_config.json",
        "run",
        "--strategy",
        "tree",
    ]));
    run.wait_for("ITERATION 3/6");
    run.signal(libc::SIGKILL);
    run.finish();
    let file = std::fs::read_dir(p.save_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
        .unwrap();
    let out = p.run(&["run", "--strategy", "tree", "--resume", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = read_json(&file);
    assert!(s["finished_at"].is_string());
    // all six nodes, unless the chain of improvements met the 0.9 threshold first (the scheduler can get
    // there in five: the nodes still running are then cancelled)
    if s["criteria_met"] == true {
        assert!(s["iterations_executed"].as_u64().unwrap() <= 6, "{s:#}");
        assert_eq!(s["best_trial_dir"], s["archived_dir"], "{s:#}");
    } else {
        assert_eq!(s["iterations_executed"], 6, "{s:#}");
    }
    assert!(s["best_score"].as_f64().unwrap() >= 0.45, "{s:#}");
    assert_eq!(p.archived().len(), 1);
    p.assert_no_kernel_left();
}

#[test]
fn a_cell_error_whose_text_says_config_does_not_stop_the_loop() {
    // The stop rule searched the error text for "config: ": a notebook raising ValueError("config: x")
    // ended the whole loop with exit 2.
    let bad = "raise ValueError('config: x')";
    let handler: Handler = Box::new(move |kind, _req, _| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", bad)])),
        Kind::Fix => Reply::text(&fix_reply(0, bad)),
        _ => Reply::text("ok"),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 2}}), handler);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(stdout(&out).contains("ITERATION 2/2"), "{}", util::text(&out));
    let s = summary(&p);
    assert_eq!(s["iterations"][0]["error_kind"], "cell_unfixable", "{s:#}");
    assert!(s["stopped"].is_null(), "{s:#}");
}

#[test]
fn with_feedback_on_the_next_iteration_is_told_what_the_earlier_ones_scored() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 2, "success_threshold": 0.99}, "search": {"feedback": true}}),
        crate::pipeline::simple_handler(vec![
            generation_reply(&[("T1", &metrics_cell(0.42))]),
            generation_reply(&[("T1", "raise ValueError('boom')")]),
        ]),
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let gens = p.requests(Kind::Generation);
    assert_eq!(gens.len(), 2);
    let first = gens[0]["messages"][1]["content"].as_str().unwrap();
    let second = gens[1]["messages"][1]["content"].as_str().unwrap();
    assert!(!first.contains("Results of earlier attempts"), "{first}");
    assert!(
        second.contains("Results of earlier attempts") && second.contains("attempt 1: VALID, PCC 0.4200"),
        "{second}"
    );
    // Without the switch the seed's behaviour stays: every iteration from scratch.
    let q = Project::new(
        json!({"experiment": {"max_iterations": 2, "success_threshold": 0.99}}),
        crate::pipeline::simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.42))])]),
    );
    assert_eq!(q.run(&["run"]).status.code(), Some(0));
    for g in q.requests(Kind::Generation) {
        assert!(!g["messages"][1]["content"].as_str().unwrap().contains("Results of earlier attempts"));
    }
}

#[test]
fn the_money_budget_ends_a_run_cleanly_with_the_cost_in_the_summary() {
    // Runs cost money: the budget is in money too, and the summary says what each iteration cost.
    let p = Project::new(
        json!({"experiment": {"max_iterations": 6, "success_threshold": 0.99},
               "llm": {"prices": {"fake-model": {"input": 1000, "output": 1000}}, "max_cost": 0.5}}),
        crate::pipeline::simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.3))])]),
    );
    let out = p.run(&["run"]);
    let text = util::text(&out);
    assert_eq!(out.status.code(), Some(0), "a spent budget ends the loop like its last iteration: {text}");
    assert!(text.contains("the LLM budget (tokens, calls or money) is spent"), "{text}");
    assert!(stdout(&out).contains("[COST] Iteration 1:") && stdout(&out).contains("| $"), "{text}");
    let s = summary(&p);
    assert_eq!(s["stopped"], "budget", "{s:#}");
    let its = s["iterations"].as_array().unwrap();
    assert!(its.len() < 6, "the budget stopped the loop early: {s:#}");
    let total = s["total_cost_usd"].as_f64().unwrap();
    let sum: f64 = its.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    assert!(total > 0.5 && total < 1.0, "{total}");
    assert!((total - sum).abs() < 1e-9, "per-iteration costs add up to the run's: {sum} vs {total}");
    assert_eq!(p.archived().len(), 1, "the best trial is archived");
    let page = std::fs::read_to_string(p.save_root().join("run.html")).unwrap();
    assert!(page.contains(&format!("${total:.4}")), "the run page shows the cost");
}

/// The fields of OpenAI's `CreateChatCompletionRequest` that cellsci sends, with the types and ranges the
/// published API gives them (written out here; `additionalProperties: false` so a misspelt field fails).
const CHAT_REQUEST_SCHEMA: &str = r##"{
  "type": "object",
  "required": ["model", "messages"],
  "additionalProperties": false,
  "properties": {
    "model": {"type": "string", "minLength": 1},
    "messages": {"type": "array", "minItems": 1, "items": {
      "type": "object", "required": ["role", "content"],
      "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"type": "string"}, "name": {"type": "string"}}}},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "seed": {"type": "integer"}, "top_p": {"type": "number"},
    "response_format": {"oneOf": [
      {"type": "object", "required": ["type"], "additionalProperties": false,
       "properties": {"type": {"const": "text"}}},
      {"type": "object", "required": ["type"], "additionalProperties": false,
       "properties": {"type": {"const": "json_object"}}},
      {"type": "object", "required": ["type", "json_schema"], "additionalProperties": false,
       "properties": {"type": {"const": "json_schema"}, "json_schema": {
         "type": "object", "required": ["name"], "additionalProperties": false,
         "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
           "description": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": "boolean"}}}}}]}
  }
}"##;

#[test]
fn every_request_of_a_run_is_a_valid_chat_completion_request_with_structured_outputs() {
    let fix = "x = 1";
    let handler: Handler = Box::new(move |kind, req, _| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", "x = undefined_name"), ("T2", &metrics_cell(0.9))])),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), fix))
        }
        _ => Reply::text("A narrative."),
    });
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1},
               "llm": {"prices": {"fake-model": {"input": 1, "output": 2}}}}),
        handler,
    );
    let out = p.run(&["run", "--use-idea"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let reqs = p._srv.requests();
    assert!(reqs.len() >= 4, "strategy, generation, fix, report: {}", reqs.len());
    // Validate every body with the jsonschema package of the test venv (nbformat depends on it).
    let dir = util::tempdir();
    util::write(dir.path(), "schema.json", CHAT_REQUEST_SCHEMA);
    util::write(dir.path(), "requests.json", &serde_json::to_string(&reqs).unwrap());
    let check = std::process::Command::new(util::test_venv().join("bin/python"))
        .current_dir(dir.path())
        .args(["-c", "import json, jsonschema\nschema = json.load(open('schema.json'))\nfor i, r in enumerate(json.load(open('requests.json'))):\n    jsonschema.validate(r, schema)\nprint('valid')"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", util::text(&check));
    // The generation and fix requests asked for their shapes (structured outputs).
    let gen = p.requests(Kind::Generation);
    assert_eq!(gen[0]["response_format"]["json_schema"]["name"], "notebook", "{:#}", gen[0]);
    // Long requests stream by default (a proxy sees bytes while the model works).
    assert_eq!(gen[0]["stream"], true, "{:#}", gen[0]);
    let fixes = p.requests(Kind::Fix);
    assert_eq!(fixes[0]["response_format"]["json_schema"]["name"], "cell_fix");
    // Replies in a fence with prose needed the extractor's repairs: counted.
    let s = summary(&p);
    assert!(s["replies_repaired"].as_u64().unwrap() >= 1, "{s:#}");
    // The trial's report says what its LLM calls used and cost.
    let report = std::fs::read_to_string(p.archived()[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("## LLM use") && report.contains("cost $"), "{report}");

    // llm.structured_outputs = false sends no schema.
    let q = Project::new(
        json!({"experiment": {"max_iterations": 1}, "llm": {"structured_outputs": false}}),
        crate::pipeline::simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.9))])]),
    );
    assert_eq!(q.run(&["run"]).status.code(), Some(0));
    assert!(q.requests(Kind::Generation)[0].get("response_format").is_none());
    // llm.stream = false asks for whole replies.
    let r = Project::new(
        json!({"experiment": {"max_iterations": 1}, "llm": {"stream": false}}),
        crate::pipeline::simple_handler(vec![generation_reply(&[("T1", &metrics_cell(0.9))])]),
    );
    assert_eq!(r.run(&["run"]).status.code(), Some(0));
    assert!(r.requests(Kind::Generation)[0].get("stream").is_none_or(|v| v == false));
}
