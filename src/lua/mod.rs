//! The Lua runtime: one VM on one thread, the host's modules registered from one ordered list, module
//! lookup (user folders, then the project's `scripts/` and `stdlib/`, then the embedded copies), chunk
//! names that make tracebacks read `stdlib/retry.lua:12:`, and the instruction hook that lets Ctrl-C
//! stop a script stuck in a CPU loop.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use mlua::prelude::*;

use crate::lua::ctx::HostCtx;

pub mod boundary;
pub mod ctx;
pub mod embedded;
pub mod env;
pub mod fs;
pub mod host;
pub mod json;
pub mod kernel;
pub mod llm;
pub mod log;
pub mod notebook;
pub mod path;
pub mod progress;
pub mod reload;
pub mod report;
pub mod task;
pub mod time;
pub mod yaml;

/// Builds a module's table; `require(name)` returns it.
pub type Register = fn(&Lua) -> LuaResult<LuaTable>;

/// Every module the host provides, in registration order: `require(name)` returns `register(lua)`.
/// This list is the whole Rust → Lua API surface.
pub const MODULES: &[(&str, Register)] = &[
    ("json", json::register),
    ("yaml", yaml::register),
    ("fs", fs::register),
    ("path", path::register),
    ("log", log::register),
    ("time", time::register),
    ("env", env::register),
    ("task", task::register),
    ("host", host::register),
    ("llm", llm::register),
    ("notebook", notebook::register),
    ("kernel", kernel::register),
    ("report", report::register),
];

// What the searcher loaded, and from where: the reloader's own registry (it watches those files).
pub use reload::{LoadedModules, ModuleSource};

pub struct Runtime {
    pub lua: Lua,
}

pub use crate::files::display_path;

/// Find the source of module `name`: (source text, chunk name, file if real).
pub fn find_module(ctx: &HostCtx, name: &str) -> Option<(String, ModuleSource)> {
    let rel = name.replace('.', "/");
    for dir in ctx.search_dirs() {
        for cand in [dir.join(format!("{rel}.lua")), dir.join(&rel).join("init.lua")] {
            if cand.is_file() {
                let text = std::fs::read_to_string(&cand).ok()?;
                let chunk = display_path(&cand);
                return Some((text, ModuleSource { file: Some(cand), chunk }));
            }
        }
    }
    for top in ["scripts", "stdlib"] {
        for cand in [format!("{top}/{rel}.lua"), format!("{top}/{rel}/init.lua")] {
            if let Some(text) = crate::lua::embedded::get(&cand) {
                return Some((text.into_owned(), ModuleSource { file: None, chunk: cand }));
            }
        }
    }
    None
}

/// Compile a module's source under its chunk name.
pub fn compile(lua: &Lua, text: &str, chunk: &str) -> LuaResult<LuaFunction> {
    lua.load(text).set_name(format!("@{chunk}")).into_function()
}

