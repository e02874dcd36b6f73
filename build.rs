//! Embeds `scripts/`, `stdlib/` and `prompts/` into the binary so it works from any folder.
use std::io::Write;
use std::path::Path;

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

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest);
    let mut files = Vec::new();
    for d in ["scripts", "stdlib", "prompts"] {
        println!("cargo:rerun-if-changed={d}");
        walk(root, &root.join(d), &mut files);
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded.rs");
    let mut f = std::fs::File::create(out).unwrap();
    writeln!(f, "pub static FILES: &[(&str, &str)] = &[").unwrap();
    for rel in files {
        let abs = root.join(&rel);
        writeln!(f, "    ({rel:?}, include_str!({:?})),", abs.to_string_lossy()).unwrap();
    }
    writeln!(f, "];").unwrap();
}
