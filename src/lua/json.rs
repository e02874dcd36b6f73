//! `json`: decode (accepts NaN/Infinity/-Infinity as Python writes them) and encode (stable key order,
//! pretty on request). `json.null` stands for null inside arrays; `json.array(t)` marks a table as an
//! array so an empty one encodes as `[]` rather than `{}`.
use mlua::prelude::*;

use super::boundary;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // json.decode(text) -> value | nil, err{kind="parse", line, column}
    t.set(
        "decode",
        lua.create_function(|lua, text: LuaValue| {
            let text = boundary::string_arg(lua, &text, "json.decode", "a string")?;
            let text = text.to_str()?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            match crate::pyjson::parse(text) {
                Ok(v) => Ok((boundary::to_lua(lua, &v)?, LuaValue::Nil)),
                Err(e) => {
                    let msg = if crate::pyjson::is_too_deep(&e) {
                        format!(
                            "nested too deeply (more than {} levels of arrays and objects)",
                            crate::pyjson::MAX_DEPTH
                        )
                    } else {
                        let m = e.to_string();
                        m.strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
                            .unwrap_or(&m)
                            .to_string()
                    };
                    boundary::fail_with(
                        lua,
                        "parse",
                        format!("invalid JSON at line {} column {}: {msg}", e.line(), e.column()),
                        &serde_json::json!({"line": e.line(), "column": e.column()}),
                    )
                }
            }
        })?,
    )?;
    // json.encode(value, {pretty=false}) -> text; object keys sorted; NaN/Infinity written as Python does.
    t.set(
        "encode",
        lua.create_function(|lua, (v, opts): (LuaValue, Option<LuaTable>)| {
            let pretty = boundary::Opts::new(lua, "json.encode", opts, &["pretty"])?.bool("pretty")?.unwrap_or(false);
            let v = boundary::from_lua_checked(lua, &v, "json.encode")?;
            Ok(crate::pyjson::to_string(&sort_keys(v), pretty))
        })?,
    )?;
    // json.array(t?) -> t, marked as an array (a new empty one when no table is given).
    t.set(
        "array",
        lua.create_function(|lua, t: Option<LuaTable>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(t)
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
