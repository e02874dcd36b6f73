//! The asynchronous search (stdlib/search.lua) and its policies: a slot that frees starts the next node
//! at once, a met criterion cancels the nodes in flight, the archive is the best, siblings diverge,
//! children reuse their parent's strategy, budgets of nodes and time end the search, a killed mcts run
//! resumes. Real binary, real kernels, the loopback fake LLM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pipeline::{generation_reply, metrics_cell, read_json, stdout, Handler, Kind, Project};
use crate::util::fake_llm::Reply;
use crate::util::{self, cellsci, Running};

/// Seconds of the day of an event's `ts` (RFC 3339, sub-second).
fn secs(ts: &str) -> f64 {
    let t = &ts[11..];
    let end = t[8..].find(['+', '-', 'Z']).map_or(t.len(), |i| i + 8);
    let p: Vec<&str> = t[..end].split(':').collect();
    p[0].parse::<f64>().unwrap() * 3600.0 + p[1].parse::<f64>().unwrap() * 60.0 + p[2].parse::<f64>().unwrap()
}

fn events(trial: &Path) -> Vec<Value> {
    std::fs::read_to_string(trial.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// First and last event times of a trial.
fn span(trial: &Path) -> (f64, f64) {
    let ev = events(trial);
    (secs(ev[0]["ts"].as_str().unwrap()), secs(ev.last().unwrap()["ts"].as_str().unwrap()))
}

fn iterations(s: &Value) -> Vec<Value> {
    s["iterations"].as_array().unwrap().clone()
}

fn trial_of(rec: &Value) -> PathBuf {
    PathBuf::from(rec["archived_as"].as_str().or(rec["trial_dir"].as_str()).unwrap())
}

/// A notebook cell: sleep `secs`, then write metrics scoring `score`.
fn cell(secs: f64, score: f64) -> String {
    format!("import time\ntime.sleep({secs})\n{}", metrics_cell(score))
}

fn project(config: Value, handler: Handler) -> Project {
    Project::new(config, handler)
}

#[test]
fn a_slot_that_frees_starts_the_next_node_while_the_others_still_run() {
    // Node 1's notebook trains for 8 s, the others for 0.2 s. In lock-step rounds nodes 3 and 4 would
    // wait for node 1; on the scheduler they run (and end) while it still trains.
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => {
            let slow = n == 0;
            let code = cell(if slow { 8.0 } else { 0.2 }, if slow { 0.31 } else { 0.2 });
            Reply::text(&generation_reply(&[("T1", &code)]))
        }
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 4, "success_threshold": 0.99}, "search": {"branches": 2}}),
        handler,
    );
    let out = p.run(&["run", "--strategy", "best_of_n"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    let recs = iterations(&s);
    assert_eq!(recs.len(), 4, "{s:#}");
    let slow = recs.iter().find(|r| (r["score"].as_f64().unwrap() - 0.31).abs() < 1e-6).expect("the slow node");
    let (_, slow_end) = span(&trial_of(slow));
    let others: Vec<&Value> = recs.iter().filter(|r| r["iter"] != slow["iter"]).collect();
    for r in &others {
        let (start, end) = span(&trial_of(r));
        println!("node {}: {start:.2}..{end:.2} (slow node ends {slow_end:.2})", r["iter"]);
        assert!(end < slow_end, "node {} ended after the slow node: no slot was refilled early", r["iter"]);
    }
    // Its best is archived, and the summary agrees.
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
    assert!((s["best_score"].as_f64().unwrap() - 0.31).abs() < 1e-6);
}

#[test]
fn a_met_criterion_cancels_the_nodes_in_flight_at_once() {
    // One node meets the criterion fast; another is in a 60 s cell; a third waits on a 30 s LLM reply.
    // Both are cancelled: the run ends in seconds, they are CANCELLED in the summary, print nothing the
    // runner reads, and leave no kernel behind.
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => match n {
            0 => Reply::text(&generation_reply(&[("T1", &cell(0.5, 0.9))])),
            1 => Reply::text(&generation_reply(&[("T1", &cell(60.0, 0.95))])),
            _ => {
                std::thread::sleep(Duration::from_secs(30));
                Reply::text(&generation_reply(&[("T1", &cell(0.1, 0.99))]))
            }
        },
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 6, "success_threshold": 0.5}, "search": {"branches": 3}}),
        handler,
    );
    let t = Instant::now();
    let out = p.run(&["run", "--strategy", "best_of_n"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    println!("the run took {took:?}");
    assert!(took < Duration::from_secs(25), "in-flight nodes were not cancelled: the run took {took:?}");
    let s = p.summary();
    let recs = iterations(&s);
    let statuses: Vec<&str> = recs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "VALID").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "CANCELLED").count(), 2, "{statuses:?}");
    assert_eq!(s["iterations_executed"], 1, "cancelled nodes are not attempts: {s:#}");
    assert_eq!(s["cancelled_iterations"], 2);
    assert_eq!(s["in_flight"], json!([]));
    let so = stdout(&out);
    assert_eq!(so.matches("ITERATION ").count(), 1, "only the node that ran prints its block: {so}");
    for bad in ["Error in Node", "Exception:", "Traceback", "[FIX]", "Notebook Generation Failed"] {
        assert!(!so.contains(bad), "a cancelled node printed {bad:?}: {so}");
    }
    assert_eq!(so.matches("Success threshold met").count(), 1, "{so}");
    let met = recs.iter().find(|r| r["status"] == "VALID").unwrap();
    assert_eq!(s["archived_dir"], met["archived_as"], "{s:#}");
    // the cancelled cell was interrupted, its kernel given back and shut down with the pool
    p.assert_no_kernel_left();
    for r in recs.iter().filter(|r| r["status"] == "CANCELLED") {
        assert!(r["error"].as_str().unwrap().contains("the criterion was met"), "{r:#}");
        let ev = events(&trial_of(r));
        assert!(ev.iter().any(|e| e["kind"] == "cancelled"), "{ev:?}");
    }
}

