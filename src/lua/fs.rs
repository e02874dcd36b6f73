//! `fs`: files for scripts. Writes are atomic (a temp file in the same folder, then rename), so a
//! reader (a watcher, phase-3 tools, a crashed run) never sees half a file. Expected failures (a missing
//! file, no permission) return `nil, err` with `err.kind` one of `not_found`, `permission`, `exists`,
//! `not_a_dir`, `link`, `not_a_file`, `too_large`, `io`; a wrong argument raises. These calls are
//! synchronous: they are fast, and a module may call them while it is being `require`d (where an async
//! call could not yield).
//!
//! Scripts look into trial folders that a generated notebook wrote, so nothing here may be led astray
//! by what it finds there: `fs.walk` never follows a symlink and stops at a count and a depth, `fs.stat`
//! says whether a path is a link, `fs.append` never writes through one, `fs.copy` copies links as
//! links, and `fs.read` reads regular files only (a FIFO would block it) up to a size cap.
use std::path::{Path, PathBuf};

use mlua::prelude::*;

use super::boundary;

type Ret = (LuaValue, LuaValue);

fn path_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<PathBuf> {
    let s = boundary::string_arg(lua, v, func, "a path string")?;
    if s.as_bytes().is_empty() {
        return Err(boundary::misuse(lua, format!("{func}: expected a path string, got an empty string")));
    }
    Ok(PathBuf::from(s.to_str()?.to_string()))
}

/// `nil, err` for an I/O error, with a kind a script can branch on.
pub fn io_fail(lua: &Lua, what: &str, p: &Path, e: &std::io::Error) -> LuaResult<Ret> {
    use std::io::ErrorKind as K;
    let refused = crate::files::refused(e);
    let kind = match e.kind() {
        _ if matches!(refused, Some(crate::files::Refused::NotRegular(_))) => "not_a_file",
        _ if matches!(refused, Some(crate::files::Refused::TooLarge { .. })) => "too_large",
        _ if e.raw_os_error() == Some(libc::ELOOP) => "link",
        K::NotFound => "not_found",
        K::PermissionDenied => "permission",
        K::AlreadyExists => "exists",
        K::NotADirectory => "not_a_dir",
        _ => "io",
    };
    let msg = format!("{what} {}: {e}", p.display());
    boundary::fail_with(lua, kind, msg, &serde_json::json!({"path": p.display().to_string()}))
}

fn ok(v: impl IntoLua, lua: &Lua) -> LuaResult<Ret> {
    Ok((v.into_lua(lua)?, LuaValue::Nil))
}

use crate::files::write_atomic;

/// Copy a file or a folder with its contents. Symlinks are copied as links, never followed: a link to
/// `/usr` or to `.` inside a trial folder would otherwise copy the disk or loop.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        if std::fs::symlink_metadata(dst).is_ok() {
            std::fs::remove_file(dst)?;
        }
        return std::os::unix::fs::symlink(target, dst);
    }
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        write_atomic(dst, &std::fs::read(src)?)?;
        std::fs::set_permissions(dst, meta.permissions())
    }
}

