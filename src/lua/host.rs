//! `host`: the config as a table, `reload()` (the safe point where edited scripts are swapped in), and
//! facts about the running cellsci (version, pid, Ctrl-C, the bundled files).
use mlua::prelude::*;

use super::boundary;
use crate::lua::ctx::HostCtx;

fn check_rel(lua: &Lua, func: &str, rel: &str) -> LuaResult<()> {
    let rel_path = std::path::Path::new(rel);
    if rel_path.is_absolute() || rel_path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(boundary::misuse(lua, format!("{func}: '{rel}' must be a relative path like prompts/x.yaml")));
    }
    Ok(())
}

fn bundled(lua: &Lua, rel: &str) -> LuaResult<(LuaValue, LuaValue)> {
    match crate::lua::embedded::get(rel) {
        Some(text) => Ok((text.into_owned().into_lua(lua)?, format!("<bundled>/{rel}").into_lua(lua)?)),
        None => boundary::fail(lua, "not_found", format!("no bundled file {rel}")),
    }
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    let ctx = HostCtx::get(lua);
    // host.config: the loaded config (expanded, paths absolute, defaults filled; no API key). {} without one.
    match &ctx.config {
        Some(c) => t.set("config", boundary::to_lua(lua, &c.value)?)?,
        None => t.set("config", lua.create_table()?)?,
    }
    // host.config_file: the config's absolute path, or nil
    if let Some(c) = &ctx.config {
        t.set("config_file", c.path.display().to_string())?;
    }
    // host.reload{events = sink}? -> names, errors (see crate::lua::reload); the reload events go to
    // `events` (the trial whose step is at the safe point), else the current event log
    t.set(
        "reload",
        lua.create_function(|lua, opts: Option<LuaTable>| {
            let o = boundary::Opts::new(lua, "host.reload", opts, &["events"])?;
            let sink = match o.value("events")? {
                LuaValue::Nil => None,
                LuaValue::UserData(ud) => match ud.borrow::<super::log::Sink>() {
                    Ok(s) => Some(s.0.clone()),
                    Err(_) => return Err(o.invalid("events", "a log.sink", "another userdata")),
                },
                v => return Err(o.invalid("events", "a log.sink", v.type_name())),
            };
            crate::lua::reload::reload_lua(lua, sink.as_deref())
        })?,
    )?;
    t.set("version", env!("CARGO_PKG_VERSION"))?;
    // host.pid() -> this process's id
    t.set("pid", lua.create_function(|_, ()| Ok(std::process::id()))?)?;
    // host.expand(text, vars?) -> text: `${name}` from `vars`, else the config's top-level strings and
    // numbers; unknown names stay as written (the same expander the config file uses).
    t.set(
        "expand",
        lua.create_function(|lua, (text, vars): (LuaString, Option<LuaTable>)| {
            let text = text.to_str()?.to_string();
            let ctx = HostCtx::get(lua);
            let lookup = |name: &str| -> Option<String> {
                if let Some(v) = vars.as_ref().and_then(|t| t.get::<LuaValue>(name).ok()) {
                    match v {
                        LuaValue::String(s) => return Some(s.to_string_lossy()),
                        LuaValue::Integer(i) => return Some(i.to_string()),
                        LuaValue::Number(n) => return Some(n.to_string()),
                        _ => {}
                    }
                }
                match ctx.config.as_ref()?.value.get(name)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            };
            Ok(crate::template::expand_with(&text, lookup))
        })?,
    )?;
    // host.interrupted() -> true once Ctrl-C / SIGTERM was received, or when the task scope running the
    // caller was cancelled (task.with): either way, the caller should stop what it is doing
    t.set("interrupted", lua.create_function(|_, ()| Ok(crate::signals::stopping()))?)?;
    // host.verbosity: -1 quiet, 0 normal, 1+ verbose
    t.set("verbosity", ctx.verbosity)?;
    // host.bundled(rel) -> text, where | nil, err: the copy of a bundled file such as
    // "stdlib/success.lua" built into cellsci, always (a user's shadowing copy that starts from the
    // bundled module must not get itself back).
    t.set(
        "bundled",
        lua.create_function(|lua, rel: String| {
            check_rel(lua, "host.bundled", &rel)?;
            bundled(lua, &rel)
        })?,
    )?;
    // host.lookup(rel) -> text, where | nil, err: the file a user's folders give for `rel` (the
    // script's folder, --scripts DIR, the current folder), else the bundled copy: how the pipeline
    // finds prompts/x.yaml.
    t.set(
        "lookup",
        lua.create_function(|lua, rel: String| {
            check_rel(lua, "host.lookup", &rel)?;
            let ctx = HostCtx::get(lua);
            let dirs = ctx.user_dirs.iter().chain(std::iter::once(&ctx.project_dir));
            for d in dirs {
                let p = d.join(&rel);
                if p.is_file() {
                    return match std::fs::read_to_string(&p) {
                        Ok(text) => Ok((text.into_lua(lua)?, super::display_path(&p).into_lua(lua)?)),
                        Err(e) => super::fs::io_fail(lua, "cannot read", &p, &e),
                    };
                }
            }
            bundled(lua, &rel)
        })?,
    )?;
    // host.bundled_files() -> {"scripts/pipeline.lua", "stdlib/...", "prompts/...", ...}
    t.set(
        "bundled_files",
        lua.create_function(|lua, ()| {
            let t = lua.create_sequence_from(crate::lua::embedded::files().iter().map(|(p, _)| *p))?;
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(t)
        })?,
    )?;
    Ok(t)
}
