//! `fs`: files for scripts. Writes are atomic (a temp file in the same folder, then rename), so a
//! reader (a watcher, phase-3 tools, a crashed run) never sees half a file. Expected failures (a missing
//! file, no permission) return `nil, err` with `err.kind` one of `not_found`, `permission`, `exists`,
//! `not_a_dir`, `io`; a wrong argument raises. These calls are synchronous: they are fast, and a module
//! may call them while it is being `require`d (where an async call could not yield).
use std::io::Write;
use std::path::{Path, PathBuf};

use mlua::prelude::*;

use super::util;

type Ret = (LuaValue, LuaValue);

fn path_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<PathBuf> {
    let s = util::string_arg(lua, v, func, "a path string")?;
    if s.as_bytes().is_empty() {
        return Err(util::misuse(lua, format!("{func}: expected a path string, got an empty string")));
    }
    Ok(PathBuf::from(s.to_str()?.to_string()))
}

/// `nil, err` for an I/O error, with a kind a script can branch on.
pub fn io_fail(lua: &Lua, what: &str, p: &Path, e: &std::io::Error) -> LuaResult<Ret> {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => "not_found",
        K::PermissionDenied => "permission",
        K::AlreadyExists => "exists",
        K::NotADirectory => "not_a_dir",
        _ => "io",
    };
    let msg = format!("{what} {}: {e}", p.display());
    util::fail_with(lua, kind, msg, &serde_json::json!({"path": p.display().to_string()}))
}

fn ok(v: impl IntoLua, lua: &Lua) -> LuaResult<Ret> {
    Ok((v.into_lua(lua)?, LuaValue::Nil))
}

use crate::files::write_atomic;

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    if std::fs::metadata(src)?.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        write_atomic(dst, &std::fs::read(src)?)?;
        let perms = std::fs::metadata(src)?.permissions();
        std::fs::set_permissions(dst, perms)
    }
}

fn mtime_secs(m: &std::fs::Metadata) -> f64 {
    m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // fs.read(path) -> string | nil, err
    t.set(
        "read",
        lua.create_function(|lua, p: LuaValue| {
            let p = path_arg(lua, "fs.read", &p)?;
            match std::fs::read(&p) {
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
                std::fs::OpenOptions::new().create(true).append(true).open(&p)?.write_all(&bytes)
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
            let mut recursive = false;
            if let Some(o) = &opts {
                util::check_opts(lua, o, "fs.remove", &["recursive"])?;
                recursive = o.get::<Option<bool>>("recursive")?.unwrap_or(false);
            }
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
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => util::fail_with(
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
                return util::fail_with(
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
    // fs.stat(path) -> {size, mtime, is_dir, is_file} | nil, err
    t.set(
        "stat",
        lua.create_function(|lua, p: LuaValue| {
            let p = path_arg(lua, "fs.stat", &p)?;
            match std::fs::metadata(&p) {
                Ok(m) => {
                    let t = lua.create_table()?;
                    t.set("size", m.len())?;
                    t.set("mtime", mtime_secs(&m))?;
                    t.set("is_dir", m.is_dir())?;
                    t.set("is_file", m.is_file())?;
                    ok(t, lua)
                }
                Err(e) => io_fail(lua, "cannot stat", &p, &e),
            }
        })?,
    )?;
    // fs.glob(pattern) -> {paths...} sorted  (`*`, `?`, `[abc]` within a name; `**` any folders)
    t.set(
        "glob",
        lua.create_function(|lua, pat: LuaValue| {
            let pat = util::string_arg(lua, &pat, "fs.glob", "a pattern string")?.to_str()?.to_string();
            let mut out = glob(&pat).map_err(|e| util::misuse(lua, format!("fs.glob: {e}")))?;
            out.sort();
            let t = lua.create_sequence_from(out)?;
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(t)
        })?,
    )?;
    Ok(t)
}

fn content_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<Vec<u8>> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(_) | LuaValue::Number(_) => Ok(v.to_string()?.into_bytes()),
        other => Err(util::misuse(
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