#[test]
fn the_archive_is_the_best_of_several_nodes_that_met_whatever_order_they_end_in() {
    // With on_success = "finish" every node ends; the first to meet (0.6) is not the best (0.9, slower).
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => {
            let (t, score) = [(0.1, 0.6), (2.0, 0.9), (0.8, 0.7)][n.min(2)];
            Reply::text(&generation_reply(&[("T1", &cell(t, score))]))
        }
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 3, "success_threshold": 0.5},
               "search": {"branches": 3, "on_success": "finish"}}),
        handler,
    );
    let out = p.run(&["run", "--strategy", "best_of_n"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    assert_eq!(iterations(&s).iter().filter(|r| r["criteria_met"] == true).count(), 3, "{s:#}");
    assert!((s["best_score"].as_f64().unwrap() - 0.9).abs() < 1e-6, "{s:#}");
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
    let archived = p.archived();
    assert_eq!(archived.len(), 1, "archived once: {archived:?}");
    let m = read_json(&archived[0].join("metrics.json"));
    assert_eq!(m["models"]["better"]["aggregate"]["PCC"], 0.9);
    let so = stdout(&out);
    assert_eq!(so.matches("[ARCHIVE] Saved run to: ").count(), 1, "{so}");
    assert_eq!(so.matches("Success threshold met").count(), 1, "one success line for the run: {so}");
}

#[test]
fn siblings_improving_one_parent_are_told_different_things() {
    // greedy: one draft, then three improvements of it at once; each request differs and names its own
    // focus and what its siblings change.
    let handler: Handler = Box::new(|kind, _req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &cell(0.8, 0.3))])),
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 4, "success_threshold": 0.99},
               "search": {"strategy": "greedy", "branches": 3, "drafts": 1, "debug_prob": 0}}),
        handler,
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let gens = p.requests(Kind::Generation);
    assert_eq!(gens.len(), 4, "one draft, three improvements");
    let users: Vec<String> = gens[1..]
        .iter()
        .map(|r| r["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string())
        .collect();
    for u in &users {
        assert!(u.contains("Start from this earlier notebook (attempt 1)"), "{u}");
        assert!(u.contains("This time change"), "{u}");
    }
    let focus: std::collections::HashSet<&str> =
        users.iter().map(|u| u.split("This time change ").nth(1).unwrap().split('.').next().unwrap()).collect();
    assert_eq!(focus.len(), 3, "three siblings, three different changes: {focus:?}");
    assert!(users[1..].iter().any(|u| u.contains("Other attempts start from the same notebook")), "{users:?}");
    let s = p.summary();
    let kinds: Vec<String> = iterations(&s).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["draft", "improve", "improve", "improve"]);
    assert!(iterations(&s)[1..].iter().all(|r| r["parent"] == 1));
}

