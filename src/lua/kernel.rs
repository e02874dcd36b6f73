//! The `kernel` module: Jupyter kernels as handles (`k`), pools of them for concurrent branches
//! (`kernel.pool`), execution results as plain tables.
//!
//! Expected failures return `nil, err`: a kernel that cannot start (`err.kind == "start"`), Ctrl-C
//! during an execution or a wait for a pool's kernel (`"interrupted"`). An exception in a cell, a
//! timeout or a dead kernel is not a failure of the call: `k:execute` returns a result whose `status`
//! says what happened. Options are read with [`Opts`], so a wrong one raises in the one shape every
//! module uses. A kernel handle never outlives its kernel's owner: a pool's kernel goes back to its
//! pool when released or when the handle is collected.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use mlua::prelude::*;
use serde_json::{json, Value};

use super::boundary::{self, fail, misuse, string_arg, to_lua, Opts};
use crate::kernel::gateway::{self, Target};
use crate::kernel::pool::{Plan, Pool, PoolError, Ticket};
use crate::kernel::{ExecOptions, Interrupter, Kernel, KernelError, KernelSpec, StartOptions};
use crate::lua::ctx::HostCtx;

/// A kernel and who owns it: the handle itself (`kernel.start`), or a pool (`pool:acquire`), to which
/// the kernel goes back when it is released or when the last reference to it goes.
struct Held {
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// Some while a pool's kernel is out of the pool.
    ticket: RefCell<Option<Ticket>>,
    pooled: bool,
}

impl Held {
    /// Whether the kernel was given back to its pool (the handle is spent).
    fn released(&self) -> bool {
        self.pooled && self.ticket.borrow().is_none()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(t), Some(k)) = (self.ticket.get_mut().take(), self.kernel.get_mut().take()) {
            t.give_back(k);
        }
    }
}

pub struct LuaKernel {
    held: Rc<Held>,
    interrupter: Interrupter,
    name: String,
    gpu: Option<u32>,
    /// The gateway's URL, for a kernel on a gateway.
    gateway: Option<String>,
}

impl LuaKernel {
    fn new(k: Kernel, ticket: Option<Ticket>) -> LuaKernel {
        let (name, interrupter) = (k.name().to_string(), k.interrupter());
        let gateway = k.gateway().map(str::to_string);
        let gpu = ticket.as_ref().and_then(|t| t.gpu);
        let pooled = ticket.is_some();
        let held = Held { kernel: tokio::sync::Mutex::new(Some(k)), ticket: RefCell::new(ticket), pooled };
        LuaKernel { held: Rc::new(held), interrupter, name, gpu, gateway }
    }

