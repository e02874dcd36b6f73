//! Helpers every module uses at the boundary: the two tiers of failure (expected → `nil, err`;
//! misuse → raise with the script's file:line), strict option tables, and JSON ↔ Lua conversion.

use mlua::prelude::*;
use serde_json::Value;

/// `file:line` of the innermost Lua function on the stack (the script that called into Rust).
pub fn caller_location(lua: &Lua) -> Option<String> {
    for level in 0..12 {
        let found = lua.inspect_stack(level, |d| {
            let src = d.source();
            let name = src.short_src.map(|s| s.to_string()).unwrap_or_default();
            // mlua's own chunk that polls an async function is not the script
            if src.what == "C" || name.starts_with("__mlua") {
                return None;
            }
            let line = d.current_line().map(|l| l.to_string()).unwrap_or_else(|| "?".into());
            Some(format!("{name}:{line}"))
        });
        match found {
            None => return None, // ran off the stack
            Some(Some(loc)) => return Some(loc),
            Some(None) => continue,
        }
    }
    None
}

/// A misuse error (wrong argument, unknown option): raised, prefixed with the script's file:line.
pub fn misuse(lua: &Lua, msg: impl std::fmt::Display) -> LuaError {
    match caller_location(lua) {
        Some(loc) => LuaError::runtime(format!("{loc}: {msg}")),
        None => LuaError::runtime(msg.to_string()),
    }
}

/// The error table of an expected failure: `{kind=, message=}` (+ extra fields), printable.
pub fn err_table(lua: &Lua, kind: &str, message: &str, extra: Option<&Value>) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    if let Some(Value::Object(m)) = extra {
        for (k, v) in m {
            t.set(k.as_str(), to_lua(lua, v)?)?;
        }
    }
    t.set("kind", kind)?;
    t.set("message", message)?;
    t.set_metatable(Some(error_metatable(lua)?))?;
    Ok(t)
}

fn error_metatable(lua: &Lua) -> LuaResult<LuaTable> {
    const KEY: &str = "cellsci.error_mt";
    if let Ok(mt) = lua.named_registry_value::<LuaTable>(KEY) {
        return Ok(mt);
    }
    let mt = lua.create_table()?;
    mt.set(
        "__tostring",
        lua.create_function(|_, t: LuaTable| {
            let kind: String = t.get::<Option<String>>("kind")?.unwrap_or_default();
            let msg: String = t.get::<Option<String>>("message")?.unwrap_or_default();
            Ok(format!("{kind}: {msg}"))
        })?,
    )?;
    lua.set_named_registry_value(KEY, &mt)?;
    Ok(mt)
}

/// Return `nil, err` for an expected failure.
pub fn fail(lua: &Lua, kind: &str, message: impl AsRef<str>) -> LuaResult<(LuaValue, LuaValue)> {
    Ok((LuaValue::Nil, LuaValue::Table(err_table(lua, kind, message.as_ref(), None)?)))
}

/// Return `nil, err` with extra fields on the error table.
pub fn fail_with(lua: &Lua, kind: &str, message: impl AsRef<str>, extra: &Value) -> LuaResult<(LuaValue, LuaValue)> {
    Ok((LuaValue::Nil, LuaValue::Table(err_table(lua, kind, message.as_ref(), Some(extra))?)))
}

/// A string argument, else raise `{func}: expected {what}, got <type>` with the script's file:line.
/// (`what` says what the string stands for: "a path string", "the reply text (a string)"...)
pub fn string_arg(lua: &Lua, v: &LuaValue, func: &str, what: &str) -> LuaResult<LuaString> {
    match v {
        LuaValue::String(s) => Ok(s.clone()),
        other => Err(misuse(lua, format!("{func}: expected {what}, got {}", other.type_name()))),
    }
}

/// An options table, read one way in every module: unknown keys are refused when it is opened, and each
/// getter raises `{func}: option '{key}': expected {what}, got {type}` with the script's file:line.
/// A missing table reads as empty; `nil` (or JSON null) for a key is "not given".
pub struct Opts<'a> {
    lua: &'a Lua,
    func: &'a str,
    table: Option<LuaTable>,
}