#[test]
fn an_improvement_reuses_its_parents_research_strategy() {
    let handler: Handler = Box::new(|kind, _req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &cell(0.1, 0.3))])),
        Kind::Strategy => Reply::text("# Research Strategy\n\nModel the dose response with ridge."),
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 3, "success_threshold": 0.99},
               "search": {"strategy": "greedy", "branches": 1, "drafts": 1, "debug_prob": 0}}),
        handler,
    );
    let out = p.run(&["run", "--use-idea"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert_eq!(p.requests(Kind::Strategy).len(), 1, "one synthesis for one draft and its two improvements");
    let s = p.summary();
    let recs = iterations(&s);
    let first = std::fs::read_to_string(trial_of(&recs[0]).join("research_strategy.md")).unwrap();
    for r in &recs[1..] {
        assert_eq!(std::fs::read_to_string(trial_of(r).join("research_strategy.md")).unwrap(), first);
        assert_eq!(r["strategy_source"], format!("attempt {}", r["parent"]));
    }
    assert!(util::text(&out).contains("[STRATEGY] research_strategy.md reused from attempt 1"));
}

#[test]
fn the_node_and_time_budgets_end_the_search_with_the_best_archived() {
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &cell(0.1, 0.2 + 0.01 * n as f64))])),
        _ => Reply::text("The numbers."),
    });
    // search.max_nodes wins over experiment.max_iterations
    let p = project(
        json!({"experiment": {"max_iterations": 10, "success_threshold": 0.99},
               "search": {"strategy": "greedy", "branches": 2, "max_nodes": 3, "drafts": 2}}),
        handler,
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    assert_eq!(iterations(&s).len(), 3, "{s:#}");
    assert_eq!(s["max_iterations"], 3);
    assert_eq!(p.archived().len(), 1);
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);

    // search.time_limit: the first two nodes train 0.5 s, the later ones 60 s; 12 s of search cancels those
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => {
            Reply::text(&generation_reply(&[("T1", &cell(if n < 2 { 0.5 } else { 60.0 }, 0.2 + 0.01 * n as f64))]))
        }
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 20, "success_threshold": 0.99},
               "search": {"strategy": "best_of_n", "branches": 2, "time_limit": 12}}),
        handler,
    );
    let t = Instant::now();
    let out = p.run(&["run"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(took < Duration::from_secs(40), "the 60 s cells were cut short: {took:?}");
    let so = stdout(&out);
    assert!(so.contains("[LOOP] the search's time limit (12s) is spent; ending the search here"), "{so}");
    let s = p.summary();
    assert_eq!(s["stopped"], "time_limit");
    let recs = iterations(&s);
    assert!(recs.iter().any(|r| r["status"] == "VALID"), "{s:#}");
    assert!(recs.iter().any(|r| r["status"] == "CANCELLED"), "{s:#}");
    assert!(recs.len() < 20);
    assert_eq!(p.archived().len(), 1, "the best is archived");
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
}

#[test]
fn search_settings_are_checked_before_anything_runs() {
    let handler: Handler = Box::new(|_kind, _req, _n| Reply::text("never asked"));
    for (bad, says) in [
        (json!({"search": {"branches": 0}}), "search.branches: expected a whole number >= 1, got 0"),
        (json!({"search": {"branches": -1}}), "search.branches: expected a whole number >= 1, got -1"),
        (json!({"search": {"branches": "four"}}), "search.branches: expected a whole number >= 1"),
        (json!({"search": {"branches": [2]}}), "search.branches: expected a whole number >= 1, got a list"),
        (json!({"search": {"debug_prob": 1.5}}), "search.debug_prob: expected a number from 0 to 1"),
        (json!({"search": {"on_success": "maybe"}}), "search.on_success: expected one of \"stop\", \"finish\""),
        (json!({"exec": {"gpus": [0, "x"]}}), "exec.gpus: expected a list of whole numbers >= 0 (element 1: \"x\")"),
        (json!({"exec": {"gpus": [0, 1000]}}), "exec.gpus: expected GPU ids from 0 to 63 (element 1: 1000)"),
        (json!({"exec": {"gpus": [1, 1]}}), "element 1: 1 appears twice"),
    ] {
        let p = project(bad.clone(), Box::new(|_k, _r, _n| Reply::text("never asked")));
        let out = p.run(&["run", "--strategy", "best_of_n"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", util::text(&out));
        let text = util::text(&out);
        assert!(text.contains(says), "{bad}: {text}");
        assert!(text.contains("generate_execution_config.json"), "the file is named: {text}");
        assert!(p.requests(Kind::Generation).is_empty());
    }
    // zero iterations means zero: no LLM call, nothing archived, exit 0
    let p = project(json!({"experiment": {"max_iterations": 0}}), handler);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(p.seen.lock().unwrap().is_empty(), "no request for zero iterations");
    assert!(!stdout(&out).contains("ITERATION"));
    assert_eq!(p.summary()["iterations"], json!([]));
}

#[test]
fn forty_branches_for_two_nodes_start_two_kernels() {
    let handler: Handler = Box::new(|kind, _req, _n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &cell(0.1, 0.3))])),
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 2, "success_threshold": 0.99}, "search": {"branches": 40}}),
        handler,
    );
    let run = Running::start(cellsci(p.path()).args([
        "--config",
        "generate_execution_config.json",
        "run",
        "--strategy",
        "best_of_n",
    ]));
    let mut most = 0;
    let t = Instant::now();
    while run.output().matches("[LOOP] Finished").count() == 0 && t.elapsed() < Duration::from_secs(60) {
        most = most.max(kernels_of(run.id()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, out) = run.finish();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("[SEARCH] 40 branches asked for, but only 2 nodes can run: using 2"), "{out}");
    assert!(most <= 2, "{most} kernels ran for two nodes");
}

