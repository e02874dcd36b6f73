//! `task`: run several Lua functions at once (parallel branches). Each runs as its own coroutine; they
//! interleave at the host's await points (an LLM call, a kernel cell, a sleep), so I/O overlaps while
//! the VM stays on one thread.
use mlua::prelude::*;

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    // task.all({f1, f2, ...}) -> {r1, r2, ...}: waits for all; the first error is raised after all end.
    t.set(
        "all",
        lua.create_async_function(|lua, fs: Vec<LuaFunction>| async move {
            let results = futures_util::future::join_all(
                fs.into_iter().map(|f| async move { f.call_async::<LuaValue>(()).await }),
            )
            .await;
            let out = lua.create_table()?;
            for (i, r) in results.into_iter().enumerate() {
                out.raw_set(i + 1, r?)?;
            }
            Ok(out)
        })?,
    )?;
    Ok(t)
}
