//! `yaml`: decode and encode YAML (serde_yaml_ng, the maintained fork of serde_yaml). Prompt files are
//! YAML, so `decode` must take what users write: anchors and `<<` merges, non-string keys (made
//! strings), `.nan`/`.inf`. Only the first document of a stream is read.
//!
//! Key order matters here: a prompt spec is sent to the model dumped back to YAML, and its author's order
//! (task, data, constraints, output format...) should survive. Lua tables have no order, so `decode`
//! records each mapping's key order in its metatable (`__yaml_order`) and `encode` writes those keys
//! first, in that order, then any keys added since, sorted.
use mlua::prelude::*;
use serde_json::Value as J;
use serde_yaml_ng::Value as Y;

use super::boundary;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // yaml.decode(text) -> value | nil, err{kind="parse", line, column}
    t.set(
        "decode",
        lua.create_function(|lua, text: LuaValue| {
            let text = boundary::string_arg(lua, &text, "yaml.decode", "a string")?;
            match decode_yaml(&text.to_str()?) {
                Ok(v) => Ok((to_lua_ordered(lua, &v)?, LuaValue::Nil)),
                Err(e) => {
                    let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                    let msg = strip_position(&e.to_string());
                    let msg = if line > 0 { format!("invalid YAML at line {line} column {col}: {msg}") } else { msg };
                    boundary::fail_with(lua, "parse", msg, &serde_json::json!({"line": line, "column": col}))
                }
            }
        })?,
    )?;
    // yaml.encode(value) -> text (keys sorted, so the output is stable)
    t.set(
        "encode",
        lua.create_function(|lua, v: LuaValue| {
            let j = boundary::from_lua_checked(lua, &v, "yaml.encode")?;
            encode(&reorder(j, &v)).map_err(|e| boundary::misuse(lua, format!("yaml.encode: {e}")))
        })?,
    )?;
    Ok(t)
}

/// Parse YAML into JSON values (with merges applied; object keys in document order).
pub fn decode(text: &str) -> Result<J, serde_yaml_ng::Error> {
    decode_yaml(text).map(to_json)
}

fn decode_yaml(text: &str) -> Result<Y, serde_yaml_ng::Error> {
    if text.trim().is_empty() {
        return Ok(Y::Null);
    }
    let mut y: Y = serde_yaml_ng::from_str(text)?;
    y.apply_merge()?;
    Ok(y)
}

const ORDER_KEY: &str = "__yaml_order";

fn key_string(k: Y) -> String {
    match k {
        Y::String(s) => s,
        Y::Null => "null".into(),
        other => match to_json(other) {
            J::String(s) => s,
            j => j.to_string(),
        },
    }
}

/// YAML → Lua like `boundary::to_lua` (null members left out, arrays marked), with each mapping's key order
/// kept in its metatable.
fn to_lua_ordered(lua: &Lua, y: &Y) -> LuaResult<LuaValue> {
    match y {
        Y::Mapping(m) => {
            let t = lua.create_table_with_capacity(0, m.len())?;
            let order = lua.create_table_with_capacity(m.len(), 0)?;
            for (k, v) in m {
                let key = key_string(k.clone());
                order.raw_push(key.as_str())?;
                if !v.is_null() {
                    t.raw_set(key, to_lua_ordered(lua, v)?)?;
                }
            }
            let mt = lua.create_table()?;
            mt.raw_set(ORDER_KEY, order)?;
            t.set_metatable(Some(mt))?;
            Ok(LuaValue::Table(t))
        }
        Y::Sequence(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua_ordered(lua, x)?)?;
            }
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(LuaValue::Table(t))
        }
        Y::Tagged(t) => to_lua_ordered(lua, &t.value),
        other => boundary::to_lua(lua, &to_json(other.clone())),
    }
}

/// Order the objects of `j` (converted from `v`): keys recorded by `decode` first, in their order, then
/// the others sorted.
fn reorder(j: J, v: &LuaValue) -> J {
    let LuaValue::Table(t) = v else { return super::json::sort_keys(j) };
    match j {
        J::Object(m) => {
            let order: Vec<String> = t
                .metatable()
                .and_then(|mt| mt.raw_get::<Option<LuaTable>>(ORDER_KEY).ok().flatten())
                .map(|o| o.sequence_values::<String>().filter_map(Result::ok).collect())
                .unwrap_or_default();
            let mut rest: Vec<(String, J)> = m.into_iter().collect();
            let mut out = serde_json::Map::new();
            for k in order {
                if let Some(i) = rest.iter().position(|(rk, _)| *rk == k) {
                    let (k, x) = rest.remove(i);
                    let sub = t.raw_get::<LuaValue>(k.as_str()).unwrap_or(LuaValue::Nil);
                    out.insert(k, reorder(x, &sub));
                }
            }
            rest.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, x) in rest {
                let sub = t.raw_get::<LuaValue>(k.as_str()).unwrap_or(LuaValue::Nil);
                out.insert(k, reorder(x, &sub));
            }
            J::Object(out)
        }
        J::Array(a) => J::Array(
            a.into_iter()
                .enumerate()
                .map(|(i, x)| {
                    let sub = t.raw_get::<LuaValue>(i + 1).unwrap_or(LuaValue::Nil);
                    reorder(x, &sub)
                })
                .collect(),
        ),
        other => other,
    }
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
                crate::pyjson::from_f64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(a) => J::Array(a.into_iter().map(to_json).collect()),
        Y::Mapping(m) => J::Object(m.into_iter().map(|(k, v)| (key_string(k), to_json(v))).collect()),
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
        J::String(s) => match crate::pyjson::non_finite(s) {
            Some(x) => Y::Number(x.into()),
            None => Y::String(s.clone()),
        },
        J::Array(a) => Y::Sequence(a.iter().map(to_yaml).collect()),
        J::Object(m) => Y::Mapping(m.iter().map(|(k, v)| (Y::String(k.clone()), to_yaml(v))).collect()),
    }
}
