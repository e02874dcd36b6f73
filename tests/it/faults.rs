//! The loop under attack (issue "Reliability"): a full disk, Ctrl-C during an LLM call, SIGKILL at many
//! points followed by `run --resume`. Real binary, real kernel, loopback LLM, real signals.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pipeline::{
    fix_reply, generation_reply, metrics_cell, processes_under, read_json, simple_handler, stdout, walk, Handler, Kind,
    Project,
};
use crate::util::fake_llm::Reply;
use crate::util::{self, cellsci, Running};

/// `cellsci --config ... <args>` in the project, running.
fn start(p: &Project, args: &[&str]) -> Running {
    Running::start(cellsci(p.path()).args(["--config", "generate_execution_config.json"]).args(args))
}

fn summary_file(p: &Project) -> PathBuf {
    p.summary_path()
}

/// Run `check(point)` for every kill point, two at a time; fails listing every point that failed.
pub(crate) fn at_every_point<T: Sync>(points: &[T], name: impl Fn(&T) -> String + Sync, check: impl Fn(&T) + Sync) {
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(point) = points.get(i) else { break };
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(point))) {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.lock().unwrap().push(format!("killed at {}: {msg}", name(point)));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} kill points failed:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n\n")
    );
}

/// Ctrl-C while the LLM request of `kind` is in flight: the loop ends at once as INTERRUPTED.
fn interrupt_during(kind: Kind) {
    let stall: Handler = Box::new(move |k, req, _n| {
        if k == kind {
            return Reply::Stall(Duration::from_secs(30));
        }
        match k {
            Kind::Generation => {
                Reply::text(&generation_reply(&[("T1", "x = undefined_name"), ("T2", &metrics_cell(0.9))]))
            }
            Kind::Fix => {
                let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
                Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), "x = 1"))
            }
            _ => Reply::text("ok"),
        }
    });
    let p = Project::new(json!({"experiment": {"max_iterations": 3}}), stall);
    let run = start(&p, &["run"]);
    util::wait_until("the stalled request", 60, || !p.requests(kind).is_empty());
    let t = Instant::now();
    run.signal(libc::SIGINT);
    let (status, out) = run.finish();
    assert!(t.elapsed() < Duration::from_secs(15), "cellsci did not stop promptly: {out}");
    assert_eq!(status.code(), Some(130), "{out}");
    let s = read_json(&summary_file(&p));
    assert_eq!(s["iterations_executed"], 1, "no further iteration started: {s:#}");
    assert_eq!(s["iterations"][0]["status"], "INTERRUPTED", "{s:#}");
    assert_eq!(s["stopped"], "interrupted");
    assert!(p.archived().is_empty(), "an interrupted iteration is not archived as a result");
    p.assert_no_kernel_left();
}

#[test]
fn ctrl_c_during_a_fix_request_ends_the_loop_as_interrupted_not_crash() {
    // The fix policy swallowed the interrupted LLM call: CRASH was recorded and iteration 2 started.
    interrupt_during(Kind::Fix);
}

#[test]
fn ctrl_c_during_the_report_request_ends_the_loop_as_interrupted_not_valid() {
    // The report went on without its narrative and the iteration was recorded VALID.
    interrupt_during(Kind::Report);
}

