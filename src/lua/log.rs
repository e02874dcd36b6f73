//! `log`: messages for the person running cellsci (stderr, by level, respecting -q / -v), the plain
//! stdout event lines other tools parse (`log.line`), and the trial's event log (`log.event`).
//! Messages at info and above are also appended to the event log when one is set, so a trial's
//! events.jsonl tells the whole story. Never pass the API key to any of these.
use std::sync::Arc;

use mlua::prelude::*;

use super::boundary;
use crate::events::EventLog;
use crate::lua::ctx::HostCtx;

fn message(lua: &Lua, args: &LuaMultiValue) -> LuaResult<String> {
    let tostring: LuaFunction = lua.globals().get("tostring")?;
    let mut parts = Vec::with_capacity(args.len());
    for v in args.iter() {
        parts.push(tostring.call::<String>(v.clone())?);
    }
    Ok(parts.join(" "))
}

/// Record in `events` what the line guard or `quote` neutralized (escapes and clipping alone are not
/// worth an event).
fn record_neutralized(events: &EventLog, what: &str, original: &str, c: &crate::untrusted::Cleaned) {
    if c.neutralized() {
        // the event log is JSON: the text as it was (clipped), for the audit
        let original: String = original.chars().take(2000).collect();
        events.emit("neutralized", serde_json::json!({"what": what, "changes": c.changes, "original": original}));
    }
}

/// `log.quote(v, {what=, max=, events=})` / `sink:quote(v, what)`: the value as safe text and what was
/// changed (nil when nothing); the change is recorded in `events`.
fn quote_value(lua: &Lua, v: &LuaValue, what: &str, max: usize, events: &EventLog) -> LuaResult<LuaMultiValue> {
    let tostring: LuaFunction = lua.globals().get("tostring")?;
    let text = HostCtx::get(lua).secret.mask(&tostring.call::<String>(v.clone())?);
    let c = crate::untrusted::quote(&text, max);
    record_neutralized(events, what, &text, &c);
    let changes = if c.changes.is_empty() {
        LuaValue::Nil
    } else {
        LuaValue::Table(lua.create_sequence_from(c.changes.clone())?)
    };
    Ok(LuaMultiValue::from_vec(vec![LuaValue::String(lua.create_string(&c.text)?), changes]))
}

/// A stdout line, guarded, with what was neutralized recorded in `events`.
fn print_line(lua: &Lua, text: &str, events: &EventLog) {
    let text = HostCtx::get(lua).secret.mask(text);
    let c = crate::ui::line(&text);
    record_neutralized(events, "stdout line", &text, &c);
}

/// A message at `level` on stderr (when the verbosity shows it), guarded, with what was neutralized
/// recorded in `events`. Returns the masked message.
fn print_message(lua: &Lua, level: &str, text: &str, events: &EventLog) -> LuaResult<String> {
    let &(_, min, prefix) = LEVELS
        .iter()
        .find(|l| l.0 == level)
        .ok_or_else(|| boundary::misuse(lua, format!("unknown level '{level}' (debug, info, warn, error)")))?;
    let ctx = HostCtx::get(lua);
    let msg = ctx.secret.mask(text);
    if ctx.verbosity >= min {
        let loc = if level == "debug" {
            boundary::caller_location(lua).map(|l| format!("{l}: ")).unwrap_or_default()
        } else {
            String::new()
        };
        let c = crate::ui::eline(&format!("{prefix}{loc}{msg}"));
        record_neutralized(events, "stderr line", &msg, &c);
    }
    Ok(msg)
}

/// (level name, minimum verbosity to show, prefix)
const LEVELS: &[(&str, i8, &str)] =
    &[("debug", 1, "debug: "), ("info", 0, ""), ("warn", 0, "warning: "), ("error", -1, "error: ")];

/// A trial's own event log (`log.sink(path)`): what a branch hands to its steps, so that its LLM
/// exchanges (`llm.chat{events = sink}`), cell runs and messages land in its trial whatever other
/// branches do at the same time. It also counts the tokens and LLM time of the calls that logged to it.
pub struct Sink(pub Arc<EventLog>);

