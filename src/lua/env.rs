//! `env`: environment variables. `env.set` changes cellsci's own environment, which every child process
//! started afterwards (kernels, tools) inherits.
use mlua::prelude::*;

use super::boundary;

fn name_arg(lua: &Lua, func: &str, v: &LuaValue) -> LuaResult<String> {
    let n = boundary::string_arg(lua, v, func, "a variable name")?.to_str()?.to_string();
    if n.is_empty() || n.contains(['=', '\0']) {
        return Err(boundary::misuse(lua, format!("{func}: '{n}' is not a valid variable name")));
    }
    Ok(n)
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // env.get(name, default?) -> string | default | nil
    t.set(
        "get",
        lua.create_function(|lua, (name, default): (LuaValue, LuaValue)| {
            let name = name_arg(lua, "env.get", &name)?;
            match std::env::var_os(&name) {
                Some(v) => Ok(LuaValue::String(lua.create_string(v.as_encoded_bytes())?)),
                None => Ok(default),
            }
        })?,
    )?;
    // env.set(name, value | nil): value a string or number; nil removes the variable
    t.set(
        "set",
        lua.create_function(|lua, (name, value): (LuaValue, LuaValue)| {
            let name = name_arg(lua, "env.set", &name)?;
            // set_var races with a getenv on another thread at the same instant (glibc). Child processes are
            // spawned from this thread, which is what env.set is for; the small remaining risk is accepted
            // because an overlay applied at every spawn site would be easy to forget.
            match value {
                LuaValue::Nil => std::env::remove_var(&name),
                LuaValue::String(s) => {
                    let v = s.to_str()?.to_string();
                    if v.contains('\0') {
                        return Err(boundary::misuse(lua, "env.set: the value contains a NUL byte"));
                    }
                    std::env::set_var(&name, v)
                }
                v @ (LuaValue::Integer(_) | LuaValue::Number(_)) => std::env::set_var(&name, v.to_string()?),
                other => {
                    return Err(boundary::misuse(
                        lua,
                        format!("env.set: expected a string, number or nil, got {}", other.type_name()),
                    ))
                }
            }
            Ok(())
        })?,
    )?;
    // env.all() -> {NAME = value, ...}
    t.set(
        "all",
        lua.create_function(|lua, ()| {
            let t = lua.create_table()?;
            for (k, v) in std::env::vars_os() {
                t.set(lua.create_string(k.as_encoded_bytes())?, lua.create_string(v.as_encoded_bytes())?)?;
            }
            Ok(t)
        })?,
    )?;
    Ok(t)
}