/// Mount a tmpfs of `size` at `dir` (root only); None with a printed reason where that is not possible,
/// and a failure under CI=true (CI runs as root: a test there must run its real part).
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let skip = |why: String| {
            crate::util::skip_unless_ci(&why);
            None
        };
        if unsafe { libc::geteuid() } != 0 {
            return skip("mounting a tmpfs needs root".into());
        }
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => skip(format!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => skip(format!("cannot run mount: {e}")),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A cell that writes until the disk is full, then says so.
pub(crate) const FILL_THE_DISK: &str = r#"import os
chunk = b"x" * 65536
try:
    with open(os.path.join(os.environ["OUTPUT_DIR"], "fill.bin"), "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
except OSError as e:
    print("disk full:", e.strerror)"#;

#[test]
fn a_full_disk_mid_notebook_is_never_reported_as_saved_or_archived() {
    // On a full disk the executed notebook lost its last cells, yet the run said "[EXEC] Saved final state",
    // archived it and exited 0.
    let fill = FILL_THE_DISK;
    let p = Project::new(
        json!({"experiment": {"max_iterations": 2}}),
        simple_handler(vec![generation_reply(&[
            ("T1", "print('first')"),
            ("T2", fill),
            ("T3", &metrics_cell(0.9)),
            ("T4", "print('last')"),
        ])]),
    );
    let Some(_mount) = Tmpfs::mount(&p.save_root(), "2m") else { return };
    let out = p.run(&["run"]);
    let all = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "the loop cannot go on without a disk: {all}");
    assert!(!stdout(&out).contains("[EXEC] Saved final state"), "nothing may claim the notebook saved: {all}");
    assert!(!stdout(&out).contains("[CHECK]") && !stdout(&out).contains("[ARCHIVE]"), "{all}");
    assert!(all.contains("No space left on device"), "{all}");
    assert!(all.contains("notebook_prompt_exec.ipynb"), "the message names the file: {all}");
    assert!(!stdout(&out).contains("ITERATION 2/2"), "a full disk stops the loop: {all}");
    assert!(p.archived().is_empty());
    // What was saved before the disk filled is intact (atomic writes), not a torn file.
    let nb = read_json(&p.trials()[0].join("notebook_prompt_exec.ipynb"));
    assert_eq!(nb["nbformat"], 4);
    p.assert_no_kernel_left();
}

/// A loop whose second iteration meets the criterion, the first needing an LLM fix: every kind of step.
fn two_iteration_project() -> Project {
    let handler: Handler = Box::new(|kind, req, n| match kind {
        Kind::Generation if n == 0 => {
            Reply::text(&generation_reply(&[("T1", "x = undefined_name"), ("T2", &metrics_cell(0.3))]))
        }
        Kind::Generation => Reply::text(&generation_reply(&[("T1", &metrics_cell(0.9))])),
        Kind::Fix => {
            let doc: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
            Reply::text(&fix_reply(doc["errors"][0]["cell_index"].as_i64().unwrap(), "x = 1"))
        }
        Kind::Strategy => Reply::text("**Plan.** Fit the model."),
        Kind::Report => Reply::text("The model did what it did."),
    });
    Project::new(json!({"experiment": {"max_iterations": 2}}), handler)
}

/// Every JSON file and notebook in the project parses; every events.jsonl line is whole JSON.
fn assert_files_valid(p: &Project) {
    for f in walk(p.path()) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".json") || name.ends_with(".ipynb") {
            let text = std::fs::read_to_string(&f).unwrap();
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        } else if name == "events.jsonl" {
            for (i, line) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{}:{}: {e}", f.display(), i + 1));
            }
        }
    }
}

#[test]
fn sigkill_at_any_point_then_resume_finishes_the_loop_correctly_archived() {
    // Where the host is killed, by the line it printed last (merged stdout and stderr).
    const POINTS: &[&str] = &[
        "ITERATION 1/2",
        "[STRATEGY]",
        "[GENERATE]",
        "[GRAPH] running node T1",
        "Error in Node T1",
        "[FIX] T1 | Round 1",
        "[EXEC] Saved final state",
        "[ANALYZE] report written",
        "[CHECK] better | PCC: 0.3000",
        "ITERATION 2/2",
        "[CHECK] better | PCC: 0.9000",
        "[SUCCESS]",
        "[ARCHIVE] Saved run to",
        "[LOOP] report",
    ];
    at_every_point(POINTS, |p| format!("{p:?}"), |p| kill_at_and_resume(p));
}

