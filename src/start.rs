//! `cellsci demo` and `cellsci init`: the two ways in for someone who installed the binary alone (a wheel,
//! `cargo install`), with no source tree. The demo writes the embedded demo (config, stage-1 data, the
//! recorded LLM replies) into a folder of its own and runs it offline; init writes a commented phase-2
//! config and the bundled prompt files to start a real project from.
//!
//! Neither ever overwrites a file: a folder that is in the way is a usage error (exit 2) and nothing is
//! written, so a user's earlier results or edited prompts cannot be lost to a second `demo` or `init`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The demo's folder when none is given.
pub const DEFAULT_DEMO_DIR: &str = "cellsci-demo";
/// The config file both write (the name phase-2 users keep next to their run).
pub const CONFIG: &str = crate::cli::DEFAULT_CONFIG;

/// The commented config `cellsci init` writes.
const INIT_CONFIG: &str = include_str!("../examples/init/generate_execution_config.json");

/// A folder may be written into only when it does not exist or is empty.
fn check_free(dir: &Path, what: &str) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{what} {}: exists and is not a folder; give another folder", dir.display());
        }
        let used = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_some();
        if used {
            bail!(
                "{what} {}: the folder exists and is not empty; {what} never overwrites anything: remove it or \
                 give another folder (cellsci {what} DIR)",
                dir.display()
            );
        }
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let dest = dir.join(rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    crate::files::write_atomic(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))
}

/// Write the embedded demo into `dir` and return its config file. With `python`, the config names that
/// interpreter (it needs ipykernel, numpy and h5py) instead of asking for a provisioned kernel venv.
pub fn write_demo(dir: &Path, python: Option<&Path>) -> Result<PathBuf> {
    check_free(dir, "demo")?;
    let python = python.map(crate::files::absolute_clean);
    if let Some(p) = &python {
        if !p.is_file() {
            bail!("demo --python {}: no such file (give a Python that has ipykernel, numpy and h5py)", p.display());
        }
    }
    for (rel, bytes) in crate::lua::embedded::demo_files() {
        if *rel == CONFIG {
            let mut cfg: Value = serde_json::from_slice(bytes).context("the embedded demo config")?;
            if let (Some(p), Some(exec)) = (&python, cfg.get_mut("exec").and_then(Value::as_object_mut)) {
                exec.remove("kernel_packages");
                exec.insert("python".into(), Value::String(p.display().to_string()));
            }
            let mut text = serde_json::to_string_pretty(&cfg)?;
            text.push('\n');
            write_file(dir, rel, text.as_bytes())?;
        } else {
            write_file(dir, rel, bytes)?;
        }
    }
    Ok(dir.join(CONFIG))
}

/// What a finished demo run left, for its closing lines: the newest loop summary under `save_root`.
pub struct DemoResult {
    pub summary: PathBuf,
    pub archived: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub page: Option<PathBuf>,
    pub met: bool,
    /// e.g. `best PCC 0.7586, threshold 0.5`
    pub score: String,
}

pub fn demo_result(save_root: &Path) -> Option<DemoResult> {
    let summary = std::fs::read_dir(save_root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("phase2_loop_summary_") && n.ends_with(".json"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())?;
    let doc: Value = crate::pyjson::parse(&std::fs::read_to_string(&summary).ok()?).ok()?;
    let archived = doc.get("archived_dir").and_then(Value::as_str).map(PathBuf::from);
    let report = archived.as_ref().map(|a| a.join("experiment_report.md")).filter(|p| p.is_file());
    // the page named after this summary (run_<stamp>_<pid>.html), else the copy of the newest
    let own = summary
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("phase2_loop_summary_"))
        .and_then(|n| n.strip_suffix(".json"))
        .map(|stem| save_root.join(format!("run_{stem}.html")));
    let page = own.filter(|p| p.is_file()).or_else(|| Some(save_root.join("run.html")).filter(|p| p.is_file()));
    let met = doc.get("criteria_met").and_then(Value::as_bool).unwrap_or(false)
        || doc.get("criteria_met_iterations").and_then(Value::as_u64).unwrap_or(0) > 0;
    let num = |k: &str| doc.get(k).and_then(Value::as_f64);
    let metric = doc.get("primary_metric").and_then(Value::as_str).unwrap_or("score");
    let score = match (num("best_score").filter(|s| *s != -999.0), num("success_threshold")) {
        (Some(b), Some(t)) => format!("best {metric} {b:.4}, threshold {t}"),
        (None, Some(t)) => format!("nothing scored, threshold {t}"),
        _ => String::new(),
    };
    Some(DemoResult { summary, archived, report, page, met, score })
}

/// The demo's closing lines on stdout: where the results and the run page are, and how to run it again.
pub fn tell_demo(dir: &Path, save_root: &Path) {
    let say = |s: String| {
        crate::ui::line(&s);
    };
    let Some(r) = demo_result(save_root) else {
        say(format!("demo: no loop summary was written under {}", save_root.display()));
        return;
    };
    let verdict = if r.met { "the success criterion was met" } else { "no iteration met the criterion" };
    say(format!("demo: {verdict} ({})", r.score));
    if let Some(a) = &r.archived {
        say(format!("demo: results: {}", a.display()));
    }
    if let Some(p) = &r.report {
        say(format!("demo: report: {}", p.display()));
    }
    if let Some(p) = &r.page {
        say(format!("demo: run page: {} (open it in a browser)", p.display()));
    }
    say(format!(
        "demo: run it again with: cellsci -c {} run --use-idea",
        crate::files::display_path(&dir.join(CONFIG))
    ));
}

/// Write a commented phase-2 config and the bundled prompt files into `dir`; every file that would be
/// overwritten is named and nothing is written.
pub fn write_init(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(String, Vec<u8>)> = vec![(CONFIG.to_string(), INIT_CONFIG.as_bytes().to_vec())];
    for (rel, _) in crate::lua::embedded::files().iter().filter(|(rel, _)| rel.starts_with("prompts/")) {
        let text = crate::lua::embedded::get(rel).unwrap_or_default();
        files.push((rel.to_string(), text.as_bytes().to_vec()));
    }
    let taken: Vec<String> =
        files.iter().filter(|(rel, _)| dir.join(rel).exists()).map(|(rel, _)| rel.clone()).collect();
    if !taken.is_empty() {
        bail!(
            "init {}: {} already exist{}; init never overwrites anything: remove {} or give another folder \
             (cellsci init DIR)",
            dir.display(),
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "it" } else { "them" }
        );
    }
    let mut written = Vec::new();
    for (rel, bytes) in files {
        write_file(dir, &rel, &bytes)?;
        written.push(dir.join(rel));
    }
    Ok(written)
}