fn mtime_secs(m: &std::fs::Metadata) -> f64 {
    m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A held lock file (`fs.lock`): an open file with an exclusive `flock`, released with the handle, by
/// `h:release()`, or by the kernel when the process ends however it ends (SIGKILL included).
struct Lock(Option<std::fs::File>);

impl LuaUserData for Lock {
    fn add_methods<M: LuaUserDataMethods<Self>>(m: &mut M) {
        m.add_method_mut("release", |_, this, ()| {
            this.0 = None;
            Ok(())
        });
    }
}

/// Take `p` as this process's lock: Ok(file) holding it, or Err(pid of the holder, or 0 when unknown).
fn take_lock(p: &Path) -> std::io::Result<Result<std::fs::File, u32>> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err);
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        return Ok(Err(text.trim().parse().unwrap_or(0)));
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    Ok(Ok(f))
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // fs.lock(path) -> handle | nil, err (kind "locked" with err.holder = the holder's pid): an exclusive
    // lock held until h:release() or the process ends, however it ends
    t.set(
        "lock",
        lua.create_function(|lua, p: LuaValue| {
            let p = path_arg(lua, "fs.lock", &p)?;
            match take_lock(&p) {
                Ok(Ok(f)) => ok(Lock(Some(f)), lua),
                Ok(Err(pid)) => boundary::fail_with(
                    lua,
                    "locked",
                    format!("{} is held by process {pid}", crate::files::display_path(&p)),
                    &serde_json::json!({ "holder": pid }),
                ),
                Err(e) => io_fail(lua, "cannot lock", &p, &e),
            }
        })?,
    )?;
    // fs.read(path, {max_bytes=READ_MAX}) -> string | nil, err  (regular files only)
    t.set(
        "read",
        lua.create_function(|lua, (p, opts): (LuaValue, Option<LuaTable>)| {
            let p = path_arg(lua, "fs.read", &p)?;
            let mut max = READ_MAX;
            {
                let o = boundary::Opts::new(lua, "fs.read", opts, &["max_bytes"])?;
                if let Some(m) = o.u64("max_bytes")? {
                    max = m;
                }
            }
            match crate::files::read_regular(&p, max) {
                Ok(b) => ok(lua.create_string(&b)?, lua),
                Err(e) => io_fail(lua, "cannot read", &p, &e),
            }
        })?,
    )?;
    // fs.write(path, text) -> true | nil, err  (atomic; creates parent folders)
    t.set(
        "write",
        lua.create_function(|lua, (p, text): (LuaValue, LuaValue)| {
            let p = path_arg(lua, "fs.write", &p)?;
            let bytes = content_arg(lua, "fs.write", &text)?;
            match write_atomic(&p, &bytes) {
                Ok(()) => ok(true, lua),
                Err(e) => io_fail(lua, "cannot write", &p, &e),
            }
        })?,
    )?;
    // fs.append(path, text) -> true | nil, err  (creates the file and parent folders)
    t.set(
        "append",
        lua.create_function(|lua, (p, text): (LuaValue, LuaValue)| {
            let p = path_arg(lua, "fs.append", &p)?;
            let bytes = content_arg(lua, "fs.append", &text)?;
            let res = (|| {
                if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(d)?;
                }
                crate::files::append_whole(&crate::files::open_append_nofollow(&p)?, &bytes)
            })();
            match res {
                Ok(()) => ok(true, lua),
                Err(e) => io_fail(lua, "cannot append to", &p, &e),
            }
        })?,
    )?;
    // fs.exists(path) -> bool ; fs.is_dir(path) -> bool ; fs.is_file(path) -> bool
    t.set("exists", lua.create_function(|lua, p: LuaValue| Ok(path_arg(lua, "fs.exists", &p)?.exists()))?)?;
    t.set("is_dir", lua.create_function(|lua, p: LuaValue| Ok(path_arg(lua, "fs.is_dir", &p)?.is_dir()))?)?;
    t.set("is_file", lua.create_function(|lua, p: LuaValue| Ok(path_arg(lua, "fs.is_file", &p)?.is_file()))?)?;
    // fs.list(dir) -> {names...} sorted | nil, err
    t.set(
        "list",
        lua.create_function(|lua, p: LuaValue| {
            let p = path_arg(lua, "fs.list", &p)?;
            let rd = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) => return io_fail(lua, "cannot list", &p, &e),
            };
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
            names.sort();
            let out = lua.create_sequence_from(names)?;
            out.set_metatable(Some(lua.array_metatable()))?;
            ok(out, lua)
        })?,
    )?;
    // fs.mkdir(path) -> true | nil, err  (with parents; fine if it exists)
    t.set(
        "mkdir",
        lua.create_function(|lua, p: LuaValue| {
            let p = path_arg(lua, "fs.mkdir", &p)?;
            match std::fs::create_dir_all(&p) {
                Ok(()) => ok(true, lua),
                Err(e) => io_fail(lua, "cannot create folder", &p, &e),
            }
        })?,
    )?;
    // fs.remove(path, {recursive=false}) -> true | nil, err  (a missing path is fine; a folder with
    // contents needs recursive=true)
    t.set(
        "remove",
        lua.create_function(|lua, (p, opts): (LuaValue, Option<LuaTable>)| {
            let p = path_arg(lua, "fs.remove", &p)?;
            let recursive =
                boundary::Opts::new(lua, "fs.remove", opts, &["recursive"])?.bool("recursive")?.unwrap_or(false);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ok(true, lua),
                Err(e) => return io_fail(lua, "cannot remove", &p, &e),
            };
            let res = if !meta.is_dir() {
                std::fs::remove_file(&p)
            } else if recursive {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_dir(&p)
            };
            match res {
                Ok(()) => ok(true, lua),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => boundary::fail_with(
                    lua,
                    "not_empty",
                    format!("cannot remove {}: the folder is not empty (pass {{recursive=true}})", p.display()),
                    &serde_json::json!({"path": p.display().to_string()}),
                ),
                Err(e) => io_fail(lua, "cannot remove", &p, &e),
            }
        })?,
    )?;
    // fs.copy(src, dst) -> true | nil, err  (a folder is copied with its contents)
    t.set(
        "copy",
        lua.create_function(|lua, (s, d): (LuaValue, LuaValue)| {
            let s = path_arg(lua, "fs.copy", &s)?;
            let d = path_arg(lua, "fs.copy", &d)?;
            // A folder copied into itself would recurse until the path is too long.
            if s.is_dir() && crate::files::absolute_clean(&d).starts_with(crate::files::absolute_clean(&s)) {
                return boundary::fail_with(
                    lua,
                    "invalid",
                    format!("cannot copy {} into itself ({})", s.display(), d.display()),
                    &serde_json::json!({"path": d.display().to_string()}),
                );
            }
            match copy_tree(&s, &d) {
                Ok(()) => ok(true, lua),
                Err(e) => io_fail(lua, &format!("cannot copy to {}:", d.display()), &s, &e),
            }
        })?,
    )?;
    // fs.rename(src, dst) -> true | nil, err  (creates dst's parent; works across file systems)
    t.set(
        "rename",
        lua.create_function(|lua, (s, d): (LuaValue, LuaValue)| {
            let s = path_arg(lua, "fs.rename", &s)?;
            let d = path_arg(lua, "fs.rename", &d)?;
            let res = (|| {
                if let Some(parent) = d.parent().filter(|x| !x.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                match std::fs::rename(&s, &d) {
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        copy_tree(&s, &d)?;
                        if s.is_dir() {
                            std::fs::remove_dir_all(&s)
                        } else {
                            std::fs::remove_file(&s)
                        }
                    }
                    other => other,
                }
            })();
            match res {
                Ok(()) => ok(true, lua),
                Err(e) => io_fail(lua, &format!("cannot rename to {}:", d.display()), &s, &e),
            }
        })?,
    )?;
    // fs.stat(path, {follow=true}) -> {size, mtime, is_dir, is_file, is_link} | nil, err
    // is_link says whether `path` itself is a symlink; follow=false describes the link, not its target.
    t.set(
        "stat",
        lua.create_function(|lua, (p, opts): (LuaValue, Option<LuaTable>)| {
            let p = path_arg(lua, "fs.stat", &p)?;
            let follow = boundary::Opts::new(lua, "fs.stat", opts, &["follow"])?.bool("follow")?.unwrap_or(true);
            let own = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => return io_fail(lua, "cannot stat", &p, &e),
            };
            let is_link = own.file_type().is_symlink();
            let m = if follow && is_link {
                match std::fs::metadata(&p) {
                    Ok(m) => m,
                    Err(e) => return io_fail(lua, "cannot stat", &p, &e),
                }
            } else {
                own
            };
            let t = lua.create_table()?;
            t.set("size", m.len())?;
            t.set("mtime", mtime_secs(&m))?;
            t.set("is_dir", m.is_dir())?;
            t.set("is_file", m.is_file())?;
            t.set("is_link", is_link)?;
            ok(t, lua)
        })?,
    )?;
    // fs.walk(dir, {max_files=1000, max_depth=16}) -> {files={...}, truncated=, too_deep=, unreadable=}
    t.set(
        "walk",
        lua.create_function(|lua, (p, opts): (LuaValue, Option<LuaTable>)| {
            let p = path_arg(lua, "fs.walk", &p)?;
            let mut lim = WalkLimits::default();
            {
                let o = boundary::Opts::new(lua, "fs.walk", opts, &["max_files", "max_depth"])?;
                let count = |k: &str| -> LuaResult<Option<usize>> { Ok(o.u64(k)?.map(|x| x as usize)) };
                lim.max_files = count("max_files")?.unwrap_or(lim.max_files);
                lim.max_depth = count("max_depth")?.unwrap_or(lim.max_depth);
            }
            let w = match walk(&p, &lim) {
                Ok(w) => w,
                Err(e) => return io_fail(lua, "cannot walk", &p, &e),
            };
            let files = lua.create_table()?;
            files.set_metatable(Some(lua.array_metatable()))?;
            for (i, e) in w.entries.iter().enumerate() {
                let t = lua.create_table()?;
                t.set("path", e.path.as_str())?;
                t.set("size", e.size)?;
                t.set("mtime", e.mtime)?;
                t.set("kind", e.kind)?;
                if let Some(target) = &e.target {
                    t.set("target", target.as_str())?;
                }
                files.raw_set(i + 1, t)?;
            }
            let t = lua.create_table()?;
            t.set("files", files)?;
            t.set("truncated", w.truncated)?;
            t.set("too_deep", w.too_deep)?;
            t.set("unreadable", w.unreadable)?;
            ok(t, lua)
        })?,
    )?;
    // fs.glob(pattern) -> {paths...} sorted  (`*`, `?`, `[abc]` within a name; `**` any folders)
    t.set(
        "glob",
        lua.create_function(|lua, pat: LuaValue| {
            let pat = boundary::string_arg(lua, &pat, "fs.glob", "a pattern string")?.to_str()?.to_string();
            let mut out = glob(&pat).map_err(|e| boundary::misuse(lua, format!("fs.glob: {e}")))?;
            out.sort();
            let t = lua.create_sequence_from(out)?;
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(t)
        })?,
    )?;
    Ok(t)
}

