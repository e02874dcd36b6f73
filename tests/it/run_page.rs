//! The run page of real runs (the fake LLM on loopback, a real kernel, small notebooks that train
//! instantly): 1, 3 and 12 nodes under serial, best_of_n and tree, a killed run and its resumption.
//! Each page must show every node of its summary with its status, score and parent, its links must
//! point at files that exist, and a headless Chromium must load it without a console message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::pipeline::{fix_reply, generation_reply, metrics_cell, read_json, stdout, Handler, Kind, Project};
use crate::util::fake_llm::Reply;
use crate::util::{self, cellsci, Running};
use crate::view::{browser_dom, chromium_or_skip};

/// The loop summary of a project's save root (the only one unless `nth` says otherwise: oldest first).
fn summaries(p: &Project) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p.save_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|f| {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("phase2_loop_summary_") && n.ends_with(".json")
        })
        .collect();
    v.sort();
    v
}

/// The page named after a summary: `run_<stamp>_<pid>.html` beside it.
fn page_of(summary: &Path) -> PathBuf {
    let name = summary.file_name().unwrap().to_string_lossy().replace("phase2_loop_summary_", "run_");
    summary.with_file_name(name.replace(".json", ".html"))
}

/// `run.html` in `dir` is a copy of `page` (the newest run's page).
#[track_caller]
pub(crate) fn assert_latest(dir: &Path, page: &Path) {
    let latest = std::fs::read(dir.join("run.html")).unwrap();
    assert!(latest == std::fs::read(page).unwrap(), "run.html is {}", page.display());
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// What a user must see of the summary on its page: every node (card and diagram) with its status, score
/// and parent, nothing else; the archived node marked; every link to a file that exists.
#[track_caller]
fn assert_page_matches(page_path: &Path, s: &Value) {
    let page = std::fs::read_to_string(page_path).unwrap_or_else(|e| panic!("{}: {e}", page_path.display()));
    let its = s["iterations"].as_array().expect("iterations is a list");
    assert!(
        !page.contains("http-equiv=\"refresh\"") || s["finished_at"].is_null(),
        "a finished run's page does not reload"
    );
    assert_eq!(page.matches("<section class=\"node").count(), its.len(), "one card per node: {page}");
    assert_eq!(page.matches("<g class=\"dnode").count(), its.len(), "one diagram node per node");
    assert_eq!(page.matches("<td class=\"num node\"><a href=\"#iter-").count(), its.len(), "one overview row per node");
    for r in its {
        let score = match r["score"].as_f64() {
            Some(x) if x != -999.0 => format!("{x:.4}"),
            _ => "—".into(),
        };
        let parent = r["parent"].as_i64().map(|p| p.to_string()).unwrap_or_default();
        let card = format!(
            "id=\"iter-{i}\" data-iter=\"{i}\" data-status=\"{st}\" data-score=\"{score}\" data-parent=\"{parent}\"",
            i = r["iter"],
            st = r["status"].as_str().unwrap()
        );
        assert!(page.contains(&card), "the card {card} in {}", page_path.display());
        let node = format!(
            "data-iter=\"{}\" data-status=\"{}\" data-parent=\"{parent}\"",
            r["iter"],
            r["status"].as_str().unwrap()
        );
        assert!(page.contains(&node), "the diagram node {node}");
        if r["status"] == "VALID" {
            assert!(page.contains("<table class=\"stats\">"), "the statistics of a scored node");
        }
    }
    if s["archived_dir"].is_string() {
        assert_eq!(page.matches("class=\"badge ok\">archived<").count(), 1, "the archived node is marked");
    }
    // links: relative, to files that exist
    let dir = page_path.parent().unwrap();
    let re = regex::Regex::new(r##"href="([^"#][^"]*)""##).unwrap();
    let mut n = 0;
    for c in re.captures_iter(&page) {
        let target = unescape(&c[1]);
        assert!(!target.starts_with('/') && !target.contains("://"), "a relative link: {target}");
        assert!(dir.join(&target).exists(), "the link {target} of {} points at nothing", page_path.display());
        n += 1;
    }
    assert!(n > 0, "the page links to the summary at least");
    assert!(!page.to_ascii_lowercase().contains("<script"), "no script");
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing from the network");
}

/// The page in a real browser: it loads, without console messages, with every node in its DOM.
#[track_caller]
fn assert_browser_reads(page: &Path, nodes: usize) {
    let Some(browser) = chromium_or_skip("the run page of a real run") else { return };
    let (dom, log) = browser_dom(&browser, page);
    assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "console messages: {log}");
    assert_eq!(dom.matches("<section class=\"node").count(), nodes, "{dom}");
    assert_eq!(dom.matches("<g class=\"dnode").count(), nodes, "{dom}");
}

/// Drafts score 0.2 (+0.01 per draft); a node told "It scored X" scores X + 0.05. The generation
/// numbered in `broken` has a cell the model cannot fix (its fix returns the same code).
fn scoring_handler(broken: &'static [usize]) -> Handler {
    const BAD: &str = "raise ValueError('the dose column is missing')";
    Box::new(move |kind, req, n| match kind {
        Kind::Generation if broken.contains(&n) => Reply::text(&generation_reply(&[("load", BAD)])),
        Kind::Generation => {
            let user = req["messages"][1]["content"].as_str().unwrap_or("");
            let re = regex::Regex::new(r"It scored ([0-9]+(?:\.[0-9]+)?)").unwrap();
            let score = match re.captures(user) {
                Some(c) => c[1].parse::<f64>().unwrap() + 0.05,
                None => 0.2 + 0.01 * n as f64,
            };
            let score = (score * 1000.0).round() / 1000.0;
            Reply::text(&generation_reply(&[("load", "x = 1\nprint('loaded', x)"), ("train", &metrics_cell(score))]))
        }
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            let idx = doc["errors"][0]["cell_index"].as_i64().unwrap();
            Reply::text(&fix_reply(idx, doc["failing_code"][0]["source"].as_str().unwrap_or(BAD)))
        }
        Kind::Strategy => Reply::text("## Research strategy\n\nFit a ridge baseline, then a better model."),
        Kind::Report => Reply::text("The better model wins on PCC against the ridge baseline."),
    })
}

