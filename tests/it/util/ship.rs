//! Helpers of the tests of what ships (tests/it/ship.rs, tests/wheel.rs): what a finished demo shows,
//! and the commit `--version` names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super as util;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub use util::skip_unless_ci;

/// The commit `cellsci --version` must name: the repository's HEAD, "unknown" without git.
pub fn head_commit() -> String {
    let out = Command::new("git").arg("-C").arg(util::repo()).args(["rev-parse", "--short=12", "HEAD"]).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}

pub fn test_python() -> PathBuf {
    util::test_venv().join("bin/python")
}

/// The lines `cellsci demo` ends with: `demo: <what>: <path>`.
pub fn said(so: &str, what: &str) -> PathBuf {
    let prefix = format!("demo: {what}: ");
    let line = so.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no '{prefix}' line in:\n{so}"));
    PathBuf::from(line[prefix.len()..].trim_end_matches(" (open it in a browser)"))
}

/// What a finished demo must have shown and left in `dir` (the demo folder), whoever ran it.
pub fn assert_demo_succeeded(out: &Output, dir: &Path) {
    let so = stdout(out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(out));
    assert!(so.contains("[SUCCESS] Success threshold met"), "{so}");
    assert!(so.contains("[CHECK] composition_ridge | PCC: 0.7586"), "{so}");
    assert!(so.contains("demo: the success criterion was met (best PCC 0.7586, threshold 0.5)"), "{so}");
    let results = said(&so, "results");
    assert!(results.starts_with(dir.join("results/DEMO/generate_execution/prompt")), "{so}");
    assert!(results.file_name().unwrap().to_string_lossy().starts_with("prompt_run_"), "{so}");
    let report = std::fs::read_to_string(said(&so, "report")).unwrap();
    assert!(report.contains("composition_ridge"), "{report}");
    let page = std::fs::read_to_string(said(&so, "run page")).unwrap();
    assert!(page.contains("<html") && page.contains("composition_ridge"), "the run page shows the winner");
    assert!(results.join("notebook_prompt_exec.ipynb").is_file() && results.join("metrics.json").is_file());
    assert!(so.contains("cellsci -c ") && so.contains("generate_execution_config.json run --use-idea"), "{so}");
}
