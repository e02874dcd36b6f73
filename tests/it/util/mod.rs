//! Shared test helpers: a temp dir per test, running the real binary, the loopback fake LLM server.
#![allow(dead_code)]

pub mod fake_llm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cellsci binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cellsci"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("cellsci-test-").tempdir().expect("temp dir")
}

/// The Python venv with ipykernel that `.ci/run` creates (override with CELLSCI_TEST_VENV).
pub fn test_venv() -> PathBuf {
    std::env::var_os("CELLSCI_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv"))
}

/// A command for the binary, run in `cwd`, with a clean LLM environment.
pub fn cellsci(cwd: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd).env_remove("OPENAI_API_KEY").env("NO_COLOR", "1");
    c
}

/// stdout + stderr of a finished command, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Write a file (creating folders) and return its path.
pub fn write(dir: &Path, rel: &str, contents: &str) -> PathBuf {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, contents).unwrap();
    p
}
