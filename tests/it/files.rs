//! Tests for the files area: what a generated notebook can leave in a trial folder (symlinks to `/usr` or
//! to `.`, a FIFO or a sparse giant as metrics.json, a full disk) must not lead the host astray. Each runs
//! the real binary on real files; the assertions are what a user sees.
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{self, cellsci, tempdir};

/// Run `lua` as `cellsci script t.lua` in `dir`, killed after `limit` (a hang is a failure, not a stuck
/// test run); the output and how long it took.
fn script_within(dir: &Path, lua: &str, limit: Duration) -> (String, Duration) {
    util::write(dir, "t.lua", lua);
    let started = Instant::now();
    let (status, out) = util::Running::start(cellsci(dir).args(["script", "t.lua"])).finish_within(limit);
    assert!(status.success(), "script failed:\n{out}");
    (out, started.elapsed())
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Regression: a link to /usr made the intermediate listing walk the whole of /usr (22 GB of memory)
/// and two links to `.` looped forever; fs.walk must not follow links and must stop at its caps.
#[test]
fn fs_walk_lists_links_without_following_them_and_stops_at_its_caps() {
    let dir = tempdir();
    let root = dir.path().join("trial/intermediate");
    for i in 0..30 {
        util::write(&root, &format!("many/f{i:02}.csv"), "x");
    }
    util::write(&root, "a/b/c/d/e/deep.txt", "deep");
    util::write(&root, "top.txt", "hello");
    symlink("/usr", &root.join("usr"));
    symlink(".", &root.join("loop1"));
    symlink("..", &root.join("many/loop2"));
    let (out, took) = script_within(
        dir.path(),
        r#"
        local fs = require("fs")
        local w = assert(fs.walk("trial/intermediate", { max_files = 10, max_depth = 2 }))
        local by = {}
        for _, f in ipairs(w.files) do by[f.path] = f end
        assert(#w.files == 10, "listed " .. #w.files)
        assert(by["usr"] and by["usr"].kind == "link" and by["usr"].target == "/usr", "the /usr link is listed as a link")
        assert(by["loop1"] and by["loop1"].kind == "link", "the loop is listed, not entered")
        assert(w.truncated == 24, "counted past the cap: " .. w.truncated)
        assert(w.too_deep == 1, "a/b/c not entered: " .. w.too_deep)
        local all = assert(fs.walk("trial/intermediate"))
        assert(#all.files == 35 and all.truncated == 0, "defaults list everything here: " .. #all.files)
        local _, err = fs.walk("trial/intermediate/usr")
        assert(err and err.kind == "link", "a linked root is not walked: " .. tostring(err))
        print("OK")
        "#,
        Duration::from_secs(60),
    );
    assert!(out.contains("OK"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// fs.stat said `is_dir` for a link to /usr, which is how the old listing got into it: it must say
/// `is_link`, and describe the link itself with follow=false.
#[test]
fn fs_stat_reports_a_symlink_as_a_link() {
    let dir = tempdir();
    util::write(dir.path(), "file.txt", "12345");
    symlink("/usr", &dir.path().join("usr"));
    symlink("missing", &dir.path().join("dangling"));
    let (out, _) = script_within(
        dir.path(),
        r#"
        local fs = require("fs")
        local f = assert(fs.stat("file.txt"))
        assert(f.is_file and not f.is_link and f.size == 5)
        local followed = assert(fs.stat("usr"))
        assert(followed.is_dir and followed.is_link)
        local own = assert(fs.stat("usr", { follow = false }))
        assert(own.is_link and not own.is_dir and not own.is_file)
        local d = assert(fs.stat("dangling", { follow = false }))
        assert(d.is_link)
        local _, err = fs.stat("dangling")
        assert(err.kind == "not_found", tostring(err))
        print("OK")
        "#,
        Duration::from_secs(30),
    );
    assert!(out.contains("OK"));
}

/// Regression: a notebook that replaced events.jsonl by a symlink made the host append its event log
/// into the link's target; fs.append and fs.write must not write through a link either.
#[test]
fn a_symlinked_event_log_is_never_written_through() {
    let dir = tempdir();
    let outside = util::write(dir.path(), "outside.txt", "precious\n");
    std::fs::create_dir_all(dir.path().join("trial")).unwrap();
    symlink(outside.to_str().unwrap(), &dir.path().join("trial/events.jsonl"));
    symlink(outside.to_str().unwrap(), &dir.path().join("trial/notes.txt"));
    symlink(outside.to_str().unwrap(), &dir.path().join("trial/report.md"));
    let (out, _) = script_within(
        dir.path(),
        r##"
        local fs, log = require("fs"), require("log")
        log.set_event_file("trial/events.jsonl")
        for i = 1, 5 do log.event("step", { n = i }) end
        local okay, err = fs.append("trial/notes.txt", "appended\n")
        assert(not okay and err.kind == "link", tostring(err))
        assert(fs.write("trial/report.md", "# report\n"))
        assert(not fs.stat("trial/report.md").is_link, "the link was replaced by the file")
        print("OK")
        "##,
        Duration::from_secs(30),
    );
    let text = out.clone();
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n", "the link's target was written");
    assert_eq!(std::fs::read_to_string(dir.path().join("trial/report.md")).unwrap(), "# report\n");
    assert_eq!(text.matches("cannot append to the event log").count(), 1, "one warning, not one per event:\n{text}");
    assert!(text.contains("symbolic link"), "{text}");
}

/// Regression: a FIFO as metrics.json blocked the host in `open` (ignoring the first Ctrl-C, no summary
/// written); reading it must fail at once with an error naming the file. fs.read likewise.
#[test]
fn a_fifo_as_metrics_json_is_refused_at_once() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("trial")).unwrap();
    let fifo = dir.path().join("trial/metrics.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (out, took) = script_within(
        dir.path(),
        r#"
        local report, fs = require("report"), require("fs")
        local m, err = report.load_metrics("trial")
        assert(m == nil and err.kind == "not_a_file", tostring(err))
        assert(err.message:find("trial/metrics.json", 1, true) and err.message:find("FIFO"), err.message)
        print(err.message)
        local t, ferr = fs.read("trial/metrics.json")
        assert(t == nil and ferr.kind == "not_a_file", tostring(ferr))
        print("OK")
        "#,
        Duration::from_secs(30),
    );
    assert!(out.contains("OK"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Regression: metrics were read with no size limit (a 2 GB sparse metrics.json cost 2 GB of memory);
/// past the documented 64 MiB it is refused before reading, with the size and the limit in the error.
#[test]
fn an_oversized_metrics_json_is_refused_before_it_is_read() {
    let dir = tempdir();
    let f = std::fs::File::create(dir.path().join("metrics.json")).unwrap();
    f.set_len(2 << 30).unwrap(); // sparse: no disk used
    let (out, took) = script_within(
        dir.path(),
        r#"
        local report, fs = require("report"), require("fs")
        local m, err = report.load_metrics("metrics.json")
        assert(m == nil and err.kind == "too_large", tostring(err))
        assert(err.message:find("2147483648 bytes") and err.message:find("67108864"), err.message)
        local t, ferr = fs.read("metrics.json", { max_bytes = 1000 })
        assert(t == nil and ferr.kind == "too_large", tostring(ferr))
        print("OK")
        "#,
        Duration::from_secs(30),
    );
    assert!(out.contains("OK"));
    assert!(took < Duration::from_secs(5), "took {took:?}: was the file read?");
}

/// A small tmpfs mounted for a test, unmounted when dropped; None (with a printed reason) where this
/// process may not mount one.
/// Regression: on ENOSPC the event log ended in a half line (unreadable for every tool that parses
/// it); each line must be written whole or not at all, and the failure reported once.
#[test]
fn the_event_log_on_a_full_disk_keeps_whole_lines_and_warns_once() {
    let dir = tempdir();
    let Some(_fs) = crate::faults::Tmpfs::mount(&dir.path().join("full"), "64k") else { return };
    let (out, _) = script_within(
        dir.path(),
        r#"
        local log = require("log")
        log.set_event_file("full/events.jsonl")
        local blob = string.rep("x", 3000)
        for i = 1, 100 do log.event("step", { n = i, blob = blob }) end
        print("OK")
        "#,
        Duration::from_secs(60),
    );
    let text = out.clone();
    let log = std::fs::read_to_string(dir.path().join("full/events.jsonl")).unwrap();
    assert!(log.len() < 64 * 1024, "the disk filled up ({} bytes)", log.len());
    assert!(log.ends_with('\n'), "the log ends in a half line");
    for (i, line) in log.lines().enumerate() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
    }
    assert!(log.lines().count() >= 10, "it wrote until the disk was full");
    assert_eq!(text.matches("cannot append to the event log").count(), 1, "{text}");
    assert!(text.contains("No space left on device"), "{text}");
}