impl LuaUserData for Sink {
    fn add_methods<M: LuaUserDataMethods<Self>>(m: &mut M) {
        // sink:event(kind, fields?)
        m.add_method("event", |lua, this, (kind, fields): (LuaValue, Option<LuaValue>)| {
            let kind = boundary::string_arg(lua, &kind, "sink:event", "a kind string")?;
            let fields = event_fields(lua, fields, "sink:event")?;
            this.0.emit(&kind.to_str()?, fields);
            Ok(())
        });
        // sink:line(text): a stdout line (as log.line), what the guard neutralized recorded here
        m.add_method("line", |lua, this, text: LuaValue| {
            let text = boundary::string_arg(lua, &text, "sink:line", "a string")?;
            print_line(lua, &text.to_str()?, &this.0);
            Ok(())
        });
        // sink:message(level, text): a stderr message (as log.info/warn/error/debug) without the "log"
        // event; what the guard neutralized recorded here
        m.add_method("message", |lua, this, (level, text): (String, LuaValue)| {
            let text = boundary::string_arg(lua, &text, "sink:message", "a string")?;
            print_message(lua, &level, &text.to_str()?, &this.0)?;
            Ok(())
        });
        // sink:quote(v, what?) -> safe text, changes|nil (as log.quote, recorded here)
        m.add_method("quote", |lua, this, (v, what): (LuaValue, Option<String>)| {
            quote_value(lua, &v, what.as_deref().unwrap_or("value"), crate::untrusted::QUOTE_MAX, &this.0)
        });
        // sink:path() -> the file, or nil
        m.add_method("path", |_, this, ()| Ok(this.0.path().map(|p| p.display().to_string())));
        // sink:move(path): the trial folder was renamed (archived); keep logging to the same log there
        m.add_method("move", |lua, this, p: String| {
            let p = super::path::abs(std::path::Path::new(&p));
            if p.parent().is_some_and(|d| !d.is_dir()) {
                return Err(boundary::misuse(lua, format!("sink:move: no folder {}", p.display())));
            }
            this.0.move_to(p);
            Ok(())
        });
        // sink:usage() -> {prompt_tokens, completion_tokens, total_tokens, calls, latency, cost, unpriced}
        m.add_method("usage", |lua, this, ()| {
            let u = this.0.usage();
            boundary::to_lua(
                lua,
                &serde_json::json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                    "total_tokens": u.prompt_tokens + u.completion_tokens, "calls": u.calls, "latency": u.latency,
                    "cost": u.cost, "unpriced": u.unpriced}),
            )
        });
    }
}

