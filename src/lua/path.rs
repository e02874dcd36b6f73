//! `path`: file path strings, computed without touching the disk (see `fs` for that).
use std::path::{Component, Path, PathBuf};

use mlua::prelude::*;

use super::boundary;

fn str_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<String> {
    Ok(boundary::string_arg(lua, v, func, "a path string")?.to_str()?.to_string())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An absolute, lexically normalized path (relative paths are taken from the current folder).
pub fn abs(p: &Path) -> PathBuf {
    let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    crate::files::normalize(&p)
}

/// `p` relative to `base` (both made absolute first).
pub fn relative(p: &Path, base: &Path) -> PathBuf {
    let (p, base) = (abs(p), abs(base));
    let pc: Vec<Component> = p.components().collect();
    let bc: Vec<Component> = base.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // path.join(a, b, ...) -> "a/b/..."  (an absolute part restarts the path, as in Python)
    t.set(
        "join",
        lua.create_function(|lua, parts: LuaMultiValue| {
            let mut p = PathBuf::new();
            for v in parts.iter() {
                p.push(str_arg(lua, "path.join", v)?);
            }
            Ok(s(&p))
        })?,
    )?;
    // path.dirname("a/b/c.txt") -> "a/b" ("." when there is none)
    t.set(
        "dirname",
        lua.create_function(|lua, v: LuaValue| {
            let p = PathBuf::from(str_arg(lua, "path.dirname", &v)?);
            Ok(match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => s(d),
                Some(_) => ".".to_string(),
                None => s(&p),
            })
        })?,
    )?;
    // path.basename("a/b/c.txt") -> "c.txt"
    t.set(
        "basename",
        lua.create_function(|lua, v: LuaValue| {
            let p = PathBuf::from(str_arg(lua, "path.basename", &v)?);
            Ok(p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
        })?,
    )?;
    // path.ext("a/b.tar.gz") -> "gz" ("" when there is none); path.stem("a/b.tar.gz") -> "b.tar"
    t.set(
        "ext",
        lua.create_function(|lua, v: LuaValue| {
            let p = PathBuf::from(str_arg(lua, "path.ext", &v)?);
            Ok(p.extension().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
        })?,
    )?;
    t.set(
        "stem",
        lua.create_function(|lua, v: LuaValue| {
            let p = PathBuf::from(str_arg(lua, "path.stem", &v)?);
            Ok(p.file_stem().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
        })?,
    )?;
    // path.abs(p) -> absolute, normalized (no "." or ".."; symlinks are not resolved)
    t.set("abs", lua.create_function(|lua, v: LuaValue| Ok(s(&abs(Path::new(&str_arg(lua, "path.abs", &v)?)))))?)?;
    // path.normalize(p) -> p without "." and ".." parts (stays relative if it was)
    t.set(
        "normalize",
        lua.create_function(|lua, v: LuaValue| {
            Ok(s(&crate::files::normalize(Path::new(&str_arg(lua, "path.normalize", &v)?))))
        })?,
    )?;
    // path.relative(p, base?) -> p relative to base (default: the current folder)
    t.set(
        "relative",
        lua.create_function(|lua, (v, base): (LuaValue, Option<LuaValue>)| {
            let p = str_arg(lua, "path.relative", &v)?;
            let base = match base {
                Some(b) if !b.is_nil() => PathBuf::from(str_arg(lua, "path.relative", &b)?),
                _ => std::env::current_dir().unwrap_or_default(),
            };
            Ok(s(&relative(Path::new(&p), &base)))
        })?,
    )?;
    // path.is_abs(p) -> bool
    t.set(
        "is_abs",
        lua.create_function(|lua, v: LuaValue| Ok(Path::new(&str_arg(lua, "path.is_abs", &v)?).is_absolute()))?,
    )?;
    // path.cwd() -> the current folder
    t.set("cwd", lua.create_function(|_, ()| Ok(s(&std::env::current_dir().unwrap_or_default())))?)?;
    t.set("sep", "/")?;
    Ok(t)
}
