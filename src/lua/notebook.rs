//! The `notebook` module: Jupyter notebooks as handles (`nb`) with 1-based cell indices.
//!
//! `nb.metadata` is a live view: `nb.metadata.execution.x = y` changes the notebook (as does assigning a
//! whole table to `nb.metadata`). `nb:cell(i)` is a read-only view of the cell: assigning to it raises
//! and says to use `nb:set_source` / `nb:set_outputs` (a write to a copy that silently did nothing was
//! the old behaviour). Both read like tables (`pairs`, `ipairs`, `#`, `json.encode`). Reading a missing
//! or invalid file returns `nil, err`; a bad index or a malformed cell is misuse and raises.

use mlua::prelude::*;
use serde_json::{Map, Value};

use super::boundary::{fail, from_lua_checked, misuse, to_lua};
use crate::notebook::Notebook;

pub struct LuaNotebook(pub Notebook);

/// Views over a notebook's JSON (see the module doc). `make(get, set, path, readonly)`: `get()` gives a
/// fresh plain copy of the root, `set(root)` stores one; a view reads through `get` and writes through
/// `set`, or raises `readonly` (a message) on a write. `__cellsci_plain` lets the host turn a view back
/// into its value (boundary::from_lua does).
const VIEWS: &str = r#"
local make
local function append(path, k)
  local p = { table.unpack(path) }
  p[#p + 1] = k
  return p
end
local function resolve(v, path)
  for _, k in ipairs(path) do
    if type(v) ~= "table" then return nil end
    v = v[k]
  end
  return v
end
local function plain(v)
  if type(v) ~= "table" then return v end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__cellsci_plain then return mt.__cellsci_plain() end
  local out = {}
  for k, x in pairs(v) do out[k] = plain(x) end
  -- a JSON array keeps its (protected) array mark, so an empty one stays an array
  if mt ~= nil and type(mt) ~= "table" then out = require("json").array(out) end
  return out
end
make = function(get, set, path, readonly)
  local mt = {}
  local function here() return resolve(get(), path) end
  mt.__index = function(_, k)
    local v = here()
    if type(v) ~= "table" then return nil end
    v = v[k]
    if type(v) == "table" then return make(get, set, append(path, k), readonly) end
    return v
  end
  mt.__newindex = function(_, k, v)
    if readonly then error(readonly, 2) end
    local root = get()
    local t = root
    for _, key in ipairs(path) do
      if type(t[key]) ~= "table" then t[key] = {} end
      t = t[key]
    end
    t[k] = plain(v)
    set(root)
  end
  mt.__pairs = function()
    local v = here()
    if type(v) ~= "table" then v = {} end
    local key
    return function()
      local val
      key, val = next(v, key)
      if type(val) == "table" then val = make(get, set, append(path, key), readonly) end
      return key, val
    end
  end
  mt.__len = function()
    local v = here()
    return type(v) == "table" and #v or 0
  end
  mt.__cellsci_plain = function() return plain(here()) end
  return setmetatable({}, mt)
end
return make
"#;

/// The view maker (loaded once per VM).
fn views(lua: &Lua) -> LuaResult<LuaFunction> {
    const KEY: &str = "cellsci.notebook.views";
    if let Ok(f) = lua.named_registry_value::<LuaFunction>(KEY) {
        return Ok(f);
    }
    let f: LuaFunction = lua.load(VIEWS).set_name("=<notebook views>").call(())?;
    lua.set_named_registry_value(KEY, &f)?;
    Ok(f)
}

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
        fields.add_field_function_get("metadata", |lua, ud: LuaAnyUserData| {
            let (g, s) = (ud.clone(), ud);
            let get = lua.create_function(move |lua, ()| to_lua(lua, g.borrow::<LuaNotebook>()?.0.metadata()))?;
            let set = lua.create_function(move |lua, v: LuaValue| {
                let m = from_lua_checked(lua, &v, "nb.metadata")?;
                s.borrow_mut::<LuaNotebook>()?.0.set_metadata(m).map_err(|e| misuse(lua, e))
            })?;
            views(lua)?.call::<LuaValue>((get, set, lua.create_table()?, LuaValue::Nil))
        });
        // The value is read before the notebook is borrowed: it may be a view of this very notebook.
        fields.add_field_function_set("metadata", |lua, ud: LuaAnyUserData, v: LuaValue| {
            let mut m = from_lua_checked(lua, &v, "nb.metadata")?;
            if matches!(&m, Value::Array(a) if a.is_empty()) || m.is_null() {
                m = Value::Object(Map::new());
            }
            ud.borrow_mut::<LuaNotebook>()?.0.set_metadata(m).map_err(|e| misuse(lua, e))
        });
    }

    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.0.len()));
        methods.add_meta_method(LuaMetaMethod::Len, |_, this, ()| Ok(this.0.len()));
        methods.add_method("cell", |lua, this, i: i64| {
            let i = index(lua, &this.0, i, false)?;
            let copy = to_lua(lua, &this.0.cell_joined(i).unwrap_or(Value::Null))?;
            let get = lua.create_function(move |_, ()| Ok(copy.clone()))?;
            let msg = format!(
                "nb:cell({}) is a read-only view of the cell: change it with nb:set_source({0}, src), \
                 nb:set_outputs({0}, result) or nb:remove/nb:insert",
                i + 1
            );
            views(lua)?.call::<LuaValue>((get, LuaValue::Nil, lua.create_table()?, msg))
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