    /// The kernel, unless it was given back to its pool (then calling it is misuse).
    fn usable(&self, lua: &Lua, func: &str) -> LuaResult<Rc<Held>> {
        if self.held.released() {
            return Err(misuse(lua, format!("{func}: this kernel was given back to its pool; acquire another")));
        }
        Ok(self.held.clone())
    }
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

/// The config's `exec.python`, a relative path with a folder in it resolved against the current folder
/// at load time (as every relative path of the config is).
fn config_python(cfg: &crate::config::Config) -> Option<PathBuf> {
    let py = cfg.exec.extra.get("python").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let p = PathBuf::from(py);
    Some(if p.is_relative() && py.contains('/') { cfg.base.join(p) } else { p })
}

/// The keys of `kernel.start`'s options (`kernel.pool` takes these too).
const START_KEYS: &[&str] =
    &["name", "python", "packages", "cwd", "env", "startup_timeout", "interrupt_grace", "transport", "gateway"];

/// The config's `exec.gateway_paths` (local prefix → the gateway's prefix; its type is checked when the
/// config loads), relative local prefixes resolved against the config's base folder as every relative
/// path of the config is.
fn path_map(lua: &Lua) -> Vec<(PathBuf, String)> {
    let Some(cfg) = HostCtx::get(lua).config.clone() else { return Vec::new() };
    let Some(Value::Object(m)) = cfg.exec.extra.get("gateway_paths") else { return Vec::new() };
    m.iter()
        .filter_map(|(local, remote)| {
            let l = PathBuf::from(local);
            let l = crate::files::normalize(&if l.is_relative() { cfg.base.join(l) } else { l });
            Some((l, remote.as_str()?.to_string()))
        })
        .collect()
}

/// The gateway a kernel starts on: the `gateway` option (a URL, or false for this machine), else the
/// config's `exec.gateway_url`. The token, the path map and the reconnect window come from the config
/// (`exec.gateway_token`, `exec.gateway_paths`, `exec.gateway_reconnect_timeout`) and the environment;
/// a script never handles the token.
fn gateway_target(lua: &Lua, o: &Opts) -> LuaResult<Option<Target>> {
    let cfg = HostCtx::get(lua).config.clone();
    let extra = |k: &str| cfg.as_ref().and_then(|c| c.exec.extra.get(k).cloned()).filter(|v| !v.is_null());
    let url = match o.value("gateway")? {
        LuaValue::Nil => {
            extra("gateway_url").and_then(|v| v.as_str().map(str::to_string)).filter(|s| !s.trim().is_empty())
        }
        LuaValue::Boolean(false) => None,
        LuaValue::String(s) => Some(s.to_string_lossy()),
        other => return Err(o.invalid("gateway", "a gateway URL (http://host:port) or false", other.type_name())),
    };
    let Some(url) = url else { return Ok(None) };
    let token = extra("gateway_token");
    let mut t = Target::new(&url, gateway::resolve_token(token.as_ref().and_then(Value::as_str)));
    t.paths = path_map(lua);
    if let Some(s) = extra("gateway_reconnect_timeout").and_then(|v| v.as_f64()).filter(|s| *s > 0.0 && s.is_finite()) {
        t.reconnect_timeout = crate::duration_secs(s);
    }
    // both checked when the config loads (gateway_kind is one of its words)
    if let Some(k) = extra("gateway_kind").and_then(|v| v.as_str().map(str::to_string)) {
        t.kind = k.parse().map_err(|e| misuse(lua, format!("config exec.gateway_kind: {e}")))?;
    }
    t.username =
        extra("gateway_username").and_then(|v| v.as_str().map(str::to_string)).filter(|s| !s.trim().is_empty());
    Ok(Some(t))
}

/// Start options from the config (`exec.kernel_name`, `exec.python`, `exec.kernel_packages`,
/// `exec.transport`) and the script's options (keys checked by the caller), which win.
fn start_options(lua: &Lua, o: &Opts) -> LuaResult<StartOptions> {
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
    so.secrets.extend(ctx.secret.others().iter().cloned());
    // a gateway token from the config is as secret as the API key: no local kernel inherits a copy of it
    if let Some(cfg) = &ctx.config {
        let t = cfg.exec.extra.get("gateway_token").and_then(Value::as_str);
        so.secrets.extend(gateway::resolve_token(t).expose().map(str::to_string));
    }
    if let Some(n) = o.str("name")? {
        so.name = Some(n);
        so.python = None;
    }
    if let Some(p) = o.str("python")? {
        so.python = Some(PathBuf::from(p));
    }
    if let Some(p) = o.strings("packages")? {
        so.packages = p;
    }
    if let Some(c) = o.str("cwd")? {
        so.cwd = Some(std::path::absolute(&c).unwrap_or_else(|_| PathBuf::from(c)));
    }
    if let Some(mut e) = o.string_map("env")? {
        e.sort();
        so.env = e;
    }
    if let Some(t) = o.choice("transport", &["ipc", "tcp"])? {
        so.transport = t.parse().map_err(|e| misuse(lua, format!("{e}")))?;
    }
    if let Some(s) = o.positive("startup_timeout")? {
        so.startup_timeout = crate::duration_secs(s);
    }
    if let Some(s) = o.positive("interrupt_grace")? {
        so.interrupt_grace = crate::duration_secs(s);
    }
    so.gateway = gateway_target(lua, o)?;
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

/// `nil, err` for a failed start (or restart): "interrupted" after Ctrl-C; for a gateway, its kind of
/// failure (auth, server, connect, timeout, reset, client, protocol, config); else "start".
fn start_failed(lua: &Lua, e: &anyhow::Error) -> LuaResult<(LuaValue, LuaValue)> {
    interrupted_err(lua, e).unwrap_or_else(|| fail(lua, crate::kernel::start_failure_kind(e), format!("{e:#}")))
}

const NOT_RUNNING: &str = "the kernel is not running";

impl LuaUserData for LuaKernel {
    fn add_fields<F: LuaUserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.name.clone()));
        fields.add_field_method_get("gateway", |_, this| Ok(this.gateway.clone()));
    }

    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("execute", |lua, this, (code, opts): (LuaValue, LuaValue)| async move {
            const F: &str = "k:execute";
            let held = this.usable(&lua, F)?;
            drop(this);
            let code = string_arg(&lua, &code, F, "the code (a string)")?.to_string_lossy();
            let o = Opts::from_value(&lua, F, opts, &["timeout", "on_output", "silent", "max_output_bytes"])?;
            let mut timeout = None;
            let mut max_output = crate::kernel::outputs::DEFAULT_MAX_OUTPUT_BYTES;
            if let Some(cfg) = &HostCtx::get(&lua).config {
                if cfg.exec.timeout_seconds > 0.0 && cfg.exec.timeout_seconds.is_finite() {
                    timeout = Some(crate::duration_secs(cfg.exec.timeout_seconds));
                }
                if let Some(n) = cfg.get("exec.max_output_bytes").and_then(Value::as_u64) {
                    max_output = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            if let Some(n) = o.u64("max_output_bytes")? {
                max_output = usize::try_from(n).unwrap_or(usize::MAX);
            }
            match o.value("timeout")? {
                LuaValue::Nil => {}
                LuaValue::Boolean(false) => timeout = None,
                LuaValue::Integer(_) | LuaValue::Number(_) => {
                    timeout = o.positive("timeout")?.map(crate::duration_secs);
                }
                other => return Err(o.invalid("timeout", "a positive number of seconds or false", other.type_name())),
            }
            let silent = o.bool("silent")?.unwrap_or(false);
            let on_output = o.function("on_output")?;
            let mut k = held.kernel.lock().await;
            let Some(k) = k.as_mut() else { return fail(&lua, "kernel", NOT_RUNNING) };
            let cb_err: std::cell::RefCell<Option<LuaError>> = Default::default();
            let mut eo = ExecOptions { timeout, silent, max_output_bytes: max_output, ..Default::default() };
            if let Some(f) = on_output {
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
            if let Some(e) = cb_err.into_inner() {
                return Err(e);
            }
            match res {
                Ok(r) => Ok((to_lua(&lua, &r.into_json())?, LuaValue::Nil)),
                Err(e) => interrupted_err(&lua, &e).unwrap_or_else(|| fail(&lua, "kernel", format!("{e:#}"))),
            }
        });
        methods.add_async_method("interrupt", |lua, this, ()| async move {
            this.usable(&lua, "k:interrupt")?;
            let i = this.interrupter.clone();
            drop(this);
            match i.interrupt().await {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => fail(&lua, "kernel", format!("{e:#}")),
            }
        });
        methods.add_async_method("restart", |lua, this, ()| async move {
            let held = this.usable(&lua, "k:restart")?;
            drop(this);
            let mut k = held.kernel.lock().await;
            let Some(k) = k.as_mut() else { return fail(&lua, "kernel", NOT_RUNNING) };
            match k.restart().await {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => start_failed(&lua, &e),
            }
        });
        // k:enter{cwd=, env=} -> true | nil, err: move the kernel into a folder with an environment, now
        // and after every restart, until it goes back to its pool (a pool kernel taken for one trial)
        methods.add_async_method("enter", |lua, this, opts: LuaValue| async move {
            const F: &str = "k:enter";
            let held = this.usable(&lua, F)?;
            drop(this);
            let o = Opts::from_value(&lua, F, opts, &["cwd", "env"])?;
            let Some(cwd) = o.str("cwd")? else { return Err(o.invalid("cwd", "a folder (a string)", "nil")) };
            let cwd = std::path::absolute(&cwd).unwrap_or_else(|_| PathBuf::from(cwd));
            let mut env = o.string_map("env")?.unwrap_or_default();
            env.sort();
            let mut k = held.kernel.lock().await;
            let Some(k) = k.as_mut() else { return fail(&lua, "kernel", NOT_RUNNING) };
            match k.enter(&cwd, &env).await {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => start_failed(&lua, &e),
            }
        });
        methods.add_async_method("shutdown", |lua, this, ()| async move {
            let held = this.usable(&lua, "k:shutdown")?;
            drop(this);
            if let Some(k) = held.kernel.lock().await.as_mut() {
                k.shutdown().await;
            }
            Ok(true)
        });
        methods.add_method("alive", |_, this, ()| {
            if this.held.released() {
                return Ok(false);
            }
            Ok(match this.held.kernel.try_lock() {
                Ok(k) => k.as_ref().is_some_and(Kernel::alive),
                Err(_) => true, // busy executing
            })
        });
        // from the shared state, not the kernel: the kernel is locked while a cell runs
        methods.add_method("pid", |_, this, ()| Ok(if this.held.released() { None } else { this.interrupter.pid() }));
        methods.add_method("gpu", |_, this, ()| Ok(this.gpu));
        // where a gateway kernel runs (the host its SSH launch reached, else its host name); nil here
        methods.add_method("host", |_, this, ()| Ok(if this.held.released() { None } else { this.interrupter.host() }));
        methods.add_meta_method(LuaMetaMethod::ToString, |_, this, ()| {
            let mut s = format!("kernel ({}", this.name);
            if let Some(g) = &this.gateway {
                s.push_str(&format!(" on {g}"));
            }
            if let Some(g) = this.gpu {
                s.push_str(&format!(", gpu {g}"));
            }
            s.push(')');
            Ok(s)
        });
    }
}

/// A pool of kernels (`kernel.pool{}`).
pub struct LuaPool {
    pool: Pool,
}

/// `nil, err` for a failed acquire; raises when the pool was shut down (using it is misuse).
fn acquire_failed(lua: &Lua, func: &str, e: &anyhow::Error) -> LuaResult<(LuaValue, LuaValue)> {
    match e.downcast_ref::<PoolError>() {
        Some(PoolError::Closed) => Err(misuse(lua, format!("{func}: the pool is shut down"))),
        Some(PoolError::Start(_, kind)) => fail(lua, kind, format!("{e:#}")),
        None => start_failed(lua, e),
    }
}

impl LuaPool {
    async fn acquire(&self, lua: &Lua) -> Result<LuaAnyUserData, anyhow::Error> {
        let lease = self.pool.acquire().await?;
        Ok(lua.create_userdata(LuaKernel::new(lease.kernel, Some(lease.ticket)))?)
    }
}

/// Give a kernel handle back to `pool`: waits for a cell it is running, then the pool restarts it.
async fn release(lua: &Lua, pool: &Pool, k: &LuaAnyUserData, func: &str) -> LuaResult<()> {
    let held = match k.borrow::<LuaKernel>() {
        Ok(k) => k.held.clone(),
        Err(_) => {
            return Err(misuse(
                lua,
                format!("{func}: expected a kernel of this pool, got a {}", k.type_name()?.to_string_lossy()),
            ))
        }
    };
    let ticket = held.ticket.borrow_mut().take();
    let Some(ticket) = ticket else {
        let why = if held.pooled { "was given back already" } else { "is not from a pool (kernel.start)" };
        return Err(misuse(lua, format!("{func}: this kernel {why}")));
    };
    if !ticket.belongs_to(pool) {
        *held.ticket.borrow_mut() = Some(ticket);
        return Err(misuse(lua, format!("{func}: this kernel belongs to another pool")));
    }
    let kernel = held.kernel.lock().await.take();
    match kernel {
        Some(k) => pool.release(ticket, k),
        None => tracing::warn!("a pool kernel was released without its process"),
    }
    Ok(())
}

impl LuaUserData for LuaPool {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("acquire", |lua, this, ()| async move {
            match this.acquire(&lua).await {
                Ok(k) => Ok((LuaValue::UserData(k), LuaValue::Nil)),
                Err(e) => acquire_failed(&lua, "pool:acquire", &e),
            }
        });
        methods.add_async_method("release", |lua, this, k: LuaValue| async move {
            let LuaValue::UserData(k) = k else {
                return Err(misuse(
                    &lua,
                    format!("pool:release: expected a kernel of this pool, got {}", k.type_name()),
                ));
            };
            let pool = this.pool.clone();
            drop(this);
            release(&lua, &pool, &k, "pool:release").await?;
            Ok(true)
        });
        // pool:with(fn): fn(k) with a kernel of the pool, given back however fn ends; fn's results
        methods.add_async_method("with", |lua, this, f: LuaValue| async move {
            let LuaValue::Function(f) = f else {
                return Err(misuse(&lua, format!("pool:with: expected a function, got {}", f.type_name())));
            };
            let pool = this.pool.clone();
            let k = match this.acquire(&lua).await {
                Ok(k) => k,
                Err(e) => {
                    return acquire_failed(&lua, "pool:with", &e).map(|(a, b)| LuaMultiValue::from_vec(vec![a, b]))
                }
            };
            drop(this);
            let r = f.call_async::<LuaMultiValue>(k.clone()).await;
            // fn may have given the kernel back itself
            if !k.borrow::<LuaKernel>().is_ok_and(|h| h.held.released()) {
                release(&lua, &pool, &k, "pool:with").await?;
            }
            r
        });
        methods.add_method("size", |_, this, ()| Ok(this.pool.size()));
        methods.add_method("ready", |_, this, ()| Ok(this.pool.ready()));
        methods.add_async_method("shutdown", |_, this, ()| async move {
            let pool = this.pool.clone();
            drop(this);
            pool.shutdown().await;
            Ok(true)
        });
        methods.add_method("remote", |_, this, ()| Ok(this.pool.remote()));
        // pool:hosts() -> {{host =, avoided_for = seconds}...}: the gateway hosts its slots are spread over
        methods.add_method("hosts", |lua, this, ()| {
            let list: Vec<Value> = this
                .pool
                .hosts()
                .into_iter()
                .map(|(h, left)| json!({"host": h, "avoided_for": left.as_secs_f64()}))
                .collect();
            to_lua(lua, &Value::Array(list))
        });
        // pool:avoid(host, seconds): no new start goes to host for that long (0: again now); the slots
        // whose start failed start again at once on the other hosts
        methods.add_method("avoid", |lua, this, (host, secs): (LuaValue, LuaValue)| {
            const F: &str = "pool:avoid";
            let host = string_arg(lua, &host, F, "a host (a string)")?.to_string_lossy();
            let secs = match secs {
                LuaValue::Integer(i) if i >= 0 => i as f64,
                LuaValue::Number(x) if x >= 0.0 && x.is_finite() => x,
                other => {
                    return Err(misuse(
                        lua,
                        format!("{F}: expected seconds (a number >= 0), got {}", other.type_name()),
                    ))
                }
            };
            this.pool.avoid(&host, crate::duration_secs(secs));
            Ok(true)
        });
        // pool:failures() -> {{slot =, host =, kind =, message =}...}: the failed starts since the last call
        methods.add_method("failures", |lua, this, ()| {
            let list: Vec<Value> = this
                .pool
                .failures()
                .into_iter()
                .map(|f| json!({"slot": f.slot + 1, "host": f.host, "kind": f.kind, "message": f.message}))
                .collect();
            to_lua(lua, &Value::Array(list))
        });
        methods.add_meta_method(LuaMetaMethod::ToString, |_, this, ()| {
            let (n, remote) = (this.pool.size(), this.pool.remote());
            let on = if remote == 0 { String::new() } else { format!(", {remote} on a gateway") };
            Ok(format!("kernel pool ({n} kernels{on}, {} ready)", this.pool.ready()))
        });
    }
}