/// The default cap of `fs.read`: a script reads configs, prompts and small results, and a notebook may
/// leave a multi-gigabyte (or sparse) file where one is expected. `{max_bytes=}` raises it.
pub const READ_MAX: u64 = 256 << 20;

pub struct WalkLimits {
    /// Entries listed; the rest are only counted (`truncated`).
    pub max_files: usize,
    /// Folders deeper than this below the root are not entered (counted in `too_deep`).
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits { max_files: 1000, max_depth: 16 }
    }
}

pub struct WalkEntry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub size: u64,
    pub mtime: f64,
    /// "file", "link" (not followed; `target` is what it points at) or "other" (FIFO, socket, device).
    pub kind: &'static str,
    pub target: Option<String>,
}

#[derive(Default)]
pub struct Walk {
    pub entries: Vec<WalkEntry>,
    /// Entries found past `max_files` (counted, not listed).
    pub truncated: usize,
    /// Folders not entered because they are deeper than `max_depth`.
    pub too_deep: usize,
    /// Folders that could not be read (permissions, removed meanwhile).
    pub unreadable: usize,
}

/// Everything under `root` that is not a folder, depth first in name order, without following any
/// symlink (the root included: a link there is an error of kind `link`). Counting past `max_files`
/// reads folder entries only (no stat), so a tree of a million files costs a second, not its size.
pub fn walk(root: &Path, lim: &WalkLimits) -> std::io::Result<Walk> {
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    if !meta.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    let mut w = Walk::default();
    // (folder, its path relative to the root, depth); popped from the end, so pushed in reverse order
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if depth == 0 => return Err(e),
            Err(_) => {
                w.unreadable += 1;
                continue;
            }
        };
        let mut items: Vec<(std::ffi::OsString, Option<std::fs::FileType>)> =
            rd.flatten().map(|e| (e.file_name(), e.file_type().ok())).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, ft) in items {
            let name_s = name.to_string_lossy();
            let p = dir.join(&name);
            let relp = format!("{rel}{name_s}");
            // DirEntry::file_type is the link's own type (lstat), never the target's
            if ft.is_some_and(|t| t.is_dir()) {
                if depth + 1 > lim.max_depth {
                    w.too_deep += 1;
                } else {
                    subdirs.push((p, format!("{relp}/"), depth + 1));
                }
                continue;
            }
            if w.entries.len() >= lim.max_files {
                w.truncated += 1;
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            let t = m.file_type();
            let (kind, target) = if t.is_symlink() {
                ("link", std::fs::read_link(&p).ok().map(|x| x.display().to_string()))
            } else if t.is_file() {
                ("file", None)
            } else {
                ("other", None)
            };
            w.entries.push(WalkEntry { path: relp, size: m.len(), mtime: mtime_secs(&m), kind, target });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(w)
}

fn content_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<Vec<u8>> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(_) | LuaValue::Number(_) => Ok(v.to_string()?.into_bytes()),
        other => Err(boundary::misuse(
            lua,
            format!(
                "{func}: expected the contents as a string, got {} (use json.encode for tables)",
                other.type_name()
            ),
        )),
    }
}

