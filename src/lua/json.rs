//! `json`: decode (accepts NaN/Infinity/-Infinity as Python writes them) and encode (stable key order,
//! pretty on request).
use mlua::prelude::*;

use super::util;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set(
        "decode",
        lua.create_function(|lua, text: LuaString| {
            let text = text.to_str()?;
            match crate::jsonx::parse(&text) {
                Ok(v) => Ok((util::to_lua(lua, &v)?, LuaValue::Nil)),
                Err(e) => {
                    util::fail(lua, "parse", format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()))
                }
            }
        })?,
    )?;
    t.set(
        "encode",
        lua.create_function(|lua, (v, opts): (LuaValue, Option<LuaTable>)| {
            let mut pretty = false;
            if let Some(o) = &opts {
                util::check_opts(lua, o, "json.encode", &["pretty"])?;
                pretty = o.get::<Option<bool>>("pretty")?.unwrap_or(false);
            }
            let v = util::from_lua_checked(lua, &v, "json.encode")?;
            Ok(crate::jsonx::to_string(&sort_keys(v), pretty))
        })?,
    )?;
    t.set("null", LuaValue::NULL)?;
    Ok(t)
}

/// Sort object keys recursively so encoding a Lua table is stable across runs.
pub fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}
