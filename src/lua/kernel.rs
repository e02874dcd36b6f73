//! The `kernel` module: Jupyter kernels as handles (`k`); execution results as plain tables.
//!
//! Expected failures return `nil, err`: a kernel that cannot start (`err.kind == "start"`), Ctrl-C
//! during an execution (`"interrupted"`). An exception in a cell, a timeout or a dead kernel is not a
//! failure of the call: `k:execute` returns a result whose `status` says what happened.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use mlua::prelude::*;
use serde_json::{json, Value};

use super::boundary::{self, check_opts, fail, from_lua_checked, misuse, to_lua};
use crate::kernel::{ExecOptions, Interrupter, Kernel, KernelError, KernelSpec, StartOptions};
use crate::lua::ctx::HostCtx;

pub struct LuaKernel {
    kernel: Rc<tokio::sync::Mutex<Kernel>>,
    interrupter: Interrupter,
    name: String,
}

fn spec_json(s: &KernelSpec) -> Value {
    json!({
        "name": s.name,
        "display_name": s.display_name,
        "language": s.language,
        "argv": s.argv,
        "resource_dir": s.resource_dir.as_ref().map(|p| p.display().to_string()),
        "interrupt_mode": match s.interrupt_mode { crate::kernel::InterruptMode::Signal => "signal", _ => "message" },
        "env": s.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
    })
}

fn secs(lua: &Lua, v: Option<f64>, what: &str) -> LuaResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x > 0.0 => Ok(Some(crate::duration_secs(x))),
        Some(x) => Err(misuse(lua, format!("{what} must be a positive number of seconds, got {x}"))),
    }
}

/// The config's `exec.python`, a relative path with a folder in it resolved against the current folder
/// at load time (as every relative path of the config is).
fn config_python(cfg: &crate::config::Config) -> Option<PathBuf> {
    let py = cfg.exec.extra.get("python").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let p = PathBuf::from(py);
    Some(if p.is_relative() && py.contains('/') { cfg.base.join(p) } else { p })
}

/// Start options from the config (`exec.kernel_name`, `exec.python`, `exec.kernel_packages`) and the
/// script's option table, which wins.
fn start_options(lua: &Lua, opts: Option<LuaTable>) -> LuaResult<StartOptions> {
    let mut so = StartOptions::default();
    let ctx = HostCtx::get(lua);
    if let Some(cfg) = &ctx.config {
        so.name = Some(cfg.exec.kernel_name.clone()).filter(|s| !s.is_empty());
        so.python = config_python(cfg);
        so.packages = cfg.exec.kernel_packages.clone();
        if let Some(t) = cfg.exec.extra.get("transport").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            so.transport = t.parse().map_err(|e| misuse(lua, format!("config exec.transport: {e}")))?;
        }
    }
    so.secrets.extend(ctx.secret.expose().map(str::to_string));
    let Some(t) = opts else { return Ok(so) };
    check_opts(
        lua,
        &t,
        "kernel.start",
        &["name", "python", "packages", "cwd", "env", "startup_timeout", "interrupt_grace", "transport"],
    )?;
    if let Some(n) = t.get::<Option<String>>("name")? {
        so.name = Some(n);
        so.python = None;
    }
    if let Some(p) = t.get::<Option<String>>("python")? {
        so.python = Some(PathBuf::from(p));
    }
    if let Some(p) = t.get::<Option<LuaValue>>("packages")? {
        so.packages = match from_lua_checked(lua, &p, "kernel.start packages")? {
            Value::Array(a) => {
                a.iter().map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).collect()
            }
            Value::Object(o) if o.is_empty() => Vec::new(),
            Value::String(s) => vec![s],
            _ => return Err(misuse(lua, "kernel.start: packages must be a list of pip requirement strings")),
        };
    }
    if let Some(c) = t.get::<Option<String>>("cwd")? {
        so.cwd = Some(std::path::absolute(&c).unwrap_or_else(|_| PathBuf::from(c)));
    }
    if let Some(e) = t.get::<Option<LuaTable>>("env")? {
        for pair in e.pairs::<String, LuaValue>() {
            let (k, v) = pair?;
            let v = match v {
                LuaValue::String(s) => s.to_string_lossy(),
                LuaValue::Integer(i) => i.to_string(),
                LuaValue::Number(n) => n.to_string(),
                LuaValue::Boolean(b) => {
                    if b {
                        "1".into()
                    } else {
                        "0".into()
                    }
                }
                other => {
                    return Err(misuse(
                        lua,
                        format!("kernel.start: env.{k} must be a string, not {}", other.type_name()),
                    ))
                }
            };
            so.env.push((k, v));
        }
        so.env.sort();
    }
    if let Some(tr) = t.get::<Option<String>>("transport")? {
        so.transport = tr.parse().map_err(|e| misuse(lua, format!("kernel.start: {e}")))?;
    }
    if let Some(s) = secs(lua, t.get("startup_timeout")?, "startup_timeout")? {
        so.startup_timeout = s;
    }
    if let Some(s) = secs(lua, t.get("interrupt_grace")?, "interrupt_grace")? {
        so.interrupt_grace = s;
    }
    Ok(so)
}