impl Runtime {
    /// A fresh VM with every host module registered and the module searcher installed.
    pub fn new(ctx: HostCtx) -> Result<Runtime> {
        let lua = Lua::new();
        lua.set_app_data(Arc::new(ctx));
        reload::install(&lua);
        boundary::remember_array_metatable(&lua);
        let package: LuaTable = lua.globals().get("package")?;
        let preload: LuaTable = package.get("preload")?;
        for (name, register) in MODULES {
            preload.set(*name, lua.create_function(move |lua, ()| register(lua))?)?;
        }
        let preload_searcher: LuaFunction = package.get::<LuaTable>("searchers")?.get(1)?;
        let searcher = lua.create_function(|lua, name: String| {
            let ctx = HostCtx::get(lua);
            match find_module(&ctx, &name) {
                Some((text, src)) => {
                    let f = compile(lua, &text, &src.chunk)?;
                    let chunk = src.chunk.clone();
                    // the reloader records the module and watches its file
                    reload::on_require(lua, &name, src);
                    (f, chunk).into_lua_multi(lua)
                }
                None => format!(
                    "\n\tno module '{name}' in {} or the bundled scripts",
                    ctx.search_dirs().iter().map(|d| display_path(d)).collect::<Vec<_>>().join(", ")
                )
                .into_lua_multi(lua),
            }
        })?;
        package.set("searchers", lua.create_sequence_from([preload_searcher, searcher])?)?;
        // print: tab-separated like Lua's, through ui::line (no torn progress bars), and with the API key
        // masked like every other output.
        let print = lua.create_function(|lua, args: LuaMultiValue| {
            let tostring: LuaFunction = lua.globals().get("tostring")?;
            let parts = args.iter().map(|v| tostring.call::<String>(v.clone())).collect::<LuaResult<Vec<_>>>()?;
            // free text: each of its lines guarded, no runner marker (log.line prints those)
            crate::ui::plain(&HostCtx::get(lua).secret.mask(&parts.join("\t")));
            Ok(())
        })?;
        lua.globals().set("print", print)?;
        // A CPU-bound script never reaches an await point, so Ctrl-C is delivered by the hook.
        // set_global_hook (not set_hook) so the coroutines of async calls are covered too.
        let delivered = std::sync::atomic::AtomicBool::new(false);
        lua.set_global_hook(LuaHookTriggers::new().every_nth_instruction(10_000), move |_, debug| {
            if crate::signals::interrupted() && !delivered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // Say where the script was, so a user who stopped a runaway loop finds it.
                let src = debug.source();
                let at = match (src.short_src, debug.current_line()) {
                    (Some(f), Some(l)) => format!("{f}:{l}: "),
                    _ => String::new(),
                };
                return Err(LuaError::runtime(format!("{at}interrupted (Ctrl-C)")));
            }
            Ok(LuaVmState::Continue)
        })?;
        Ok(Runtime { lua })
    }

    pub fn ctx(&self) -> Arc<HostCtx> {
        HostCtx::get(&self.lua)
    }

    /// Run a Lua file with `arg` set (`arg[0]` the script, `arg[1..]` the arguments).
    pub async fn run_file(&self, path: &Path, args: &[String]) -> Result<LuaMultiValue> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read script {}", path.display()))?;
        let arg = self.lua.create_table()?;
        arg.set(0, path.display().to_string())?;
        for (i, a) in args.iter().enumerate() {
            arg.set(i + 1, a.as_str())?;
        }
        self.lua.globals().set("arg", arg)?;
        let f = compile(&self.lua, &text, &display_path(path))?;
        Ok(f.call_async::<LuaMultiValue>(()).await?)
    }

    /// Call `require("pipeline")[command](opts)`.
    pub async fn run_pipeline(&self, command: &str, opts: serde_json::Value) -> Result<LuaMultiValue> {
        let require: LuaFunction = self.lua.globals().get("require")?;
        let pipeline: LuaTable = require.call_async("pipeline").await?;
        let f: LuaFunction = pipeline
            .get::<Option<LuaFunction>>(command)?
            .with_context(|| format!("scripts/pipeline.lua has no function '{command}'"))?;
        let opts = boundary::to_lua(&self.lua, &opts)?;
        Ok(f.call_async::<LuaMultiValue>(opts).await?)
    }
}

/// The exit code a script asks for with its return value: a number is the code, `false` is 1,
/// anything else (nil, true, a table) is 0.
pub fn exit_code_of(ret: &LuaMultiValue) -> u8 {
    match ret.iter().next() {
        Some(LuaValue::Integer(n)) => (*n).clamp(0, 255) as u8,
        Some(LuaValue::Number(n)) => n.clamp(0.0, 255.0) as u8,
        Some(LuaValue::Boolean(false)) => crate::exit::EXIT_NOT_MET,
        _ => crate::exit::EXIT_OK,
    }
}

/// A readable message for an error that came out of Lua: the message with its file:line, and the
/// traceback only when asked for.
pub fn describe_error(e: &anyhow::Error, verbose: bool) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let s = if verbose { s } else { without_traceback(&s) };
        // mlua's "runtime error: " prefix says nothing to a user; the file:line after it does.
        let s = s.strip_prefix("runtime error: ").map(str::to_string).unwrap_or(s);
        if !parts.iter().any(|p: &String| p.contains(s.trim())) {
            parts.push(s.trim().to_string());
        }
    }
    parts.join("\n  caused by: ")
}

/// The message without its traceback. mlua's own argument and option conversion errors ("bad argument #1:
/// error converting Lua nil to String") name neither the function nor the script line: both are taken
/// from the traceback.
fn without_traceback(s: &str) -> String {
    let Some((msg, tb)) = s.split_once("\nstack traceback:") else { return s.to_string() };
    let rest = msg.strip_prefix("runtime error: ").unwrap_or(msg);
    if !rest.starts_with("bad argument") && !rest.starts_with("error converting Lua") {
        return msg.to_string();
    }
    let lines = || tb.lines().map(str::trim).filter(|l| !l.is_empty());
    let func = lines().find_map(|l| l.strip_prefix("[C]: in function '")?.strip_suffix('\''));
    let at = lines().find(|l| !l.starts_with("[C]")).and_then(|l| l.split_once(": in ")).map(|(loc, _)| loc);
    match (at, func) {
        (Some(at), Some(f)) => format!("{at}: {f}: {rest}"),
        (Some(at), None) => format!("{at}: {rest}"),
        _ => msg.to_string(),
    }
}