impl<'a> Opts<'a> {
    /// Open `table` (a Lua table or nil) for `func`, refusing keys not in `allowed`.
    pub fn new(lua: &'a Lua, func: &'a str, table: Option<LuaTable>, allowed: &[&str]) -> LuaResult<Opts<'a>> {
        if let Some(t) = &table {
            check_opts(lua, t, func, allowed)?;
        }
        Ok(Opts { lua, func, table })
    }

    /// A table whose keys were checked already (by `new` at the function's entry), read by a helper.
    pub fn checked(lua: &'a Lua, func: &'a str, table: Option<LuaTable>) -> Opts<'a> {
        Opts { lua, func, table }
    }

    /// Open a value that must be an options table (or nil).
    pub fn from_value(lua: &'a Lua, func: &'a str, v: LuaValue, allowed: &[&str]) -> LuaResult<Opts<'a>> {
        match v {
            LuaValue::Nil => Opts::new(lua, func, None, allowed),
            LuaValue::Table(t) => Opts::new(lua, func, Some(t), allowed),
            other => Err(misuse(lua, format!("{func}: expected a table of options, got {}", other.type_name()))),
        }
    }

    fn wrong(&self, key: &str, what: &str, got: &LuaValue) -> LuaError {
        self.invalid(key, what, got.type_name())
    }

    /// The error for a value of the right type that is still wrong: `{func}: option '{key}': expected
    /// {what}, got {got}` with the script's file:line.
    pub fn invalid(&self, key: &str, what: &str, got: impl std::fmt::Display) -> LuaError {
        misuse(self.lua, format!("{}: option '{key}': expected {what}, got {got}", self.func))
    }

    /// The raw value (nil when not given).
    pub fn value(&self, key: &str) -> LuaResult<LuaValue> {
        match &self.table {
            Some(t) => match t.get::<LuaValue>(key)? {
                LuaValue::LightUserData(u) if u.0.is_null() => Ok(LuaValue::Nil),
                v => Ok(v),
            },
            None => Ok(LuaValue::Nil),
        }
    }

    pub fn str(&self, key: &str) -> LuaResult<Option<String>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::String(s) => Ok(Some(s.to_string_lossy())),
            other => Err(self.wrong(key, "a string", &other)),
        }
    }

    /// A finite number.
    pub fn f64(&self, key: &str) -> LuaResult<Option<f64>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::Integer(i) => Ok(Some(i as f64)),
            LuaValue::Number(x) if x.is_finite() => Ok(Some(x)),
            other => Err(self.wrong(key, "a finite number", &other)),
        }
    }

    /// A number > 0 (seconds, sizes).
    pub fn positive(&self, key: &str) -> LuaResult<Option<f64>> {
        match self.f64(key)? {
            Some(x) if x <= 0.0 => Err(self.invalid(key, "a positive number", x)),
            v => Ok(v),
        }
    }

    /// One of the strings in `choices`.
    pub fn choice(&self, key: &str, choices: &[&str]) -> LuaResult<Option<String>> {
        match self.str(key)? {
            Some(s) if !choices.contains(&s.as_str()) => {
                let want: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
                Err(self.invalid(key, &want.join(" or "), format!("{s:?}")))
            }
            v => Ok(v),
        }
    }

    /// A whole number >= 0.
    pub fn u64(&self, key: &str) -> LuaResult<Option<u64>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::Integer(i) if i >= 0 => Ok(Some(i as u64)),
            LuaValue::Number(x) if x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 => Ok(Some(x as u64)),
            other => Err(self.wrong(key, "a whole number >= 0", &other)),
        }
    }

    pub fn bool(&self, key: &str) -> LuaResult<Option<bool>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::Boolean(b) => Ok(Some(b)),
            other => Err(self.wrong(key, "true or false", &other)),
        }
    }

    pub fn table(&self, key: &str) -> LuaResult<Option<LuaTable>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::Table(t) => Ok(Some(t)),
            other => Err(self.wrong(key, "a table", &other)),
        }
    }

    pub fn function(&self, key: &str) -> LuaResult<Option<LuaFunction>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::Function(f) => Ok(Some(f)),
            other => Err(self.wrong(key, "a function", &other)),
        }
    }

    /// A list of strings (a single string counts as a list of one).
    pub fn strings(&self, key: &str) -> LuaResult<Option<Vec<String>>> {
        match self.value(key)? {
            LuaValue::Nil => Ok(None),
            LuaValue::String(s) => Ok(Some(vec![s.to_string_lossy()])),
            LuaValue::Table(t) => {
                let mut out = Vec::new();
                for v in t.sequence_values::<LuaValue>() {
                    match v? {
                        LuaValue::String(s) => out.push(s.to_string_lossy()),
                        other => return Err(self.wrong(key, "a list of strings", &other)),
                    }
                }
                Ok(Some(out))
            }
            other => Err(self.wrong(key, "a list of strings", &other)),
        }
    }

    /// A table of string keys to string values (an environment): numbers are written out, `true` and
    /// `false` become `"1"` and `"0"`.
    pub fn string_map(&self, key: &str) -> LuaResult<Option<Vec<(String, String)>>> {
        let Some(t) = self.table(key)? else { return Ok(None) };
        let mut out = Vec::new();
        for pair in t.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair?;
            let k = match k {
                LuaValue::String(s) => s.to_string_lossy(),
                other => return Err(self.wrong(key, "a table of string keys", &other)),
            };
            let v = match v {
                LuaValue::String(s) => s.to_string_lossy(),
                LuaValue::Integer(i) => i.to_string(),
                LuaValue::Number(x) => x.to_string(),
                LuaValue::Boolean(b) => if b { "1" } else { "0" }.to_string(),
                other => return Err(self.wrong(&format!("{key}.{k}"), "a string", &other)),
            };
            out.push((k, v));
        }
        Ok(Some(out))
    }
}

