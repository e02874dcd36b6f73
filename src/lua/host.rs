//! `host`: the config as a table, and `reload()`, the safe point where edited scripts are swapped in.
use mlua::prelude::*;

use super::util;
use crate::host::HostCtx;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    let ctx = HostCtx::get(lua);
    match &ctx.config {
        Some(c) => t.set("config", util::to_lua(lua, &c.value)?)?,
        None => t.set("config", lua.create_table()?)?,
    }
    // host.reload() -> names, errors (see crate::reload)
    t.set("reload", lua.create_function(|lua, ()| crate::reload::reload_lua(lua))?)?;
    t.set("version", env!("CARGO_PKG_VERSION"))?;
    t.set("interrupted", lua.create_function(|_, ()| Ok(crate::signals::interrupted()))?)?;
    Ok(t)
}