fn interrupted_err(lua: &Lua, e: &anyhow::Error) -> Option<LuaResult<(LuaValue, LuaValue)>> {
    e.downcast_ref::<KernelError>().map(|k| match k {
        // err.result: the interrupted cell's result so far (outputs, execution_count...), to be saved
        KernelError::InterruptedCell(r) => boundary::fail_with(
            lua,
            "interrupted",
            "interrupted (Ctrl-C)",
            &json!({"result": r.as_ref().clone().into_json()}),
        ),
        KernelError::Interrupted => fail(lua, "interrupted", "interrupted (Ctrl-C)"),
    })
}

impl LuaUserData for LuaKernel {
    fn add_fields<F: LuaUserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.name.clone()));
    }

    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("execute", |lua, this, (code, opts): (String, Option<LuaTable>)| async move {
            let mut timeout = None;
            let mut on_output: Option<LuaFunction> = None;
            let mut silent = false;
            if let Some(cfg) = &HostCtx::get(&lua).config {
                if cfg.exec.timeout_seconds > 0.0 && cfg.exec.timeout_seconds.is_finite() {
                    timeout = Some(crate::duration_secs(cfg.exec.timeout_seconds));
                }
            }
            if let Some(t) = &opts {
                check_opts(&lua, t, "k:execute", &["timeout", "on_output", "silent"])?;
                silent = t.get::<Option<bool>>("silent")?.unwrap_or(false);
                match t.get::<LuaValue>("timeout")? {
                    LuaValue::Nil => {}
                    LuaValue::Boolean(false) => timeout = None,
                    v => {
                        let x: f64 = f64::from_lua(v, &lua)?;
                        timeout = secs(&lua, Some(x), "k:execute timeout")?;
                    }
                }
                on_output = t.get("on_output")?;
            }
            let kernel = this.kernel.clone();
            drop(this);
            let mut k = kernel.lock().await;
            let cb_err: std::cell::RefCell<Option<LuaError>> = Default::default();
            let mut eo = ExecOptions { timeout, silent, allow_errors: false, on_output: None };
            if let Some(f) = on_output.clone() {
                let lua2 = lua.clone();
                let cb_err = &cb_err;
                eo.on_output = Some(Box::new(move |o: &Value, kind: &str| {
                    if cb_err.borrow().is_some() {
                        return;
                    }
                    let r = to_lua(&lua2, o).and_then(|v| f.call::<()>((v, kind)));
                    if let Err(e) = r {
                        *cb_err.borrow_mut() = Some(e);
                    }
                }));
            }
            let res = k.execute(&code, eo).await;
            drop(k);
            if let Some(e) = cb_err.into_inner() {
                return Err(e);
            }
            match res {
                Ok(r) => Ok((to_lua(&lua, &r.into_json())?, LuaValue::Nil)),
                Err(e) => match interrupted_err(&lua, &e) {
                    Some(r) => r,
                    None => fail(&lua, "kernel", format!("{e:#}")),
                },
            }
        });
        methods.add_async_method("interrupt", |lua, this, ()| async move {
            let i = this.interrupter.clone();
            drop(this);
            match i.interrupt().await {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => fail(&lua, "kernel", format!("{e:#}")),
            }
        });
        methods.add_async_method("restart", |lua, this, ()| async move {
            let kernel = this.kernel.clone();
            drop(this);
            let mut k = kernel.lock().await;
            match k.restart().await {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => match interrupted_err(&lua, &e) {
                    Some(r) => r,
                    None => fail(&lua, "start", format!("{e:#}")),
                },
            }
        });
        methods.add_async_method("shutdown", |_, this, ()| async move {
            let kernel = this.kernel.clone();
            drop(this);
            kernel.lock().await.shutdown().await;
            Ok(true)
        });
        methods.add_method("alive", |_, this, ()| {
            Ok(match this.kernel.try_lock() {
                Ok(k) => k.alive(),
                Err(_) => true, // busy executing
            })
        });
        // from the shared state, not the kernel: the kernel is locked while a cell runs
        methods.add_method("pid", |_, this, ()| Ok(this.interrupter.pid()));
        methods.add_meta_method(LuaMetaMethod::ToString, |_, this, ()| Ok(format!("kernel ({})", this.name)));
    }
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set(
        "specs",
        lua.create_function(|lua, ()| {
            // the same interpreter kernel.start{} would use (relative paths resolved the same way)
            let python = HostCtx::get(lua).config.as_deref().and_then(config_python);
            let specs: Vec<Value> = crate::kernel::spec::list(python.as_deref()).iter().map(spec_json).collect();
            to_lua(lua, &Value::Array(specs))
        })?,
    )?;
    t.set(
        "start",
        lua.create_async_function(|lua, opts: Option<LuaTable>| async move {
            let so = start_options(&lua, opts)?;
            match Kernel::start(so).await {
                Ok(k) => {
                    let name = k.spec().name.clone();
                    let interrupter = k.interrupter();
                    let ud = LuaKernel { kernel: Rc::new(tokio::sync::Mutex::new(k)), interrupter, name };
                    Ok((LuaValue::UserData(lua.create_userdata(ud)?), LuaValue::Nil))
                }
                Err(e) => match interrupted_err(&lua, &e) {
                    Some(r) => r,
                    None => fail(&lua, "start", format!("{e:#}")),
                },
            }
        })?,
    )?;
    Ok(t)
}