/// Check an options table: every key must be one of `allowed`, else raise naming the key and the
/// script's file:line.
pub fn check_opts(lua: &Lua, opts: &LuaTable, func: &str, allowed: &[&str]) -> LuaResult<()> {
    for pair in opts.pairs::<LuaValue, LuaValue>() {
        let (k, _) = pair?;
        let key = match &k {
            LuaValue::String(s) => s.to_string_lossy(),
            other => {
                return Err(misuse(lua, format!("{func}: option keys must be strings, got {}", other.type_name())))
            }
        };
        if !allowed.contains(&key.as_str()) {
            return Err(misuse(lua, format!("{func}: unknown option '{key}' (known: {})", allowed.join(", "))));
        }
    }
    Ok(())
}

/// JSON → Lua. Object members that are null are left out (so `t.x == nil`); nulls inside arrays become
/// `json.null` so positions are kept; Python's NaN/Infinity markers become floats. Arrays get the
/// array metatable so they encode back as arrays even when empty.
pub fn to_lua(lua: &Lua, v: &Value) -> LuaResult<LuaValue> {
    Ok(match v {
        Value::Null => LuaValue::NULL,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => match crate::pyjson::non_finite(s) {
            Some(x) => LuaValue::Number(x),
            None => LuaValue::String(lua.create_string(s)?),
        },
        Value::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, x)?)?;
            }
            t.set_metatable(Some(lua.array_metatable()))?;
            LuaValue::Table(t)
        }
        Value::Object(m) => {
            let t = lua.create_table_with_capacity(0, m.len())?;
            for (k, x) in m {
                if !x.is_null() {
                    t.raw_set(k.as_str(), to_lua(lua, x)?)?;
                }
            }
            LuaValue::Table(t)
        }
    })
}

