//! `yaml`: decode and encode YAML (serde_yaml_ng, the maintained fork of serde_yaml). Prompt files are
//! YAML, so `decode` must take what users write: anchors and `<<` merges, non-string keys (made
//! strings), `.nan`/`.inf`. Only the first document of a stream is read.
use mlua::prelude::*;
use serde_json::Value as J;
use serde_yaml_ng::Value as Y;

use super::util;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // yaml.decode(text) -> value | nil, err{kind="parse", line, column}
    t.set(
        "decode",
        lua.create_function(|lua, text: LuaValue| {
            let LuaValue::String(text) = text else {
                return Err(util::misuse(lua, format!("yaml.decode: expected a string, got {}", text.type_name())));
            };
            match decode(&text.to_str()?) {
                Ok(v) => Ok((util::to_lua(lua, &v)?, LuaValue::Nil)),
                Err(e) => {
                    let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                    let msg = strip_position(&e.to_string());
                    let msg = if line > 0 { format!("invalid YAML at line {line} column {col}: {msg}") } else { msg };
                    util::fail_with(lua, "parse", msg, &serde_json::json!({"line": line, "column": col}))
                }
            }
        })?,
    )?;
    // yaml.encode(value) -> text (keys sorted, so the output is stable)
    t.set(
        "encode",
        lua.create_function(|lua, v: LuaValue| {
            let v = util::from_lua_checked(lua, &v, "yaml.encode")?;
            encode(&super::json::sort_keys(v)).map_err(|e| util::misuse(lua, format!("yaml.encode: {e}")))
        })?,
    )?;
    Ok(t)
}

/// Parse YAML into JSON values (with merges applied).
pub fn decode(text: &str) -> Result<J, serde_yaml_ng::Error> {
    if text.trim().is_empty() {
        return Ok(J::Null);
    }
    let mut y: Y = serde_yaml_ng::from_str(text)?;
    y.apply_merge()?;
    Ok(to_json(y))
}

/// Write JSON values as YAML (non-finite markers become `.nan` / `.inf`).
pub fn encode(v: &J) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&to_yaml(v))
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn to_json(y: Y) -> J {
    match y {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                crate::jsonx::from_f64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(a) => J::Array(a.into_iter().map(to_json).collect()),
        Y::Mapping(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Null => "null".into(),
                        other => match to_json(other) {
                            J::String(s) => s,
                            j => j.to_string(),
                        },
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => to_json(t.value),
    }
}

fn to_yaml(v: &J) -> Y {
    match v {
        J::Null => Y::Null,
        J::Bool(b) => Y::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Y::Number(i.into()),
            (_, Some(u)) => Y::Number(u.into()),
            _ => Y::Number(n.as_f64().unwrap_or(f64::NAN).into()),
        },
        J::String(s) => match crate::jsonx::non_finite(s) {
            Some(x) => Y::Number(x.into()),
            None => Y::String(s.clone()),
        },
        J::Array(a) => Y::Sequence(a.iter().map(to_yaml).collect()),
        J::Object(m) => Y::Mapping(m.iter().map(|(k, v)| (Y::String(k.clone()), to_yaml(v))).collect()),
    }
}
