//! `time`: wall clock (`now`, `stamp`, `iso`, `format`), a monotonic clock for durations, and `sleep`,
//! which ends early on Ctrl-C so a waiting script stops promptly.
use std::sync::OnceLock;
use std::time::Instant;

use mlua::prelude::*;

use super::boundary;

static START: OnceLock<Instant> = OnceLock::new();

fn local_time(lua: &Lua, t: Option<f64>) -> LuaResult<chrono::DateTime<chrono::Local>> {
    match t {
        None => Ok(chrono::Local::now()),
        Some(x) if !x.is_finite() => Err(boundary::misuse(lua, format!("time: {x} is not a valid time"))),
        Some(x) => {
            let secs = x.floor();
            let nanos = ((x - secs) * 1e9) as u32;
            chrono::DateTime::from_timestamp(secs as i64, nanos)
                .map(|d| d.with_timezone(&chrono::Local))
                .ok_or_else(|| boundary::misuse(lua, format!("time: {x} is not a valid time")))
        }
    }
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    START.get_or_init(Instant::now);
    let t = lua.create_table()?;
    // time.now() -> seconds since 1970 (float)
    t.set(
        "now",
        lua.create_function(|_, ()| {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0))
        })?,
    )?;
    // time.monotonic() -> seconds since cellsci started, never going backwards (for durations)
    t.set("monotonic", lua.create_function(|_, ()| Ok(START.get_or_init(Instant::now).elapsed().as_secs_f64()))?)?;
    // time.stamp(t?) -> "20261126_153000" (local time), as in prompt_run_<stamp>
    t.set(
        "stamp",
        lua.create_function(|lua, t: Option<f64>| Ok(local_time(lua, t)?.format("%Y%m%d_%H%M%S").to_string()))?,
    )?;
    // time.iso(t?) -> "2026-11-26T15:30:00+01:00" (local time, seconds)
    t.set(
        "iso",
        lua.create_function(|lua, t: Option<f64>| {
            Ok(local_time(lua, t)?.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        })?,
    )?;
    // time.format(fmt, t?) -> strftime-style text (local time)
    t.set(
        "format",
        lua.create_function(|lua, (fmt, t): (String, Option<f64>)| {
            let items: Vec<_> = chrono::format::StrftimeItems::new(&fmt).collect();
            if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
                return Err(boundary::misuse(lua, format!("time.format: bad format '{fmt}'")));
            }
            Ok(local_time(lua, t)?.format_with_items(items.into_iter()).to_string())
        })?,
    )?;
    // time.sleep(seconds) -> true | nil, err{kind="interrupted"} (Ctrl-C ends it early)
    t.set(
        "sleep",
        lua.create_async_function(|lua, secs: LuaValue| async move {
            let secs = match secs {
                LuaValue::Integer(i) => i as f64,
                LuaValue::Number(x) => x,
                other => {
                    return Err(boundary::misuse(
                        &lua,
                        format!("time.sleep: expected seconds, got {}", other.type_name()),
                    ))
                }
            };
            if !(secs >= 0.0 && secs.is_finite()) {
                return Err(boundary::misuse(&lua, format!("time.sleep: expected seconds >= 0, got {secs}")));
            }
            let token = crate::signals::token();
            if token.is_cancelled() {
                return boundary::fail(&lua, "interrupted", "interrupted (Ctrl-C)");
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::duration_secs(secs)) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                _ = token.cancelled() => boundary::fail(&lua, "interrupted", "interrupted (Ctrl-C)"),
            }
        })?,
    )?;
    Ok(t)
}