/// The GPUs of a pool: `gpus=` (a list of whole numbers, `{}` for none), else the config's `exec.gpus`.
fn pool_gpus(lua: &Lua, o: &Opts) -> LuaResult<Vec<u32>> {
    let from_config = || -> Vec<u32> {
        let cfg = HostCtx::get(lua).config.clone();
        let list = cfg.as_ref().and_then(|c| c.exec.extra.get("gpus").and_then(Value::as_array).cloned());
        list.unwrap_or_default().iter().filter_map(Value::as_u64).filter_map(|g| u32::try_from(g).ok()).collect()
    };
    let Some(t) = o.table("gpus")? else { return Ok(from_config()) };
    let mut out = Vec::new();
    for v in t.sequence_values::<LuaValue>() {
        match v? {
            LuaValue::Integer(i) if (0..=i64::from(u32::MAX)).contains(&i) => out.push(i as u32),
            LuaValue::Number(x) if x >= 0.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX) => out.push(x as u32),
            other => {
                let got = match other {
                    LuaValue::Integer(i) => i.to_string(),
                    LuaValue::Number(x) => x.to_string(),
                    o => o.type_name().to_string(),
                };
                return Err(o.invalid("gpus", "a list of GPU ids (whole numbers >= 0)", got));
            }
        }
    }
    Ok(out)
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set(
        "specs",
        lua.create_async_function(|lua, opts: LuaValue| async move {
            let o = Opts::from_value(&lua, "kernel.specs", opts, &["gateway"])?;
            if let Some(target) = gateway_target(&lua, &o)? {
                // the gateway's kernelspecs: {name, display_name, language, gateway, gateway_kind}
                let listed = async {
                    let rest = gateway::Rest::new(&target.url, target.token.clone())?;
                    let specs = rest.specs().await?;
                    let kind = gateway::resolve_kind(&rest, target.kind).await?;
                    Ok::<_, gateway::GatewayError>((specs, kind))
                }
                .await;
                return match listed {
                    Ok((v, kind)) => {
                        let mut specs: Vec<Value> = v
                            .get("kernelspecs")
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(name, s)| {
                                        let spec = s.get("spec").cloned().unwrap_or(Value::Null);
                                        json!({
                                            "name": name,
                                            "display_name": spec.get("display_name"),
                                            "language": spec.get("language"),
                                            "argv": spec.get("argv"),
                                            "gateway": target.url,
                                            "gateway_kind": kind.as_str(),
                                        })
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        specs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                        Ok((to_lua(&lua, &Value::Array(specs))?, LuaValue::Nil))
                    }
                    Err(e) => fail(&lua, e.kind, e.message),
                };
            }
            // the same interpreter kernel.start{} would use (relative paths resolved the same way)
            let python = HostCtx::get(&lua).config.as_deref().and_then(config_python);
            let specs: Vec<Value> = crate::kernel::spec::list(python.as_deref()).iter().map(spec_json).collect();
            Ok((to_lua(&lua, &Value::Array(specs))?, LuaValue::Nil))
        })?,
    )?;
    t.set(
        "start",
        lua.create_async_function(|lua, opts: LuaValue| async move {
            let o = Opts::from_value(&lua, "kernel.start", opts, START_KEYS)?;
            let so = start_options(&lua, &o)?;
            match crate::kernel::start(so).await {
                Ok(k) => Ok((LuaValue::UserData(lua.create_userdata(LuaKernel::new(k, None))?), LuaValue::Nil)),
                Err(e) => start_failed(&lua, &e),
            }
        })?,
    )?;
    t.set(
        "pool",
        lua.create_async_function(|lua, opts: LuaValue| async move {
            const F: &str = "kernel.pool";
            let keys: Vec<&str> = START_KEYS.iter().copied().chain(["size", "gpus", "local_slots", "hosts"]).collect();
            let o = Opts::from_value(&lua, F, opts, &keys)?;
            let so = start_options(&lua, &o)?;
            let gpus = pool_gpus(&lua, &o)?;
            let size = match o.u64("size")? {
                Some(0) => return Err(o.invalid("size", "a whole number >= 1", 0)),
                Some(n) => n as usize,
                None => gpus.len().max(1),
            };
            // With a gateway, the first `local_slots` slots (option, else exec.local_slots) stay here.
            let local_slots = match (&so.gateway, o.u64("local_slots")?) {
                (None, _) => size,
                (Some(_), Some(n)) => (n as usize).min(size),
                (Some(_), None) => {
                    let cfg = HostCtx::get(&lua).config.clone();
                    let n = cfg.as_ref().and_then(|c| c.exec.extra.get("local_slots").and_then(Value::as_u64));
                    (n.unwrap_or(0) as usize).min(size)
                }
            };
            let spec = if local_slots > 0 {
                let mut local = so.clone();
                local.gateway = None;
                match crate::kernel::resolve_spec(&local).await {
                    Ok(s) => Some(s),
                    Err(e) => return start_failed(&lua, &e.context("cannot start the kernel")),
                }
            } else {
                None
            };
            let plans = (0..size)
                .map(|i| {
                    let mut opts = so.clone();
                    if i < local_slots {
                        opts.gateway = None;
                    }
                    let gpu = (!gpus.is_empty()).then(|| gpus[i % gpus.len()]);
                    Plan { spec: if i < local_slots { spec.clone() } else { None }, opts, gpu }
                })
                .collect();
            // the gateway's hosts to spread the slots over: hosts=, else exec.gateway_hosts
            let hosts = match o.strings("hosts")? {
                Some(h) => h,
                None => {
                    let cfg = HostCtx::get(&lua).config.clone();
                    let list =
                        cfg.as_ref().and_then(|c| c.exec.extra.get("gateway_hosts").and_then(Value::as_array).cloned());
                    list.unwrap_or_default().iter().filter_map(Value::as_str).map(str::to_string).collect()
                }
            };
            let pool = Pool::new_with_hosts(plans, hosts);
            let pool = LuaPool { pool };
            Ok((LuaValue::UserData(lua.create_userdata(pool)?), LuaValue::Nil))
        })?,
    )?;
    Ok(t)
}
