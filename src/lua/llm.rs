//! The `llm` module (skeleton: filled in by its own issue).
use mlua::prelude::*;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    lua.create_table()
}