/// Lua → JSON. A table is an array when it has the array metatable or its keys are exactly 1..n
/// (n > 0); an empty plain table is an object. Non-finite floats become the NaN/Infinity markers.
/// Functions, threads and userdata (other than `json.null`) are errors that name the key path.
pub fn from_lua(v: &LuaValue) -> Result<Value, String> {
    from_lua_at(v, "", 0)
}

fn from_lua_at(v: &LuaValue, path: &str, depth: usize) -> Result<Value, String> {
    if depth > 200 {
        return Err(format!("table nested too deeply (a cycle?) at '{path}'"));
    }
    let here = |p: &str| if p.is_empty() { "the top level".to_string() } else { format!("'{p}'") };
    Ok(match v {
        LuaValue::Nil => Value::Null,
        LuaValue::LightUserData(u) if u.0.is_null() => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(*b),
        LuaValue::Integer(i) => Value::from(*i),
        LuaValue::Number(x) => {
            if x.fract() == 0.0 && x.abs() < 9.0e15 {
                // keep 3.0 a float in JSON: Lua makes 3.0 from 6/2 and the writer meant a number
                serde_json::Number::from_f64(*x).map(Value::Number).unwrap_or(Value::Null)
            } else {
                crate::pyjson::from_f64(*x)
            }
        }
        LuaValue::String(s) => Value::String(s.to_string_lossy()),
        LuaValue::Table(t) => {
            // a view over a host value (nb.metadata, nb:cell(i)) stands for the value it shows
            if let Some(plain) =
                t.metatable().and_then(|mt| mt.raw_get::<Option<LuaFunction>>("__cellsci_plain").ok().flatten())
            {
                let v = plain.call::<LuaValue>(()).map_err(|e| format!("{}: {e}", here(path)))?;
                return from_lua_at(&v, path, depth + 1);
            }
            let is_array_mt = is_array_metatable(t);
            let len = t.raw_len();
            let mut count = 0usize;
            let mut all_int = true;
            for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                let (k, _) = pair.map_err(|e| e.to_string())?;
                count += 1;
                if !matches!(k, LuaValue::Integer(i) if i >= 1 && (i as usize) <= len) {
                    all_int = false;
                }
            }
            if is_array_mt || (count > 0 && all_int && count == len) {
                let mut a = Vec::with_capacity(len);
                for i in 1..=len {
                    let x: LuaValue = t.raw_get(i).map_err(|e| e.to_string())?;
                    a.push(from_lua_at(&x, &format!("{path}[{i}]"), depth + 1)?);
                }
                Value::Array(a)
            } else {
                let mut m = serde_json::Map::new();
                for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                    let (k, x) = pair.map_err(|e| e.to_string())?;
                    let key = match &k {
                        LuaValue::String(s) => s.to_string_lossy(),
                        LuaValue::Integer(i) => i.to_string(),
                        LuaValue::Number(n) => n.to_string(),
                        other => return Err(format!("cannot encode a {} key at {}", other.type_name(), here(path))),
                    };
                    let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    m.insert(key, from_lua_at(&x, &sub, depth + 1)?);
                }
                Value::Object(m)
            }
        }
        other => return Err(format!("cannot encode a {} at {}", other.type_name(), here(path))),
    })
}

thread_local! {
    static ARRAY_MT: std::cell::RefCell<Option<LuaTable>> = const { std::cell::RefCell::new(None) };
}

fn is_array_metatable(t: &LuaTable) -> bool {
    let Some(mt) = t.metatable() else { return false };
    ARRAY_MT.with(|cell| cell.borrow().as_ref().is_some_and(|a| a == &mt))
}

/// Remember the VM's array metatable (called once by the runtime) so `from_lua` can recognise it.
pub fn remember_array_metatable(lua: &Lua) {
    ARRAY_MT.with(|cell| *cell.borrow_mut() = Some(lua.array_metatable()));
}

/// Convert with a `misuse` error naming the script location on failure.
pub fn from_lua_checked(lua: &Lua, v: &LuaValue, what: &str) -> LuaResult<Value> {
    from_lua(v).map_err(|e| misuse(lua, format!("{what}: {e}")))
}