/// Expand a glob pattern into existing paths (written the way the pattern is: relative stays relative).
pub fn glob(pattern: &str) -> Result<Vec<String>, String> {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut compiled = Vec::with_capacity(parts.len());
    for p in &parts {
        // None for `**` and plain names, which are matched without a regex.
        compiled.push(if p.contains(['*', '?', '[']) && *p != "**" { Some(component_regex(p)?) } else { None });
    }
    let start = if absolute { PathBuf::from("/") } else { PathBuf::new() };
    let mut out = Vec::new();
    walk_glob(&start, &parts, &compiled, &mut out);
    out.dedup();
    Ok(out)
}

fn component_regex(p: &str) -> Result<regex::Regex, String> {
    let mut re = String::from("^");
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| format!("bad pattern '{p}': {e}"))
}

fn walk_glob(base: &Path, parts: &[&str], res: &[Option<regex::Regex>], out: &mut Vec<String>) {
    let Some((first, rest)) = parts.split_first() else {
        if !base.as_os_str().is_empty() {
            out.push(base.display().to_string());
        }
        return;
    };
    let here = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    if *first == "**" {
        walk_glob(base, rest, &res[1..], out); // zero folders
        let Ok(rd) = std::fs::read_dir(here) else { return };
        // real folders only: following a symlinked folder can loop (`venv/lib64 -> .`) or walk the disk
        let mut dirs: Vec<_> =
            rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.file_name()).collect();
        dirs.sort();
        for d in dirs {
            if d.to_string_lossy().starts_with('.') {
                continue;
            }
            walk_glob(&base.join(d), parts, res, out);
        }
        return;
    }
    let Some(re) = res[0].as_ref() else {
        let next = base.join(first);
        if next.exists() {
            walk_glob(&next, rest, &res[1..], out);
        }
        return;
    };
    let Ok(rd) = std::fs::read_dir(here) else { return };
    let mut names: Vec<_> = rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    for n in names {
        if n.starts_with('.') && !first.starts_with('.') {
            continue;
        }
        if re.is_match(&n) {
            walk_glob(&base.join(&n), rest, &res[1..], out);
        }
    }
}