fn kill_at_and_resume(point: &str) {
    let p = two_iteration_project();
    let mut run = start(&p, &["run", "--use-idea"]);
    run.wait_for(point);
    run.signal(libc::SIGKILL);
    let killed = Instant::now();
    let (_, seen) = run.finish();
    // No kernel (or anything it started) outlives the killed host by more than a second.
    util::wait_until(&format!("no process left after SIGKILL at {point:?}"), 1, || {
        processes_under(p.path()).is_empty()
    });
    assert!(killed.elapsed() < Duration::from_secs(2), "{seen}");
    assert_files_valid(&p);

    let summary = summary_file(&p);
    let out = p.run(&["run", "--use-idea", "--resume", summary.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let s = read_json(&summary);
    assert!(s["finished_at"].is_string(), "{s:#}");
    assert_eq!(s["criteria_met"], true, "{s:#}");
    let archived = p.archived();
    assert_eq!(archived.len(), 1, "exactly one archived run: {archived:?}\n{}", util::text(&out));
    assert_eq!(s["archived_dir"], archived[0].display().to_string());
    let m = read_json(&archived[0].join("metrics.json"));
    assert_eq!(m["models"]["better"]["aggregate"]["PCC"], 0.9);
    assert!(archived[0].join("notebook_prompt_exec.ipynb").is_file());
    assert_files_valid(&p);

    // Resuming again changes nothing: same archive, one Iterations section in the report.
    let again = p.run(&["run", "--use-idea", "--resume", summary.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", util::text(&again));
    assert_eq!(p.archived(), archived, "{}", util::text(&again));
    let report = std::fs::read_to_string(archived[0].join("experiment_report.md")).unwrap();
    assert_eq!(report.matches("## Iterations").count(), 1, "{report}");
    p.assert_no_kernel_left();
}

#[test]
fn resume_archives_a_met_iteration_whose_archive_was_cut_short() {
    // A kill between "[SUCCESS]" and the rename left nothing archived, and --resume said "nothing to do".
    let p = two_iteration_project();
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let summary = summary_file(&p);
    let mut s = read_json(&summary);
    let archived = PathBuf::from(s["archived_dir"].as_str().unwrap());
    // Put the loop back in the state a kill right after "[SUCCESS]" leaves: trial not renamed yet.
    let met = s["iterations"].as_array().unwrap().iter().find(|i| i["criteria_met"] == true).unwrap().clone();
    std::fs::rename(&archived, met["trial_dir"].as_str().unwrap()).unwrap();
    s["archived_dir"] = Value::Null;
    s["best_trial_dir"] = met["trial_dir"].clone();
    s["finished_at"] = Value::Null;
    std::fs::write(&summary, serde_json::to_string_pretty(&s).unwrap()).unwrap();

    let out = p.run(&["run", "--resume", summary.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(stdout(&out).contains("[ARCHIVE] Saved run to: prompt_run_"), "{}", util::text(&out));
    assert!(!stdout(&out).contains("ITERATION"), "no iteration runs again: {}", util::text(&out));
    assert_eq!(p.archived().len(), 1);
    let s = read_json(&summary);
    assert_eq!(s["archived_dir"], p.archived()[0].display().to_string());
    assert!(s["finished_at"].is_string());
}

#[test]
fn the_loop_summary_exists_as_soon_as_the_loop_starts() {
    // A kill during iteration 1 used to leave nothing to --resume from.
    let p = Project::new(
        json!({"experiment": {"max_iterations": 2}}),
        simple_handler(vec![generation_reply(&[("T1", "import time\ntime.sleep(30)")])]),
    );
    let mut run = start(&p, &["run"]);
    run.wait_for("ITERATION 1/2");
    let s = read_json(&summary_file(&p));
    run.signal(libc::SIGKILL);
    run.finish();
    assert_eq!(s["iterations_executed"], 0);
    assert!(s["finished_at"].is_null());
    assert_eq!(s["best_score"], -999.0);
}
