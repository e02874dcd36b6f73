//! Hot reload of `require`d Lua modules (skeleton: filled in by the host issue).
use mlua::prelude::*;

/// The safe point: swap in edited modules that load cleanly; keep the previous version otherwise.
/// Returns the list of module names reloaded.
pub fn reload(lua: &Lua) -> LuaResult<LuaTable> {
    lua.create_table()
}