fn event_fields(lua: &Lua, fields: Option<LuaValue>, func: &str) -> LuaResult<serde_json::Value> {
    let fields = match fields {
        None | Some(LuaValue::Nil) => serde_json::json!({}),
        Some(v @ LuaValue::Table(_)) => boundary::from_lua_checked(lua, &v, func)?,
        Some(v) => return Err(boundary::misuse(lua, format!("{func}: fields must be a table, got {}", v.type_name()))),
    };
    Ok(if fields.is_object() { fields } else { serde_json::json!({ "data": fields }) })
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // log.sink(path) -> a trial's own event log (parent folders are created), masked like every log
    t.set(
        "sink",
        lua.create_function(|lua, p: LuaValue| {
            let p = boundary::string_arg(lua, &p, "log.sink", "a path string")?.to_string_lossy();
            let p = super::path::abs(std::path::Path::new(&p));
            if let Some(dir) = p.parent() {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    return Err(boundary::misuse(lua, format!("log.sink: cannot create {}: {e}", dir.display())));
                }
            }
            let log = EventLog::new(HostCtx::get(lua).secret.clone());
            log.set_path(Some(p));
            Ok(Sink(Arc::new(log)))
        })?,
    )?;
    t.set("progress", super::progress::create(lua)?)?;
    for &(level, _, _) in LEVELS {
        // log.debug(...), log.info(...), log.warn(...), log.error(...): values joined by spaces, like print
        t.set(
            level,
            lua.create_function(move |lua, args: LuaMultiValue| {
                let ctx = HostCtx::get(lua);
                // the key never reaches stderr or the event log, whatever a script passes
                let msg = print_message(lua, level, &message(lua, &args)?, &ctx.events)?;
                if level != "debug" {
                    ctx.events.emit("log", serde_json::json!({"level": level, "message": msg}));
                }
                Ok(())
            })?,
        )?;
    }
    // log.line(...) -> prints one plain line to stdout at once (ITERATION 1/3, [CHECK] ..., [FIX] ...):
    // one line whatever it holds, a runner marker only as its own prefix (untrusted::guard)
    t.set(
        "line",
        lua.create_function(|lua, args: LuaMultiValue| {
            print_line(lua, &message(lua, &args)?, &HostCtx::get(lua).events);
            Ok(())
        })?,
    )?;
    // log.quote(v, {what=, max=, events=}) -> text, changes|nil: a value from a notebook or an LLM, safe
    // to interpolate into a line (escaped, clipped, runner phrases neutralized; recorded in `events`,
    // a log.sink, else the current event log)
    t.set(
        "quote",
        lua.create_function(|lua, (v, opts): (LuaValue, Option<LuaTable>)| {
            let o = boundary::Opts::new(lua, "log.quote", opts, &["what", "max", "events"])?;
            let what = o.str("what")?.unwrap_or_else(|| "value".into());
            let max = o.u64("max")?.map(|m| m.clamp(16, 100_000) as usize).unwrap_or(crate::untrusted::QUOTE_MAX);
            let sink = match o.value("events")? {
                LuaValue::Nil => None,
                LuaValue::UserData(ud) => match ud.borrow::<Sink>() {
                    Ok(s) => Some(s.0.clone()),
                    Err(_) => return Err(o.invalid("events", "a log.sink", "another userdata")),
                },
                v => return Err(o.invalid("events", "a log.sink", v.type_name())),
            };
            match sink {
                Some(s) => quote_value(lua, &v, &what, max, &s),
                None => quote_value(lua, &v, &what, max, &HostCtx::get(lua).events),
            }
        })?,
    )?;
    // log.event(kind, fields?) -> appends {"ts", "kind", ...fields} to the event log (if one is set)
    t.set(
        "event",
        lua.create_function(|lua, (kind, fields): (LuaValue, Option<LuaValue>)| {
            let kind = boundary::string_arg(lua, &kind, "log.event", "a kind string")?;
            let fields = match fields {
                None | Some(LuaValue::Nil) => serde_json::json!({}),
                Some(v @ LuaValue::Table(_)) => boundary::from_lua_checked(lua, &v, "log.event")?,
                Some(v) => {
                    return Err(boundary::misuse(
                        lua,
                        format!("log.event: fields must be a table, got {}", v.type_name()),
                    ))
                }
            };
            let fields = if fields.is_object() { fields } else { serde_json::json!({ "data": fields }) };
            HostCtx::get(lua).events.emit(&kind.to_str()?, fields);
            Ok(())
        })?,
    )?;
    // log.set_event_file(path | nil): where log.event appends (parent folders are created); nil stops
    t.set(
        "set_event_file",
        lua.create_function(|lua, p: Option<String>| {
            let p = p.filter(|s| !s.is_empty()).map(|s| super::path::abs(std::path::Path::new(&s)));
            if let Some(dir) = p.as_ref().and_then(|p| p.parent()) {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    return Err(boundary::misuse(
                        lua,
                        format!("log.set_event_file: cannot create {}: {e}", dir.display()),
                    ));
                }
            }
            HostCtx::get(lua).events.set_path(p);
            Ok(())
        })?,
    )?;
    // log.event_file() -> the current event log path, or nil
    t.set(
        "event_file",
        lua.create_function(|lua, ()| Ok(HostCtx::get(lua).events.path().map(|p| p.display().to_string())))?,
    )?;
    Ok(t)
}
