//! Hot reload: a running script picks up edits of the modules it `require`d at `host.reload()`, keeps the
//! previous version when an edit does not load, and never reloads because of its own reads.
use std::path::Path;

use crate::util::{self, cellsci, write};

/// A script that calls `m.v()` in a loop, reloading before each call, and prints every change of value
/// and every reload error on stdout; it stops when a file named `stop` appears. `arg[1]` names another
/// module to call instead of `m`.
const LOOP: &str = r#"
local host, time, fs, log = require("host"), require("time"), require("fs"), require("log")
local last
for _ = 1, 6000 do
  local names, errors = host.reload()
  for _, e in ipairs(errors) do log.line("ERR " .. e.message) end
  local v = require(arg[1] or "m").v()
  if v ~= last then log.line("V " .. v); last = v end
  if fs.exists("stop") then break end
  time.sleep(0.01)
end
"#;

fn module(v: &str) -> String {
    format!("local M = {{}}\n\nfunction M.v()\n  return {v:?}\nend\n\nreturn M\n")
}

/// The LOOP script, running; its value and error lines (other output, like the reload messages on
/// stderr, is kept for `finish`).
struct Running(util::Running);

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        write(dir, "loop.lua", LOOP);
        Running(util::Running::start(cellsci(dir).args(args)))
    }

    /// The next `V ...` or `ERR ...` line.
    fn next(&mut self) -> String {
        loop {
            let l = self.0.next_line();
            if l.starts_with("V ") || l.starts_with("ERR ") {
                return l;
            }
        }
    }

    /// Stop the script; everything it printed.
    fn finish(self, dir: &Path) -> String {
        write(dir, "stop", "");
        let (status, out) = self.0.finish();
        assert!(status.success(), "script failed: {out}");
        out
    }
}

/// Replace a file the way editors that save by rename do: write a temp file, rename it over.
fn save_by_rename(dir: &Path, rel: &str, text: &str) {
    let tmp = dir.join(format!(".{rel}.swp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(rel)).unwrap();
}

#[test]
fn edits_in_place_and_by_rename_are_picked_up_and_broken_edits_keep_the_old_version() {
    let d = util::tempdir();
    let dir = d.path();
    write(dir, "m.lua", &module("v1"));
    let mut r = Running::start(dir, &["script", "loop.lua"]);
    assert_eq!(r.next(), "V v1");

    // In place (same inode, truncate + write).
    std::fs::write(dir.join("m.lua"), module("v2")).unwrap();
    assert_eq!(r.next(), "V v2");

    // By rename.
    save_by_rename(dir, "m.lua", &module("v3"));
    assert_eq!(r.next(), "V v3");

    // A syntax error at line 5: the message names file and line, v3 stays.
    std::fs::write(dir.join("m.lua"), "local M = {}\n\nfunction M.v()\n  return 'v4'\n\nreturn M\n").unwrap();
    let e = r.next();
    assert!(e.starts_with("ERR m.lua:6: 'end' expected (to close 'function' at line 3)"), "{e}");

    // Fixed again (by rename): picked up.
    save_by_rename(dir, "m.lua", &module("v4"));
    assert_eq!(r.next(), "V v4");

    // An error while loading, an empty file, and a module that returns no table all keep v4.
    std::fs::write(dir.join("m.lua"), "local M = {}\nerror('boom at load')\nreturn M\n").unwrap();
    assert_eq!(r.next(), "ERR m.lua:2: boom at load");
    std::fs::write(dir.join("m.lua"), "").unwrap();
    assert_eq!(r.next(), "ERR m.lua: the file is empty");
    std::fs::write(dir.join("m.lua"), "return 42\n").unwrap();
    assert_eq!(r.next(), "ERR m.lua: the module returned integer instead of a table");

    std::fs::write(dir.join("m.lua"), module("v5")).unwrap();
    assert_eq!(r.next(), "V v5");

    let err = r.finish(dir);
    // The user sees each failure on stderr with file:line and that the previous version is kept.
    assert!(
        err.contains(
            "m.lua:6: 'end' expected (to close 'function' at line 3) near 'return' — keeping the previous version"
        ),
        "{err}"
    );
    assert!(err.contains("m.lua:2: boom at load — keeping the previous version"), "{err}");
    assert!(err.contains("reloaded m (m.lua)"), "{err}");
}

#[test]
fn modules_in_subfolders_of_the_scripts_folder_are_reloaded_dependencies_first() {
    let d = util::tempdir();
    let dir = d.path();
    write(dir, "lib/policy/inner.lua", &module("a1"));
    // outer re-exports inner: when both change, inner must reload first so outer sees its new version.
    write(dir, "lib/policy/outer.lua", "return require('policy.inner')\n");
    let mut r = Running::start(dir, &["--scripts", "lib", "script", "loop.lua", "policy.outer"]);
    assert_eq!(r.next(), "V a1");
    save_by_rename(&dir.join("lib/policy"), "inner.lua", &module("a2"));
    std::fs::write(dir.join("lib/policy/outer.lua"), "-- edited\nreturn require('policy.inner')\n").unwrap();
    assert_eq!(r.next(), "V a2");
    let err = r.finish(dir);
    assert!(err.contains("reloaded policy.inner (lib/policy/inner.lua)"), "{err}");
}

#[test]
fn reload_does_not_trigger_itself() {
    // notify reports our own reads (Access(Open)); they must never count as edits.
    let d = util::tempdir();
    let dir = d.path();
    write(dir, "m.lua", &module("v1"));
    write(
        dir,
        "t.lua",
        r#"local host, fs, time = require("host"), require("fs"), require("time")
assert(require("m").v() == "v1")
for i = 1, 40 do
  assert(fs.read("m.lua"))                 -- opens and reads the watched file
  local names, errors = host.reload()
  assert(#names == 0 and #errors == 0, "reloaded without an edit at round " .. i)
  time.sleep(0.02)
end
print("quiet")"#,
    );
    let o = cellsci(dir).args(["script", "t.lua"]).output().unwrap();
    assert!(o.status.success(), "{}", util::text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "quiet");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("reloaded"), "{}", util::text(&o));
}
