//! The wheel, as a user gets it: built by maturin from pyproject.toml, installed into a fresh venv, and
//! run from that venv's PATH in an empty folder. A test binary of its own, so that cargo runs it after
//! tests/it (never beside the kernel tests: its build takes both cores for minutes).

use std::path::PathBuf;
use std::process::Command;

#[path = "it/util/mod.rs"]
mod util;

use util::ship::{assert_demo_succeeded, head_commit, skip_unless_ci, test_python};

/// maturin: MATURIN, else the test venv's (`.ci/run` installs it there), else PATH.
fn maturin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MATURIN") {
        return Some(PathBuf::from(p));
    }
    let venv = util::test_venv().join("bin/maturin");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("maturin")).find(|p| p.is_file())
}

/// The README's promise for a user with no Rust: the wheel, installed into a fresh venv, puts `cellsci` on
/// its PATH, and `cellsci demo` in an empty folder runs the demo to its met criterion with nothing but the
/// binary: the wheel's profile (`wheel-test`) uses the embedded scripts only, as a release does, and
/// `--version` says so. (The released wheel is built `--release --zig --compatibility manylinux2014`;
/// this one is built quickly for the host, from the same pyproject.toml.)
#[test]
fn the_wheel_installs_into_a_fresh_venv_and_runs_the_demo_from_its_path() {
    let Some(maturin) = maturin() else {
        return skip_unless_ci("no maturin (pip install maturin, as .ci/run does into .venv, or set MATURIN)");
    };
    let d = util::tempdir();
    let dist = d.path().join("dist");
    let t0 = std::time::Instant::now();
    let out = Command::new(&maturin)
        .args(["build", "--profile", "wheel-test", "--out"])
        .arg(&dist)
        .arg("--manifest-path")
        .arg(util::repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "maturin build failed:\n{}", util::text(&out));
    eprintln!("maturin build: {:.1} s", t0.elapsed().as_secs_f64());
    let wheels: Vec<PathBuf> = std::fs::read_dir(&dist)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let wheel = &wheels[0];
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("cellsci-{}-py3-none-", env!("CARGO_PKG_VERSION"))), "{name}");

    // a fresh venv, and the wheel alone (no index: nothing else is needed)
    let venv = d.path().join("venv");
    let out = Command::new("python3").arg("-m").arg("venv").arg(&venv).output().unwrap();
    assert!(out.status.success(), "{}", util::text(&out));
    let py = venv.join("bin/python");
    // the wheel holds the one binary (and its metadata)
    let out = Command::new(&py)
        .args(["-c", "import sys, zipfile; print('\\n'.join(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if '.dist-info/' not in n))"])
        .arg(wheel)
        .output()
        .unwrap();
    assert_eq!(util::ok(&out).trim(), format!("cellsci-{}.data/scripts/cellsci", env!("CARGO_PKG_VERSION")));
    let t0 = std::time::Instant::now();
    let out = Command::new(&py)
        .args(["-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", "--quiet"])
        .arg(wheel)
        .output()
        .unwrap();
    assert!(out.status.success(), "pip install failed:\n{}", util::text(&out));
    eprintln!(
        "pip install {name} ({:.1} MB): {:.1} s",
        std::fs::metadata(wheel).unwrap().len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    // from an empty folder outside the source tree, with only the venv's PATH in front
    let work = util::tempdir();
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let run = |args: &[&str]| {
        let mut c = Command::new("cellsci");
        c.current_dir(work.path()).env("PATH", &path).env_remove("OPENAI_API_KEY").env("NO_COLOR", "1").args(args);
        c
    };
    let out = Command::new("sh").args(["-c", "command -v cellsci"]).env("PATH", &path).output().unwrap();
    assert_eq!(util::ok(&out).trim(), venv.join("bin/cellsci").display().to_string(), "pip put cellsci on PATH");
    let out = run(&["--version"]).output().unwrap();
    let so = util::ok(&out);
    assert!(so.starts_with(&format!("cellsci {} (commit {})", env!("CARGO_PKG_VERSION"), head_commit())), "{so}");
    assert!(so.contains("bundled scripts, stdlib and prompts: embedded in the binary"), "{so}");
    let out = run(&["demo", "--python", &test_python().display().to_string()]).output().unwrap();
    assert_demo_succeeded(&out, &std::fs::canonicalize(work.path().join("cellsci-demo")).unwrap());
}
