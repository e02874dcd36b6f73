//! Embeds `scripts/`, `stdlib/` and `prompts/` into the binary so it works from any folder, embeds the
//! demo (`examples/demo`: config, stage-1 data, cassette) for `cellsci demo`, and records the commit the
//! binary is built from for `cellsci --version` ("unknown" without git or a .git folder, as in an sdist).
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with('.') && !name.ends_with('~') {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// The demo files a user gets from `cellsci demo`: what the run reads, and the notes on it. Not the
/// re-recording tools (record.sh, serve_replies.py, replies/), which need a source checkout, nor the
/// results of earlier runs.
const DEMO: &[&str] = &["README.md", "generate_execution_config.json", "cassette.jsonl", "make_data.py", "stage1"];

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest);
    let mut files = Vec::new();
    for d in ["scripts", "stdlib", "prompts"] {
        println!("cargo:rerun-if-changed={d}");
        walk(root, &root.join(d), &mut files);
    }
    let out_dir = std::env::var("OUT_DIR").unwrap();
    let out = Path::new(&out_dir).join("embedded.rs");
    let mut f = std::fs::File::create(out).unwrap();
    writeln!(f, "pub static FILES: &[(&str, &str)] = &[").unwrap();
    for rel in files {
        let abs = root.join(&rel);
        writeln!(f, "    ({rel:?}, include_str!({:?})),", abs.to_string_lossy()).unwrap();
    }
    writeln!(f, "];").unwrap();

    // The demo, as bytes (its stage-1 data is HDF5).
    let demo_root = root.join("examples/demo");
    let mut demo = Vec::new();
    for d in DEMO {
        println!("cargo:rerun-if-changed=examples/demo/{d}");
        let p = demo_root.join(d);
        if p.is_dir() {
            walk(&demo_root, &p, &mut demo);
        } else if p.is_file() {
            demo.push(d.to_string());
        }
    }
    let mut f = std::fs::File::create(Path::new(&out_dir).join("demo.rs")).unwrap();
    writeln!(f, "pub static DEMO: &[(&str, &[u8])] = &[").unwrap();
    for rel in demo {
        let abs = demo_root.join(&rel);
        writeln!(f, "    ({rel:?}, include_bytes!({:?})),", abs.to_string_lossy()).unwrap();
    }
    writeln!(f, "];").unwrap();

    // The commit: CELLSCI_GIT_COMMIT when a packager sets it, else git's HEAD, else "unknown".
    println!("cargo:rerun-if-env-changed=CELLSCI_GIT_COMMIT");
    // Only a repository whose top is this crate counts: an unpacked sdist inside someone's own
    // repository must not report that repository's commit.
    let ours = git(root, &["rev-parse", "--show-toplevel"])
        .and_then(|t| Path::new(&t).canonicalize().ok())
        .is_some_and(|t| root.canonicalize().is_ok_and(|r| r == t));
    let commit = std::env::var("CELLSCI_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| ours.then(|| git(root, &["rev-parse", "--short=12", "HEAD"])).flatten())
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit), packed refs.
    // Only files that exist: cargo reruns the script on every build for a missing one.
    if ours {
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watch.extend(git(root, &["symbolic-ref", "-q", "HEAD"]));
        for w in watch {
            if let Some(p) = git(root, &["rev-parse", "--path-format=absolute", "--git-path", &w]) {
                if Path::new(&p).is_file() {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
        }
    }
    println!("cargo:rustc-env=CELLSCI_GIT_COMMIT={commit}");
}