/// How many ipykernel processes descend from `pid`.
fn kernels_of(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Ok(cmd) = std::fs::read_to_string(e.path().join("cmdline")) else { continue };
        let ppid: u32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap_or(0);
        if cmd.contains("ipykernel") && (ppid == pid || parent_of(ppid) == Some(pid)) && p != pid {
            n += 1;
        }
    }
    n
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_killed_mcts_run_resumes_and_finishes_exactly_what_was_left() {
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => {
            // every third notebook fails, the rest score a little better each time
            let code =
                if n % 3 == 2 { "raise ValueError('bad draft')".to_string() } else { cell(0.6, 0.2 + 0.02 * n as f64) };
            Reply::text(&generation_reply(&[("T1", &code)]))
        }
        Kind::Fix => Reply::text("{\"edits\": []}"),
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 7, "success_threshold": 0.99},
               "exec": {"max_fix_rounds": 0},
               "search": {"strategy": "mcts", "branches": 2, "drafts": 2, "seed": 7}}),
        handler,
    );
    let mut run = Running::start(cellsci(p.path()).args(["--config", "generate_execution_config.json", "run"]));
    run.wait_for("[COST] Iteration");
    run.wait_for("[COST] Iteration");
    run.wait_for("[COST] Iteration");
    run.signal(libc::SIGKILL);
    let _ = run.finish();
    std::thread::sleep(Duration::from_millis(1500));
    let s = p.summary();
    let done_before: Vec<i64> = iterations(&s).iter().map(|r| r["iter"].as_i64().unwrap()).collect();
    assert!(done_before.len() >= 2 && done_before.len() < 7, "{done_before:?}");
    let file = p.summary_path();
    let out = p.run(&["run", "--resume", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    let mut iters: Vec<i64> = iterations(&s).iter().map(|r| r["iter"].as_i64().unwrap()).collect();
    iters.sort();
    assert_eq!(iters, [1, 2, 3, 4, 5, 6, 7], "every node once: {s:#}");
    assert!(!s["finished_at"].is_null());
    assert_eq!(p.archived().len(), 1, "the best archived once");
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
    // the tree: every child names a recorded parent
    for r in iterations(&s) {
        if let Some(par) = r["parent"].as_i64() {
            assert!(iters.contains(&par), "{r:#}");
            assert_ne!(r["kind"], "draft");
        }
    }
    p.assert_no_kernel_left();
}

/// The README's policy example (the block starting `-- two_best.lua`), as a user would copy it.
fn readme_policy() -> String {
    let readme = std::fs::read_to_string(util::repo().join("README.md")).unwrap();
    let at = readme.find("-- two_best.lua").expect("the README's policy example");
    readme[at..readme[at..].find("```").unwrap() + at].to_string()
}

#[test]
fn the_readmes_policy_file_runs_on_the_scheduler_and_an_edit_is_loaded_at_the_next_decision() {
    let handler: Handler = Box::new(|kind, _req, n| match kind {
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &cell(0.7, 0.2 + 0.01 * n as f64))])),
        _ => Reply::text("The numbers."),
    });
    let p = project(
        json!({"experiment": {"max_iterations": 9, "success_threshold": 0.99}, "search": {"branches": 3}}),
        handler,
    );
    let file = util::write(p.path(), "two_best.lua", &readme_policy());
    let mut run = Running::start(cellsci(p.path()).args([
        "--config",
        "generate_execution_config.json",
        "run",
        "--strategy",
        file.to_str().unwrap(),
    ]));
    run.wait_for("[COST] Iteration");
    run.wait_for("[COST] Iteration");
    run.wait_for("[COST] Iteration");
    // from now on: drafts only, tagged
    std::fs::write(&file, "return { choose = function(S) return { kind = \"draft\", focus = \"edited\" } end }\n")
        .unwrap();
    let (status, out) = run.finish();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("reloaded {}", file.display())), "{out}");
    let s = p.summary();
    let recs = iterations(&s);
    assert_eq!(recs.len(), 9);
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.iter().filter(|k| **k == "improve").count() >= 1, "the README's policy improved: {kinds:?}");
    assert!(recs.iter().any(|r| r["focus"] == "edited"), "the edited policy was used: {kinds:?}");
    let last = recs.iter().max_by_key(|r| r["iter"].as_i64().unwrap()).unwrap();
    assert_eq!(last["focus"], "edited", "{last:#}");
}
