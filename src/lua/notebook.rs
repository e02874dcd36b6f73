//! The `notebook` module: Jupyter notebooks as handles (`nb`) with 1-based cell indices.
//!
//! `nb:cell(i)` returns a plain table (a copy); changes go back through `nb:set_source`,
//! `nb:set_outputs`, `nb.metadata = ...`. Reading a missing or invalid file returns `nil, err`;
//! a bad index or a malformed cell is misuse and raises.

use mlua::prelude::*;
use serde_json::{Map, Value};

use super::boundary::{fail, from_lua_checked, misuse, to_lua};
use crate::notebook::Notebook;

pub struct LuaNotebook(pub Notebook);

fn index(lua: &Lua, nb: &Notebook, i: i64, allow_end: bool) -> LuaResult<usize> {
    let max = if allow_end { nb.len() + 1 } else { nb.len() };
    if i < 1 || i as usize > max {
        return Err(misuse(lua, format!("cell index {i} out of range (the notebook has {} cells)", nb.len())));
    }
    Ok(i as usize - 1)
}

/// Outputs, execution count and timing of an execution result.
type ResultParts = (Vec<Value>, Option<i64>, Option<Map<String, Value>>);

/// Outputs, count and timing from a `k:execute` result table (or a table with just `outputs`), moved
/// out of it (outputs can be megabytes).
pub fn result_parts(lua: &Lua, v: Value) -> LuaResult<ResultParts> {
    let Value::Object(mut m) = v else {
        return Err(misuse(lua, "nb:set_outputs expects the table k:execute returned (or {outputs = {...}})"));
    };
    let outputs = match m.remove("outputs") {
        Some(Value::Array(a)) => a,
        Some(Value::Object(o)) if o.is_empty() => Vec::new(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(misuse(lua, "nb:set_outputs: 'outputs' must be a list")),
    };
    let count = m.get("execution_count").and_then(Value::as_i64);
    let timing = match m.remove("timing") {
        Some(Value::Object(t)) if !t.is_empty() => Some(t),
        _ => None,
    };
    Ok((outputs, count, timing))
}

impl LuaUserData for LuaNotebook {
    fn add_fields<F: LuaUserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("metadata", |lua, this| to_lua(lua, this.0.metadata()));
        fields.add_field_method_set("metadata", |lua, this, v: LuaValue| {
            let mut m = from_lua_checked(lua, &v, "nb.metadata")?;
            if matches!(&m, Value::Array(a) if a.is_empty()) || m.is_null() {
                m = Value::Object(Map::new());
            }
            this.0.set_metadata(m).map_err(|e| misuse(lua, e))
        });
    }

    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.0.len()));
        methods.add_meta_method(LuaMetaMethod::Len, |_, this, ()| Ok(this.0.len()));
        methods.add_method("cell", |lua, this, i: i64| {
            let i = index(lua, &this.0, i, false)?;
            to_lua(lua, &this.0.cell_joined(i).unwrap_or(Value::Null))
        });
        methods.add_method_mut("push", |lua, this, cell: LuaValue| {
            let v = from_lua_checked(lua, &cell, "nb:push")?;
            let i = this.0.push(v).map_err(|e| misuse(lua, format!("nb:push: {e}")))?;
            Ok(i + 1)
        });
        methods.add_method_mut("insert", |lua, this, (i, cell): (i64, LuaValue)| {
            let i = index(lua, &this.0, i, true)?;
            let v = from_lua_checked(lua, &cell, "nb:insert")?;
            this.0.insert(i, v).map_err(|e| misuse(lua, format!("nb:insert: {e}")))
        });
        methods.add_method_mut("remove", |lua, this, i: i64| {
            let i = index(lua, &this.0, i, false)?;
            let v = this.0.remove(i).map_err(|e| misuse(lua, e))?;
            to_lua(lua, &v)
        });
        methods.add_method_mut("set_source", |lua, this, (i, src): (i64, String)| {
            let i = index(lua, &this.0, i, false)?;
            this.0.set_source(i, &src).map_err(|e| misuse(lua, e))
        });
        methods.add_method_mut("set_outputs", |lua, this, (i, result): (i64, LuaValue)| {
            let i = index(lua, &this.0, i, false)?;
            let v = from_lua_checked(lua, &result, "nb:set_outputs")?;
            let (outputs, count, timing) = result_parts(lua, v)?;
            this.0.set_outputs_owned(i, outputs, count, timing).map_err(|e| misuse(lua, format!("nb:set_outputs: {e}")))
        });
        methods.add_method_mut("clear_outputs", |_, this, ()| {
            this.0.clear_outputs();
            Ok(())
        });
        methods.add_method("to_table", |lua, this, ()| to_lua(lua, &this.0.to_value()));
        methods.add_method_mut("write", |lua, this, path: String| match this.0.write(std::path::Path::new(&path)) {
            Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
            Err(e) => fail(lua, "io", format!("{e:#}")),
        });
        methods.add_meta_method(LuaMetaMethod::ToString, |_, this, ()| {
            Ok(format!("notebook ({} cells, nbformat 4.{})", this.0.len(), this.0.minor()))
        });
    }
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("new", lua.create_function(|_, ()| Ok(LuaNotebook(Notebook::new())))?)?;
    t.set(
        "read",
        lua.create_function(|lua, path: String| {
            let p = std::path::Path::new(&path);
            if !p.exists() {
                return fail(lua, "not_found", format!("no notebook at {path}"));
            }
            match Notebook::read(p) {
                Ok(nb) => Ok((LuaValue::UserData(lua.create_userdata(LuaNotebook(nb))?), LuaValue::Nil)),
                Err(e) => fail(lua, "invalid", format!("{e:#}")),
            }
        })?,
    )?;
    t.set(
        "from_table",
        lua.create_function(|lua, v: LuaTable| {
            let mut v = from_lua_checked(lua, &LuaValue::Table(v.clone()), "notebook.from_table")?;
            if let Value::Object(m) = &mut v {
                // An empty Lua table encodes as {}: `cells = {}` means no cells.
                if matches!(m.get("cells"), Some(Value::Object(o)) if o.is_empty()) {
                    m.insert("cells".into(), Value::Array(Vec::new()));
                }
                for c in m.get_mut("cells").and_then(Value::as_array_mut).into_iter().flatten() {
                    for k in ["outputs", "source"] {
                        if matches!(c.get(k), Some(Value::Object(o)) if o.is_empty()) {
                            c[k] = Value::Array(Vec::new());
                        }
                    }
                }
            }
            Notebook::from_value(v).map(LuaNotebook).map_err(|e| misuse(lua, format!("notebook.from_table: {e:#}")))
        })?,
    )?;
    Ok(t)
}
