//! The run page (report.page, `cellsci view`): hostile content stays text, a scripted run's page matches
//! its summary, `view` rebuilds a page and refuses what is not a loop summary, and (where a Chromium is
//! installed) a real browser reads the page.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::pipeline::{fix_reply, generation_reply, metrics_cell, stdout, Handler, Kind, Project};
use crate::util::fake_llm::Reply;
use crate::util::{self, cellsci};

const HOSTILE: &str = "<script>alert(1)</script> \"quoted\" 'single'";

/// A finished loop of two iterations, made by hand: a crashed one whose code, output, error, fix and log
/// message are hostile, and a valid archived one. Returns the summary's path.
fn hostile_run(dir: &Path, finished: bool) -> PathBuf {
    let trial = dir.join("prompt/workspace_1_iter001");
    let good = dir.join("prompt/prompt_run_1");
    let nb = json!({"cells": [{"cell_type": "code", "metadata": {}, "source": [HOSTILE, "\nx = 1"],
        "outputs": [{"output_type": "stream", "name": "stdout", "text": [HOSTILE]},
                    {"output_type": "error", "ename": "ValueError", "evalue": HOSTILE, "traceback": []}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5});
    util::write(&trial, "notebook_prompt_exec.ipynb", &nb.to_string());
    let mut events = Vec::new();
    for ev in [
        json!({"kind": "cell", "cell_index": 0, "id": "T1", "status": "error", "duration": 0.5}),
        json!({"kind": "fix", "cell_index": 0, "id": "T1", "round": 1, "applied": true, "how": "llm",
               "error": HOSTILE, "before": HOSTILE, "after": "print('</pre><script>alert(1)</script>')"}),
        json!({"kind": "log", "level": "error", "message": HOSTILE}),
    ] {
        events.extend_from_slice(ev.to_string().as_bytes());
        events.push(b'\n');
    }
    // Invalid UTF-8 inside a string and a torn line: both cost their bytes, never the page.
    events.extend_from_slice(
        b"{\"kind\":\"log\",\"level\":\"warn\",\"message\":\"bad \xff\xfe bytes <script>alert(1)</script>\"}\n",
    );
    events.extend_from_slice(b"{\"kind\":\"cell\",\"cell_in\n");
    std::fs::create_dir_all(&trial).unwrap();
    std::fs::write(trial.join("events.jsonl"), events).unwrap();
    util::write(&good, "events.jsonl", "");
    // the strategy, the narrative and a model's name are hostile too
    util::write(&good, "research_strategy.md", HOSTILE);
    util::write(&good, "experiment_report.md", &format!("# Report\n\n## Narrative\n\n{HOSTILE}\n"));
    let metrics = json!({"models": {HOSTILE: {"per_fold": {"0": {"PCC": 0.5}, "1": {"PCC": 0.6}}},
        "ridge": {"per_fold": {"0": {"PCC": 0.1}, "1": {"PCC": 0.2}}}}});
    util::write(&good, "metrics.json", &metrics.to_string());
    let summary = json!({
        "dataset": HOSTILE, "started_at": "2026-01-01T00:00:00", "finished_at": if finished { json!("2026-01-01T01:00:00") } else { Value::Null },
        "primary_metric": "PCC", "direction": "higher", "success_threshold": 0.5, "max_iterations": 2,
        "criteria_met": true, "stopped": null, "best_score": 0.9, "best_trial_dir": good, "archived_dir": good,
        "total_tokens": 42, "prompt_tokens": 40, "completion_tokens": 2, "llm_calls": 3, "total_time_sec": 75.0,
        "iterations": [
            {"iter": 1, "status": "CRASH", "score": -999.0, "trial_dir": trial, "kind": "draft", "error": HOSTILE,
             "criteria_met": false},
            {"iter": 2, "status": "VALID", "score": 0.9, "trial_dir": dir.join("prompt/workspace_1_iter002"),
             "archived_as": good, "kind": "improve", "parent": 1, "criteria_met": true},
        ],
    });
    // the summary's name ends in a pid that is not running, so `view` builds a page that does not reload
    util::write(dir, "phase2_loop_summary_20260101_999999999.json", &summary.to_string())
}

fn assert_no_live_script(page: &str) {
    assert!(!page.to_ascii_lowercase().contains("<script"), "no script element at all: {page}");
    assert!(!page.contains("alert(1)</"), "{page}");
}

// Guards against content from a trial (code, outputs, errors, fixes, log lines, invalid UTF-8) becoming
// markup in the run page.
#[test]
fn view_shows_hostile_trial_content_as_escaped_text() {
    let dir = util::tempdir();
    let summary = hostile_run(dir.path(), true);
    let out = cellsci(dir.path()).arg("view").arg(&summary).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page_path = dir.path().join("run_20260101_999999999.html");
    assert_eq!(stdout(&out).trim(), page_path.display().to_string());
    crate::run_page::assert_latest(dir.path(), &page_path);
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert_no_live_script(&page);
    assert!(page.contains("&lt;script&gt;alert(1)&lt;"), "escaped: {page}");
    assert!(page.contains("&quot;quoted&quot;") && page.contains("&#x27;single&#x27;"), "{page}");
    assert!(page.contains("bad \u{fffd}\u{fffd} bytes"), "invalid UTF-8 is replaced: {page}");
    assert!(page.contains("1 unreadable line(s)"), "{page}");
    assert_eq!(
        page.matches("<div class=\"prose md\"><p>&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; &#x27;single&#x27;</p>").count(),
        2,
        "strategy and narrative are text: {page}"
    );
    assert!(page.contains("<th>&lt;script&gt;alert(1)&lt;"), "a model's name is text: {page}");
    assert!(page.contains("fix round 1</strong> proposed by LLM: <span class=\"ok-text\">applied</span>"), "{page}");
    assert!(page.contains("class=\"ins\">+ print(&#x27;&lt;&#x2f;pre&gt;"), "the diff's new line: {page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "a finished run's page does not reload");
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing from the network");
    assert_eq!(page.matches("<g class=\"dnode").count(), 2);
    assert!(page.contains("href=\"prompt&#x2f;prompt_run_1&#x2f;events.jsonl\""), "relative links: {page}");
}

#[test]
fn view_rebuilds_a_page_and_refuses_a_file_that_is_not_a_loop_summary() {
    let dir = util::tempdir();
    let summary = hostile_run(dir.path(), false);
    let out = cellsci(dir.path()).arg("view").arg(&summary).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page = std::fs::read_to_string(dir.path().join("run_20260101_999999999.html")).unwrap();
    assert!(page.contains("not finished (killed?)"), "a killed run is shown as such: {page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "its writer is gone: no reload");
    for (name, text) in [("config.json", r#"{"dataset_name": "x"}"#), ("broken.json", "{not json")] {
        let f = util::write(dir.path(), name, text);
        let out = cellsci(dir.path()).arg("view").arg(&f).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
        assert!(util::text(&out).contains("not a loop summary"), "{}", util::text(&out));
    }
    let out = cellsci(dir.path()).arg("view").arg("missing.json").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
}

#[test]
fn report_page_of_a_live_run_reloads_itself_and_a_bad_template_is_an_error_value() {
    let dir = util::tempdir();
    let summary = hostile_run(dir.path(), false);
    util::write(
        dir.path(),
        "page.lua",
        &format!(
            r#"local report = require("report")
local p = assert(report.page({s:?}, {{ live = true, refresh = 3, path = "live/run.html" }}))
assert(p == "live/run.html", p)
local ok, e = pcall(report.page, {s:?}, {{ colour = "red" }})
assert(not ok and tostring(e):find("colour"), tostring(e))
local none, err = report.page("page.lua")
assert(none == nil and err.kind == "not_summary", tostring(err and err.message))
"#,
            s = summary.display().to_string()
        ),
    );
    let out = cellsci(dir.path()).args(["script", "page.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page = std::fs::read_to_string(dir.path().join("live/run.html")).unwrap();
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"3\">"), "{page}");
    assert!(page.contains(">running<"), "{page}");
    // A user's template (scripts/run.html.j2) shadows the bundled one; a broken one is a "template" error.
    util::write(dir.path(), "scripts/run.html.j2", "{% for %}");
    util::write(
        dir.path(),
        "bad.lua",
        &format!(
            "local none, err = require('report').page({:?})\nassert(none == nil and err.kind == 'template', tostring(err and err.message))\n",
            summary.display().to_string()
        ),
    );
    let out = cellsci(dir.path()).args(["script", "bad.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
}

/// The scripted run: iteration 1 crashes on a cell the model cannot fix, iteration 2 has a cell the model
/// fixes and meets the threshold.
fn scripted_run() -> Project {
    let broken = "raise RuntimeError('<script>alert(1)</script>')";
    let handler: Handler = Box::new(move |kind, req, n| match kind {
        Kind::Generation if n == 0 => Reply::text(&generation_reply(&[("T1", broken)])),
        Kind::Generation => {
            Reply::text(&generation_reply(&[("T1", "y = undefined_name + 1"), ("T2", &metrics_cell(0.9))]))
        }
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            let idx = doc["errors"][0]["cell_index"].as_i64().unwrap();
            let src = if doc["failing_code"][0]["source"] == broken { broken } else { "y = 2\nprint('fixed', y)" };
            Reply::text(&fix_reply(idx, src))
        }
        Kind::Strategy => Reply::text("A strategy."),
        Kind::Report => Reply::text("Narrative."),
    });
    Project::new(json!({}), handler)
}

#[test]
fn a_scripted_runs_page_matches_its_summary() {
    let p = scripted_run();
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = p.summary();
    let its = s["iterations"].as_array().unwrap();
    assert_eq!(its.len(), 2, "{s:#}");
    assert_eq!(its[0]["status"], "CRASH");
    assert_eq!(its[1]["status"], "VALID");
    let page = std::fs::read_to_string(p.save_root().join("run.html")).unwrap();
    assert_eq!(page.matches("<g class=\"dnode").count(), its.len(), "{page}");
    for r in its {
        let at = format!(
            "id=\"iter-{i}\" data-iter=\"{i}\" data-status=\"{}\"",
            r["status"].as_str().unwrap(),
            i = r["iter"]
        );
        assert!(page.contains(&at), "{at}: {page}");
    }
    assert_eq!(page.matches("class=\"badge ok\">archived<").count(), 1, "the winner is marked");
    assert!(page.contains("fix round 1</strong> proposed by LLM: <span class=\"ok-text\">applied</span>"), "{page}");
    assert!(page.contains("class=\"ins\">+ y = 2"), "the fix's diff: {page}");
    assert!(page.contains("NameError"), "the fixed cell's error: {page}");
    // The computed tables (HTML, from metrics.json) and the per-fold plot are on the page itself (the
    // plot as a data: image).
    assert!(page.contains("<table class=\"results\">") && page.contains("<th>better ★</th>"), "{page}");
    assert!(!page.contains("| Model |"), "no markdown pipes: {page}");
    // (minijinja escapes the slash as &#x2f;, which the browser reads back as '/')
    assert!(page.contains("fold_scores.svg\"><figcaption>PCC per fold"), "the per-fold plot: {page}");
    assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
    assert_no_live_script(&page);
    assert!(!page.contains("http-equiv=\"refresh\""), "the run is over: no reload");
    assert!(page.contains("href=\"prompt&#x2f;prompt_run_"), "links into the archived trial: {page}");

    // The same page, and the page as it was while the run went on, in a real browser.
    let Some(browser) = chromium_or_skip("the browser part of a_scripted_runs_page_matches_its_summary") else {
        return;
    };
    let summary = std::fs::read_dir(p.save_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("phase2_loop_summary_"))
        .unwrap();
    let live = p.save_root().join("live.html");
    let lua = format!(
        "assert(require('report').page({:?}, {{ path = {:?}, live = true }}))\n",
        summary.display().to_string(),
        live.display().to_string()
    );
    util::write(p.path(), "live.lua", &lua);
    let out = cellsci(p.path()).args(["script", "live.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    for (file, is_live) in [(p.save_root().join("run.html"), false), (live, true)] {
        let (dom, log) = browser_dom(&browser, &file);
        assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "console messages: {log}");
        assert_eq!(dom.matches("<g class=\"dnode").count(), its.len(), "{dom}");
        assert!(dom.contains("data-status=\"CRASH\"") && dom.contains("data-status=\"VALID\""), "{dom}");
        assert!(dom.contains("<span class=\"ins\">+ y = 2"), "the fix round's diff: {dom}");
        assert_eq!(dom.contains("http-equiv=\"refresh\""), is_live, "{dom}");
    }
}

/// A Chromium binary: `CELLSCI_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CELLSCI_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n))).find(|p| p.is_file())
}

/// A Chromium for a browser check, or None after saying the check is skipped. Under `CI=true` a missing
/// Chromium fails the test instead: CI must run the browser checks.
#[track_caller]
pub(crate) fn chromium_or_skip(what: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        crate::util::skip_unless_ci(&format!(
            "no chromium binary for {what} (install Debian's chromium, as .ci/run does, or set CELLSCI_CHROMIUM)"
        ));
    }
    found
}

/// The page's DOM as a headless Chromium builds it, and what the browser logged (console messages).
pub(crate) fn browser_dom(browser: &Path, page: &Path) -> (String, String) {
    let profile = util::tempdir();
    let out = std::process::Command::new("timeout")
        .arg("90")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", util::text(&out));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

// A real browser: the pages of a finished and of a live run load without console errors, the hostile
// strings are text nodes, and the nodes and fix rounds are in the DOM.
#[test]
fn a_headless_chromium_reads_the_page_as_text_without_console_errors() {
    let Some(browser) = chromium_or_skip("a_headless_chromium_reads_the_page_as_text_without_console_errors") else {
        return;
    };
    for finished in [true, false] {
        let dir = util::tempdir();
        let summary = hostile_run(dir.path(), finished);
        let page = dir.path().join("live.html");
        let lua = format!(
            "assert(require('report').page({:?}, {{ path = {:?}, live = {} }}))\n",
            summary.display().to_string(),
            page.display().to_string(),
            !finished
        );
        util::write(dir.path(), "page.lua", &lua);
        let out = cellsci(dir.path()).args(["script", "page.lua"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
        let (dom, log) = browser_dom(&browser, &page);
        assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "console messages: {log}");
        assert!(!dom.to_ascii_lowercase().contains("<script"), "no script element in the DOM: {dom}");
        assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "hostile text is text: {dom}");
        assert_eq!(dom.matches("<g class=\"dnode").count(), 2, "{dom}");
        assert!(dom.contains("data-status=\"CRASH\"") && dom.contains("data-status=\"VALID\""), "{dom}");
        assert!(dom.contains("<span class=\"ins\">+ print('&lt;/pre&gt;"), "the fix's diff line: {dom}");
        assert_eq!(dom.contains("http-equiv=\"refresh\""), !finished, "{dom}");
    }
}

// A loop killed in its first round left `"iterations": {}` (early summaries) and nodes in flight; the
// scheduler also records CANCELLED nodes. `view` builds the page of each, and a browser reads it.
#[test]
fn view_builds_pages_of_a_first_round_kill_and_of_in_flight_and_cancelled_nodes() {
    let dir = util::tempdir();
    let empty = json!({"dataset": "D", "primary_metric": "PCC", "started_at": "2026-01-01T00:00:00",
        "finished_at": null, "iterations": {}});
    let f = util::write(dir.path(), "phase2_loop_summary_20260101_000000_999999999.json", &empty.to_string());
    let out = cellsci(dir.path()).arg("view").arg(f.file_name().unwrap()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert_eq!(stdout(&out).trim(), "run_20260101_000000_999999999.html");
    let page = std::fs::read_to_string(dir.path().join("run_20260101_000000_999999999.html")).unwrap();
    assert!(page.contains("not finished (killed?)") && page.contains("No iteration has finished yet."), "{page}");
    assert!(page.contains("No node has a score yet."), "no empty chart: {page}");

    let t1 = dir.path().join("prompt/w_iter001");
    util::write(&t1, "events.jsonl", "");
    let doc = json!({"dataset": "D", "primary_metric": "PCC", "direction": "higher", "success_threshold": 0.5,
        "started_at": "2026-01-01T00:00:00", "finished_at": null, "strategy": "tree",
        "iterations": [
            {"iter": 1, "status": "VALID", "score": 0.4, "trial_dir": t1, "kind": "draft", "criteria_met": false,
             "verdict": {"met": false, "reason": "PCC 0.4 is below 0.5", "criterion": "PCC > 0.5"}},
            {"iter": 2, "status": "CANCELLED", "cancelled": true, "score": -999.0, "kind": "improve", "parent": 1}],
        "in_flight": [{"iter": 3, "kind": "improve", "parent": 1, "started_at": "2026-01-01T00:01:00"},
                      {"iter": 4, "kind": "draft", "parent": null, "started_at": "2026-01-01T00:01:00"}]});
    let s = util::write(dir.path(), "phase2_loop_summary_20260101_000001_999999999.json", &doc.to_string());
    let lua = format!("assert(require('report').page({:?}, {{ live = true }}))\n", s.display().to_string());
    util::write(dir.path(), "live.lua", &lua);
    let out = cellsci(dir.path()).args(["script", "live.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page_path = dir.path().join("run_20260101_000001_999999999.html");
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert_eq!(page.matches("<g class=\"dnode").count(), 4, "recorded and in-flight nodes: {page}");
    assert_eq!(page.matches("data-status=\"RUNNING\"").count(), 4, "two nodes running (card and diagram)");
    assert!(page.contains("data-iter=\"3\" data-status=\"RUNNING\" data-parent=\"1\""), "{page}");
    assert!(page.contains("data-iter=\"2\" data-status=\"CANCELLED\" data-parent=\"1\""), "{page}");
    assert!(page.contains("Criterion not met</b>: PCC 0.4 is below 0.5 <span class=\"muted\">(PCC &gt; 0.5)</span>"));
    assert!(page.contains("in flight: <a href=\"#iter-3\">3</a>, <a href=\"#iter-4\">4</a>"), "{page}");
    // the newest summary's page is run.html
    crate::run_page::assert_latest(dir.path(), &page_path);
    // the same run once over: in-flight nodes were cut short, and the page does not reload
    let out = cellsci(dir.path()).arg("view").arg(&s).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.contains("data-iter=\"3\" data-status=\"CUT SHORT\""), "{page}");
    assert!(!page.contains("http-equiv=\"refresh\""));
    let Some(browser) =
        chromium_or_skip("view_builds_pages_of_a_first_round_kill_and_of_in_flight_and_cancelled_nodes")
    else {
        return;
    };
    let (dom, log) = browser_dom(&browser, &page_path);
    assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "console messages: {log}");
    assert_eq!(dom.matches("<section class=\"node").count(), 4, "{dom}");
}

// The cards' statistics use the report's baseline policy (a user's report_policy.lua) when the page is
// built from Lua, as the loop builds it.
#[test]
fn report_page_takes_the_baseline_from_the_report_policy() {
    let dir = util::tempdir();
    let t = dir.path().join("prompt/w_iter001");
    let metrics = json!({"models": {
        "ridge": {"per_fold": {"0": {"PCC": 0.1}, "1": {"PCC": 0.2}, "2": {"PCC": 0.15}}},
        "deep": {"per_fold": {"0": {"PCC": 0.5}, "1": {"PCC": 0.7}, "2": {"PCC": 0.55}}}}});
    util::write(&t, "metrics.json", &metrics.to_string());
    util::write(&t, "events.jsonl", "");
    let doc = json!({"primary_metric": "PCC", "direction": "higher", "finished_at": "2026-01-01T00:00:01",
        "iterations": [{"iter": 1, "status": "VALID", "score": 0.58, "trial_dir": t}]});
    let s = util::write(dir.path(), "phase2_loop_summary_20260101_000000_999999999.json", &doc.to_string());
    let page_path = dir.path().join("run_20260101_000000_999999999.html");
    let out = cellsci(dir.path()).arg("view").arg(&s).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.contains("baseline ridge ·"), "the default rule: {page}");
    util::write(
        dir.path(),
        "scripts/report_policy.lua",
        "return { baseline = function(names) return names[#names] end }\n",
    );
    util::write(dir.path(), "page.lua", &format!("assert(require('report').page({:?}))\n", s.display().to_string()));
    let out = cellsci(dir.path()).args(["script", "page.lua"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.contains("baseline deep ·"), "the policy's baseline: {page}");
    assert!(page.contains("<th>ridge</th><td class=\"num\">0.1500</td>"), "ridge compared with deep: {page}");
}