fn project(nodes: u32, search: Value, broken: &'static [usize]) -> Project {
    Project::new(
        json!({"experiment": {"max_iterations": nodes, "success_threshold": 0.99}, "search": search}),
        scoring_handler(broken),
    )
}

#[test]
fn one_node_serial_pages_two_runs_on_one_save_root_never_overwrite_each_other() {
    let p = project(1, json!({}), &[]);
    let out = p.run(&["run", "--use-idea"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let first = summaries(&p).remove(0);
    let s = read_json(&first);
    assert_page_matches(&page_of(&first), &s);
    let page = std::fs::read_to_string(page_of(&first)).unwrap();
    assert_eq!(
        std::fs::read_to_string(p.save_root().join("run.html")).unwrap(),
        page,
        "run.html is the newest run's page"
    );
    // What a scientist reads: the strategy, the narrative, the computed tables, the verdict, named cells.
    assert!(page.contains("<summary>Research strategy</summary>"), "{page}");
    assert!(page.contains("The better model wins on PCC against the ridge baseline."), "the narrative");
    assert!(
        page.contains("<th class=\"num\">p (Wilcoxon)</th>") && page.contains("95% CI of the difference"),
        "{page}"
    );
    assert!(page.contains("<th>ridge_baseline ") || page.contains("<th>ridge_baseline<"), "the models in a table");
    assert!(page.contains("Criterion not met"), "the verdict: {page}");
    assert!(page.contains("<b>step train</b>"), "cells by their names: {page}");
    assert!(!page.contains(">0.0s<"), "real cell durations: {page}");
    assert!(page.contains("id=\"chart\""), "one scored node draws a chart");
    assert_eq!(page.matches("<svg id=\"chart\"").count(), 1, "one score chart");
    assert_browser_reads(&page_of(&first), 1);

    // A second run on the same save root: its own page, and run.html follows it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let all = summaries(&p);
    assert_eq!(all.len(), 2, "{all:?}");
    let second = all.into_iter().find(|f| *f != first).unwrap();
    assert_eq!(std::fs::read_to_string(page_of(&first)).unwrap(), page, "the first run's page is untouched");
    assert_latest(&p.save_root(), &page_of(&second));
    // `view` of the older run, from the summary's own folder by its bare name: its page, links that work,
    // run.html still the newest run's.
    let name = first.file_name().unwrap().to_str().unwrap();
    let out = cellsci(&p.save_root()).args(["view", name]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert_eq!(stdout(&out).trim(), page_of(Path::new(name)).display().to_string());
    assert_page_matches(&page_of(&first), &s);
    assert!(!std::fs::read_to_string(page_of(&first)).unwrap().contains("href=\"&#x2f;&#x2f;"), "no //folder links");
    // viewing an older run leaves run.html alone
    assert_latest(&p.save_root(), &page_of(&second));
    // and from the project's folder, by a relative path, and from an unrelated folder, by an absolute one
    let rel = format!("out/TESTSET/{name}");
    let out = cellsci(p.path()).args(["view", &rel]).output().unwrap();
    assert_eq!(stdout(&out).trim(), page_of(Path::new(&rel)).display().to_string(), "{}", util::text(&out));
    assert_page_matches(&page_of(&first), &s);
    let elsewhere = util::tempdir();
    let out = cellsci(elsewhere.path()).arg("view").arg(&first).output().unwrap();
    assert_eq!(stdout(&out).trim(), page_of(&first).display().to_string(), "{}", util::text(&out));
    assert_page_matches(&page_of(&first), &s);
}

#[test]
fn three_node_serial_and_best_of_n_pages_match_their_summaries() {
    for (strategy, search) in [("serial", json!({})), ("best_of_n", json!({"strategy": "best_of_n", "branches": 3}))] {
        let p = project(3, search, &[1]);
        let out = p.run(&["run"]);
        assert_eq!(out.status.code(), Some(0), "{strategy}: {}", util::text(&out));
        let file = summaries(&p).remove(0);
        let s = read_json(&file);
        assert_eq!(s["iterations"].as_array().unwrap().len(), 3, "{strategy}: {s:#}");
        assert_page_matches(&page_of(&file), &s);
        let page = std::fs::read_to_string(page_of(&file)).unwrap();
        assert!(page.contains("data-status=\"CRASH\""), "{strategy}: the broken node");
        // The unfixable cell: the LLM was asked and its edit was not applied, and the page says why.
        assert!(
            page.contains(
                "proposed by LLM: <span class=\"bad-text\">not applied</span>: the LLM returned the same source"
            ),
            "{strategy}: {page}"
        );
        assert!(!page.contains("by nobody"), "{strategy}");
        assert_browser_reads(&page_of(&file), 3);
    }
}

#[test]
fn a_twelve_node_tree_page_draws_the_tree_and_diffs_children_against_parents() {
    let p = project(12, json!({"strategy": "tree", "branches": 3, "drafts": 3}), &[1]);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let file = summaries(&p).remove(0);
    let s = read_json(&file);
    let its = s["iterations"].as_array().unwrap();
    assert_eq!(its.len(), 12, "{s:#}");
    let page_path = page_of(&file);
    assert_page_matches(&page_path, &s);
    let page = std::fs::read_to_string(&page_path).unwrap();
    // parents above children: every child's circle is lower than its parent's
    let re = regex::Regex::new(r#"data-iter="(\d+)" data-status="[^"]*" data-parent="(\d*)">\s*<title>[^<]*</title>\s*(?:<circle cx="\d+" cy="\d+" r="\d+"[^>]*>)?\s*<circle class="n-[a-z]+" cx="(\d+)" cy="(\d+)""#).unwrap();
    let mut at: HashMap<i64, (i64, i64, Option<i64>)> = HashMap::new();
    for c in re.captures_iter(&page) {
        at.insert(c[1].parse().unwrap(), (c[3].parse().unwrap(), c[4].parse().unwrap(), c[2].parse().ok()));
    }
    assert_eq!(at.len(), 12, "every node drawn: {at:?}");
    let mut children = 0;
    for (i, (_, y, parent)) in &at {
        if let Some(q) = parent {
            assert!(at[q].1 < *y, "node {i} is drawn below its parent {q}: {at:?}");
            children += 1;
        }
    }
    assert!(children >= 6, "a tree: {at:?}");
    // an improvement shows what it changed in its parent's code
    let improve = its.iter().find(|r| r["kind"] == "improve").expect("an improve node");
    let card_at = page.find(&format!("id=\"iter-{}\"", improve["iter"])).unwrap();
    let card = &page[card_at..page[card_at..].find("</section>").unwrap() + card_at];
    assert!(card.contains(&format!("Code changes against <a href=\"#iter-{}\">", improve["parent"])), "{card}");
    assert!(card.contains("<span class=\"ins\">+ "), "the child's new lines: {card}");
    assert_browser_reads(&page_path, 12);
    if let Some(dir) = std::env::var_os("CELLSCI_SHOTS") {
        // screenshots for a human (not an assertion): CELLSCI_SHOTS=/some/folder
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keep = dir.join("tree12");
        let _ = std::fs::remove_dir_all(&keep);
        copy_dir(&p.save_root(), &keep);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_killed_run_has_a_page_and_its_resumption_completes_it() {
    // the second generation sleeps in its cell: the run is killed there
    let sleeping =
        "import os, time\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'cell_started'), 'w').close()\ntime.sleep(60)";
    let inner = scoring_handler(&[]);
    let handler: Handler = Box::new(move |kind, req, n| match kind {
        Kind::Generation if n == 1 => Reply::text(&generation_reply(&[("wait", sleeping)])),
        _ => inner(kind, req, n),
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 3, "success_threshold": 0.99}}), handler);
    let run = Running::start(cellsci(p.path()).args(["--config", "generate_execution_config.json", "run"]));
    util::wait_until("the second node's cell to start", 90, || {
        p.trials().iter().any(|t| t.join("intermediate/cell_started").exists() || t.join("cell_started").exists())
    });
    run.signal(libc::SIGKILL);
    run.finish();
    let file = summaries(&p).remove(0);
    let s = read_json(&file);
    assert!(s["finished_at"].is_null(), "{s:#}");
    // `view` of the killed run, from the save root by the summary's bare name
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let out = cellsci(&p.save_root()).args(["view", &name]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page_path = page_of(&file);
    assert_page_matches(&page_path, &s);
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.contains("not finished (killed?)"), "{page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "its writer is gone: no reload");
    assert_browser_reads(&page_path, s["iterations"].as_array().unwrap().len());

    let out = p.run(&["run", "--resume", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = read_json(&file);
    assert!(s["finished_at"].is_string(), "{s:#}");
    assert_eq!(s["iterations"].as_array().unwrap().len(), 3, "{s:#}");
    assert_page_matches(&page_path, &s);
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.contains("finished, criterion not met"), "{page}");
    assert_latest(&p.save_root(), &page_path);
    assert_browser_reads(&page_path, 3);
}

/// The cost of a rebuild at 200 nodes (run with `--ignored --nocapture`; prints figures, asserts
/// nothing about time): a real trial copied 200 times under a tree-shaped summary, then `report.page`
/// from one process, as the loop calls it: a first build, rebuilds with nothing changed, rebuilds after
/// one trial's event log grew, and after a node was added. `CELLSCI_BENCH_BIN` measures another build
/// of cellsci (e.g. an older one) with the same script.
#[test]
#[ignore]
fn bench_page_rebuild_at_200_nodes() {
    let p = project(1, json!({}), &[]);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let one = read_json(&summaries(&p)[0]);
    let src = p.trials().into_iter().next().unwrap();
    let root = p.save_root().join("bench");
    let mut recs = Vec::new();
    for i in 1..=200i64 {
        let t = root.join(format!("prompt/workspace_bench_iter{i:03}"));
        copy_dir(&src, &t);
        let mut r = one["iterations"][0].clone();
        r["iter"] = json!(i);
        r["trial_dir"] = json!(t);
        r.as_object_mut().unwrap().remove("archived_as");
        r["parent"] = if i > 3 { json!((i - 1) / 3) } else { Value::Null };
        r["kind"] = json!(if i > 3 { "improve" } else { "draft" });
        // CELLSCI_BENCH_ONE_SCORE: one scored node (cellsci before 27 failed on two)
        let one_score = std::env::var_os("CELLSCI_BENCH_ONE_SCORE").is_some();
        r["score"] = if one_score && i > 1 { json!(-999.0) } else { json!(0.2 + 0.001 * i as f64) };
        recs.push(r);
    }
    let mut s = one.clone();
    s["iterations"] = json!(recs[..199]);
    s["finished_at"] = Value::Null;
    let summary = util::write(&root, "phase2_loop_summary_20260101_000000_1.json", &s.to_string());
    s["iterations"] = json!(recs);
    let grown = util::write(&root, "grown.json", &s.to_string());
    let lua = r#"
local report, time, fs = require("report"), require("time"), require("fs")
local summary, grown, trial = arg[1], arg[2], arg[3]
local function ms(f, n)
  local t = time.now()
  for _ = 1, n do f() end
  return (time.now() - t) * 1000 / n
end
local page = function() assert(report.page(summary, { live = true })) end
local first = ms(page, 1)
local same = ms(page, 5)
local ev = trial .. "/events.jsonl"
local changed = ms(function()
  assert(fs.write(ev, assert(fs.read(ev)) .. '{"kind":"log","level":"warn","message":"one more"}\n'))
  page()
end, 5)
assert(fs.write(summary, assert(fs.read(grown))))
local added = ms(page, 1)
print(string.format("BENCH 200 nodes: first build %.1f ms (%.2f ms/node); rebuild, nothing changed %.1f ms (%.3f ms/node); one trial changed %.1f ms (%.3f ms/node); one node added %.1f ms (%.3f ms/node)",
  first, first / 200, same, same / 200, changed, changed / 200, added, added / 200))
"#;
    util::write(&root, "bench.lua", lua);
    let bin = std::env::var_os("CELLSCI_BENCH_BIN").map(PathBuf::from).unwrap_or_else(util::bin);
    let trial = root.join("prompt/workspace_bench_iter100");
    let out = std::process::Command::new(bin)
        .current_dir(&root)
        .args(["script", "bench.lua"])
        .arg(&summary)
        .arg(&grown)
        .arg(&trial)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    println!("{}", stdout(&out).trim());
    if let Some(dir) = std::env::var_os("CELLSCI_SHOTS") {
        let keep = PathBuf::from(dir).join("bench200");
        let _ = std::fs::remove_dir_all(&keep);
        copy_dir(&root, &keep);
    }
}
