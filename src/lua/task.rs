//! `task`: run several Lua functions at once (parallel branches), and stop one of them. Each runs as
//! its own coroutine; they interleave at the host's await points (an LLM call, a kernel cell, a sleep),
//! so I/O overlaps while the VM stays on one thread.
//!
//! A canceller (`task.canceller()`) is a stop token: `task.with(c, f, ...)` runs `f` so that every
//! primitive it awaits (LLM requests, kernel cells, sleeps, kernel starts) watches `c` as it watches
//! Ctrl-C. `c:cancel()` makes them return promptly with an `interrupted` error (a running cell is
//! interrupted, an LLM request dropped), so `f` unwinds through its own clean-up (kernels given back)
//! instead of being abandoned. A search uses it to stop the nodes still in flight once it is done.
use mlua::prelude::*;
use tokio_util::sync::CancellationToken;

struct Canceller(CancellationToken);

impl LuaUserData for Canceller {
    fn add_methods<M: LuaUserDataMethods<Self>>(m: &mut M) {
        m.add_method("cancel", |_, this, ()| {
            this.0.cancel();
            Ok(())
        });
        m.add_method("cancelled", |_, this, ()| Ok(this.0.is_cancelled()));
    }
}

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
    // task.canceller() -> c: a stop token under the current one (Ctrl-C, or an enclosing c, stops it too)
    t.set("canceller", lua.create_function(|_, ()| Ok(Canceller(crate::signals::child_token())))?)?;
    // task.with(c, f, ...) -> f's results: f runs with c as its stop token
    t.set(
        "with",
        lua.create_async_function(|_, (c, f, args): (LuaAnyUserData, LuaFunction, LuaMultiValue)| async move {
            let token = c
                .borrow::<Canceller>()
                .map_err(|_| LuaError::runtime("task.with: expected a canceller (task.canceller()) as argument 1"))?
                .0
                .clone();
            crate::signals::scoped(token, f.call_async::<LuaMultiValue>(args)).await
        })?,
    )?;
    // task.cancelled() -> true inside a task.with whose canceller was cancelled (not for Ctrl-C)
    t.set("cancelled", lua.create_function(|_, ()| Ok(crate::signals::scope_cancelled()))?)?;
    Ok(t)
}
