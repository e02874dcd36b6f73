//! `log.progress{total=, label=}`: a progress bar on stderr for long work (cells of a notebook, iterations),
//! hidden when stderr is not a terminal or with -q, so scripts can always call it.
use mlua::prelude::*;

use super::boundary;

/// A progress bar handle: `bar:set(pos, msg?)`, `bar:inc(n?)`, `bar:message(msg)`, `bar:finish()`.
struct Progress(indicatif::ProgressBar);

impl LuaUserData for Progress {
    fn add_methods<M: LuaUserDataMethods<Self>>(m: &mut M) {
        m.add_method("set", |_, this, (pos, msg): (u64, Option<String>)| {
            this.0.set_position(pos);
            if let Some(msg) = msg {
                this.0.set_message(msg);
            }
            Ok(())
        });
        m.add_method("inc", |_, this, n: Option<u64>| {
            this.0.inc(n.unwrap_or(1));
            Ok(())
        });
        m.add_method("message", |_, this, msg: String| {
            this.0.set_message(msg);
            Ok(())
        });
        m.add_method("finish", |_, this, ()| {
            this.0.finish_and_clear();
            Ok(())
        });
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `log.progress{total = n, label = "cells"}` → a bar showing `label pos/total [elapsed] bar message`.
pub fn create(lua: &Lua) -> LuaResult<LuaFunction> {
    lua.create_function(|lua, opts: Option<LuaTable>| {
        let o = boundary::Opts::new(lua, "log.progress", opts, &["total", "label"])?;
        let total = o.u64("total")?.unwrap_or(0);
        let label = o.str("label")?.unwrap_or_default();
        let label = label.replace(['{', '}'], "");
        let bar =
            crate::ui::bar(total, &format!("{{spinner}} {label} {{pos}}/{{len}} [{{elapsed}}] {{wide_bar}} {{msg}}"));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Ok(Progress(bar))
    })
}
