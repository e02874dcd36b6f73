//! The `llm` module: `llm.chat`, `llm.extract_json`, `llm.clip`, `llm.usage`, `llm.usage_snapshot`,
//! `llm.settings`, `llm.mask`.
//!
//! `llm.chat` runs the attempts (Rust: `crate::llm::Engine`) and asks a Lua retry policy after every
//! failed attempt, whatever its kind (`stdlib/retry.lua` unless the call or config says otherwise);
//! edited scripts are swapped in (`crate::lua::reload::reload`) just before each decision. It never raises
//! for an expected failure: it returns `nil, err` with `err.kind`, and the message names the last
//! cause, the status, the attempts and the time spent. It never shows the key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use mlua::prelude::*;
use serde_json::{json, Value};

use super::boundary;
use crate::llm::{Adapt, CallOpts, Engine, Failure, Kind, Reply, Request, Settings};
use crate::lua::ctx::HostCtx;

const CHAT_OPTS: &[&str] = &[
    "events",
    "messages",
    "prompt",
    "system",
    "model",
    "temperature",
    "max_tokens",
    "json",
    "json_schema",
    "timeout",
    "idle_timeout",
    "max_reply_bytes",
    "retry",
    "stream",
    "extra",
    "reasoning_effort",
];

/// The engine for a host context: settings from its config's `llm` section, its secret and CLI flags;
/// settings that cannot be built are reported at the first call (kind "config").
fn engine_for(ctx: &HostCtx) -> Engine {
    let llm = ctx.config.as_ref().map(|c| c.llm.clone()).unwrap_or_default();
    let base = ctx.config.as_ref().map(|c| c.base.clone());
    let events = Some(ctx.events.clone());
    match Settings::from_llm_config(&llm, base.as_deref(), ctx.secret.clone(), ctx.record.clone(), ctx.replay.clone()) {
        Ok(s) => Engine::new(s, events, ctx.progress),
        Err(e) => {
            let mut en = Engine::new(Settings::default().with_secret(ctx.secret.clone()), events, ctx.progress);
            en.settings_error = Some(e);
            en
        }
    }
}

/// The run's engine (one per VM, made on first use from the host's config and CLI flags).
pub fn engine(lua: &Lua) -> Arc<Engine> {
    if let Some(e) = lua.app_data_ref::<Arc<Engine>>() {
        return e.clone();
    }
    let mut en = engine_for(&HostCtx::get(lua));
    en.set_price_table(price_table(lua));
    let e = Arc::new(en);
    lua.set_app_data(e.clone());
    e
}

/// The price table `require("prices")` returns (a user's `prices.lua` shadows the bundled one). One
/// that cannot be read costs nothing but a warning: the run goes on, its calls unpriced.
fn price_table(lua: &Lua) -> BTreeMap<String, crate::llm::Price> {
    let mut out = BTreeMap::new();
    let loaded = lua.globals().get::<LuaFunction>("require").and_then(|r| r.call::<LuaValue>("prices"));
    let v = match loaded.map(|t| boundary::from_lua(&t)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            crate::ui::eline(&format!("warning: the price table (prices.lua) is unusable: {e}; calls are not priced"));
            return out;
        }
        Err(e) => {
            crate::ui::eline(&format!(
                "warning: cannot load the price table (prices.lua): {e:#}; calls are not priced"
            ));
            return out;
        }
    };
    let Value::Object(m) = v else {
        crate::ui::eline("warning: prices.lua must return a table {model = {input =, output =}}; calls are not priced");
        return out;
    };
    for (model, p) in m {
        match crate::llm::Price::from_json(&p, &format!("prices.lua: {model}")) {
            Ok(p) => {
                out.insert(model, p);
            }
            Err(e) => {
                crate::ui::eline(&format!("warning: {e}; that model is not priced"));
            }
        }
    }
    out
}

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("chat", lua.create_async_function(|lua, opts: LuaValue| async move { chat(lua, opts).await })?)?;
    t.set(
        "extract_json",
        lua.create_function(|lua, text: LuaValue| {
            let text =
                boundary::string_arg(lua, &text, "llm.extract_json", "the reply text (a string)")?.to_string_lossy();
            // value, nil, repaired (whether it needed repairs to be read) | nil, err
            match crate::llm::extract::extract_json_repaired(&text) {
                Ok((v, repaired)) => Ok((boundary::to_lua(lua, &v)?, LuaValue::Nil, LuaValue::Boolean(repaired))),
                Err(e) => boundary::fail(lua, e.kind.as_str(), &e.message).map(|(a, b)| (a, b, LuaValue::Nil)),
            }
        })?,
    )?;
    // llm.clip(text, {head=4096, tail=4096}) -> text, bytes_cut : bound what a prompt echoes
    t.set(
        "clip",
        lua.create_function(|lua, (text, opts): (LuaValue, Option<LuaTable>)| {
            let text = boundary::string_arg(lua, &text, "llm.clip", "a string")?.to_string_lossy();
            let (mut head, mut tail) = (4096usize, 4096usize);
            {
                let o = boundary::Opts::new(lua, "llm.clip", opts, &["head", "tail"])?;
                for (k, slot) in [("head", &mut head), ("tail", &mut tail)] {
                    if let Some(x) = o.u64(k)? {
                        *slot = x as usize;
                    }
                }
            }
            let (out, cut) = crate::llm::clip(&text, head, tail);
            Ok((out, cut))
        })?,
    )?;
    t.set("usage", lua.create_function(|lua, ()| boundary::to_lua(lua, &engine(lua).usage()))?)?;
    t.set(
        "usage_snapshot",
        lua.create_function(|lua, opts: Option<LuaTable>| {
            let reset =
                boundary::Opts::new(lua, "llm.usage_snapshot", opts, &["reset"])?.bool("reset")?.unwrap_or(false);
            boundary::to_lua(lua, &engine(lua).usage_snapshot(reset))
        })?,
    )?;
    t.set(
        "settings",
        lua.create_function(|lua, ()| {
            let en = engine(lua);
            let mut v = en.settings.to_json();
            if let Some(e) = &en.settings_error {
                v["error"] = json!(e);
            }
            boundary::to_lua(lua, &v)
        })?,
    )?;
    t.set("mask", lua.create_function(|lua, s: String| Ok(HostCtx::get(lua).secret.mask(&s)))?)?;
    Ok(t)
}

fn build_request(lua: &Lua, o: &boundary::Opts, en: &Engine) -> LuaResult<Request> {
    let s = &en.settings;
    let mut messages: Vec<Value> = Vec::new();
    let given = o.value("messages")?;
    let prompt = o.str("prompt")?;
    let system = o.str("system")?;
    match &given {
        LuaValue::Nil => {}
        LuaValue::Table(_) => {
            let v = boundary::from_lua_checked(lua, &given, "llm.chat: messages")?;
            let Value::Array(items) = v else {
                return Err(boundary::misuse(lua, "llm.chat: 'messages' must be a list of {role=, content=} tables"));
            };
            for (i, m) in items.into_iter().enumerate() {
                let ok = m.get("role").is_some_and(Value::is_string) && m.get("content").is_some();
                if !ok {
                    return Err(boundary::misuse(
                        lua,
                        format!("llm.chat: messages[{}] must be a table with 'role' (a string) and 'content'", i + 1),
                    ));
                }
                messages.push(m);
            }
        }
        other => {
            return Err(boundary::misuse(
                lua,
                format!("llm.chat: 'messages' must be a list of {{role=, content=}} tables, got {}", other.type_name()),
            ))
        }
    }
    if let Some(sys) = system {
        if messages.first().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("system") {
            return Err(boundary::misuse(
                lua,
                "llm.chat: 'system' given, but messages already start with a system message",
            ));
        }
        messages.insert(0, json!({"role": "system", "content": sys}));
    }
    if let Some(p) = prompt {
        messages.push(json!({"role": "user", "content": p}));
    }
    if !messages.iter().any(|m| m.get("role").and_then(Value::as_str) != Some("system")) {
        return Err(boundary::misuse(lua, "llm.chat: give 'messages' (a list of {role=, content=}) or 'prompt'"));
    }
    let model = o.str("model")?.unwrap_or_else(|| s.model.clone());
    if model.trim().is_empty() {
        return Err(boundary::misuse(lua, "llm.chat: 'model' is empty (set llm.model in the config or pass model=)"));
    }
    let max_tokens = match o.f64("max_tokens")? {
        None => s.max_tokens,
        Some(x) if x >= 1.0 && x.fract() == 0.0 => Some(x as u64),
        Some(x) => {
            return Err(boundary::misuse(lua, format!("llm.chat: 'max_tokens' must be a positive integer, got {x}")))
        }
    };
    let extra = match o.value("extra")? {
        LuaValue::Nil => serde_json::Map::new(),
        v @ LuaValue::Table(_) => match boundary::from_lua_checked(lua, &v, "llm.chat: extra")? {
            Value::Object(m) => m,
            _ => {
                return Err(boundary::misuse(
                    lua,
                    "llm.chat: 'extra' must be a table of request fields (top_p=, seed=...)",
                ))
            }
        },
        other => {
            return Err(boundary::misuse(lua, format!("llm.chat: 'extra' must be a table, got {}", other.type_name())))
        }
    };
    // reasoning_effort: the call's (false: none), else llm.reasoning_effort; an `extra` field wins
    let mut extra = extra;
    let effort = match o.value("reasoning_effort")? {
        LuaValue::Nil => s.reasoning_effort.clone(),
        LuaValue::Boolean(false) => None,
        LuaValue::String(e) => Some(e.to_string_lossy()).filter(|e| !e.is_empty()),
        other => {
            return Err(boundary::misuse(
                lua,
                format!(
                    "llm.chat: 'reasoning_effort' must be a string (\"low\", \"medium\", \"high\"...) or false, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    if let Some(e) = effort {
        extra.entry("reasoning_effort").or_insert(json!(e));
    }
    Ok(Request {
        model,
        messages,
        temperature: o.f64("temperature")?.or(s.temperature),
        max_tokens,
        json: o.bool("json")?.unwrap_or(false),
        json_schema: json_schema(lua, o)?,
        extra,
    })
}

/// `json_schema = {name =, schema =, strict =, description =}`, checked; `name` defaults to "reply".
fn json_schema(lua: &Lua, o: &boundary::Opts) -> LuaResult<Option<Value>> {
    let v = match o.value("json_schema")? {
        LuaValue::Nil => return Ok(None),
        v @ LuaValue::Table(_) => boundary::from_lua_checked(lua, &v, "llm.chat: json_schema")?,
        other => {
            return Err(boundary::misuse(
                lua,
                format!("llm.chat: 'json_schema' must be a table {{name =, schema =}}, got {}", other.type_name()),
            ))
        }
    };
    let Value::Object(mut m) = v else {
        return Err(boundary::misuse(lua, "llm.chat: 'json_schema' must be a table {name =, schema =}"));
    };
    if let Some(k) = m.keys().find(|k| !matches!(k.as_str(), "name" | "schema" | "strict" | "description")) {
        return Err(boundary::misuse(
            lua,
            format!("llm.chat: json_schema: unknown key '{k}' (expected name, schema, strict, description)"),
        ));
    }
    if !m.get("schema").is_some_and(Value::is_object) {
        return Err(boundary::misuse(lua, "llm.chat: json_schema needs 'schema', a JSON Schema table"));
    }
    let name = m.entry("name").or_insert_with(|| json!("reply"));
    let ok = name.as_str().is_some_and(|n| {
        (1..=64).contains(&n.len()) && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if !ok {
        return Err(boundary::misuse(
            lua,
            format!("llm.chat: json_schema.name must be 1-64 letters, digits, '_' or '-', got {name}"),
        ));
    }
    Ok(Some(Value::Object(m)))
}

async fn chat(lua: Lua, opts: LuaValue) -> LuaResult<(LuaValue, LuaValue)> {
    let LuaValue::Table(opts) = opts else {
        return Err(boundary::misuse(&lua, "llm.chat: expected a table of options, e.g. llm.chat{prompt = \"hi\"}"));
    };
    let o = boundary::Opts::new(&lua, "llm.chat", Some(opts), CHAT_OPTS)?;
    let en = engine(&lua);
    let req = build_request(&lua, &o, &en)?;
    let timeout = match o.f64("timeout")? {
        None => en.settings.timeout,
        Some(t) if t > 0.0 => t,
        Some(t) => {
            return Err(boundary::misuse(&lua, format!("llm.chat: 'timeout' must be positive seconds, got {t}")))
        }
    };
    let events = match o.value("events")? {
        LuaValue::Nil => None,
        LuaValue::UserData(u) if u.is::<super::log::Sink>() => Some(u.borrow::<super::log::Sink>()?.0.clone()),
        other => {
            return Err(boundary::misuse(
                &lua,
                format!(
                    "llm.chat: option 'events': expected an event sink (log.sink(path)), got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let idle_timeout = match o.f64("idle_timeout")? {
        None => en.settings.idle_timeout,
        Some(t) if t > 0.0 => Some(t),
        Some(t) => {
            return Err(boundary::misuse(&lua, format!("llm.chat: 'idle_timeout' must be positive seconds, got {t}")))
        }
    };
    let max_reply_bytes = o.u64("max_reply_bytes")?.unwrap_or(en.settings.max_reply_bytes);
    let call = CallOpts {
        timeout,
        idle_timeout,
        stream: o.bool("stream")?.unwrap_or_else(|| en.default_stream()),
        events,
        max_reply_bytes,
        stream_timeout: en.settings.stream_timeout,
    };
    let retry = o.value("retry")?;
    match &retry {
        LuaValue::Nil | LuaValue::Boolean(_) | LuaValue::Function(_) | LuaValue::Table(_) => {}
        other => {
            return Err(boundary::misuse(
                &lua,
                format!(
                    "llm.chat: 'retry' must be a policy (a table with decide, or a function), true or false, got {}",
                    other.type_name()
                ),
            ))
        }
    }
    let started = Instant::now();
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut attempt: u32 = 0;
    let mut adapted: u32 = 0;
    loop {
        attempt += 1;
        let sent_with = en.adaptation(&req.model);
        let mut f = match en.attempt(&req, &call, attempt).await {
            Ok(rep) => {
                en.record_call(&req.model, true, attempt);
                let cost = en.cost(&req.model, &rep.usage);
                return Ok((LuaValue::Table(reply_table(&lua, &rep, attempt, started, cost)?), LuaValue::Nil));
            }
            Err(f) => f,
        };
        // A 400 naming a parameter the model refuses: the request is adapted (as `stdlib/adapt.lua`
        // says) and sent again at once, before the retry policy is asked (it would not retry a 400).
        // Replaying, the cassette holds the 400 and then the adapted exchange under the same request,
        // so the same decision replays the run as it went.
        if f.status == Some(400) && adapted < MAX_ADAPTATIONS {
            if let Some(new) = adapt_decision(&lua, &f, &req, &call, &sent_with, &en).await? {
                let now = en.adapt(&req.model, &new, &f.message, call.events.as_ref());
                if now != sent_with {
                    adapted += 1;
                    continue;
                }
            }
        }
        *counts.entry(f.kind.as_str()).or_default() += 1;
        // The policy decides every kind (its table says which are never retried); Ctrl-C is not a
        // decision: once the run is interrupted no further attempt starts, whatever the policy says.
        if let Err(e) = crate::lua::reload::reload(&lua, call.events.as_deref()) {
            tracing::warn!("reload before the retry decision failed: {e}");
        }
        let (decision, allowed) = decide(&lua, &retry, &f, attempt, &counts, started, &req.model, &en).await?;
        let reason = match decision {
            Ok(_) if crate::signals::token().is_cancelled() => Some("the run is interrupted (Ctrl-C)".into()),
            Ok(wait) => {
                // one line per wait, so that a rate-limited run does not look hung (and on the bar)
                let line = retry_line(&req.model, &f, attempt, allowed, wait, &en);
                crate::ui::info(&line);
                let ctx = HostCtx::get(&lua);
                call.events.as_ref().unwrap_or(&ctx.events).emit(
                    "llm_retry_wait",
                    serde_json::json!({"model": req.model, "failure": f.kind.as_str(), "status": f.status,
                        "attempt": attempt, "attempts_allowed": allowed, "wait": wait,
                        "retry_after": f.retry_after, "message": en.settings.mask(&f.message)}),
                );
                if wait <= 0.0 {
                    continue;
                }
                let bar = crate::ui::spinner(line);
                tokio::select! {
                    _ = crate::signals::token().cancelled() => {
                        f = Failure::new(Kind::Interrupted, format!(
                            "interrupted (Ctrl-C) while waiting to retry after: {}", f.message));
                    }
                    _ = tokio::time::sleep(crate::duration_secs(wait)) => {
                        bar.finish_and_clear();
                        continue;
                    }
                }
                bar.finish_and_clear();
                None
            }
            Err(why) => Some(why),
        };
        en.record_call(&req.model, false, attempt);
        return give_up(&lua, &f, attempt, started, reason, &req.model, &en);
    }
}

/// The stderr line of one retry wait: what failed (quoted: a server's text), attempt k of n, the wait.
/// No runner marker word in it (it lands in the log the runner parses).
fn retry_line(model: &str, f: &Failure, attempt: u32, allowed: Option<u32>, wait: f64, en: &Engine) -> String {
    let what = crate::untrusted::quote(&en.settings.mask(&f.message), 200).text;
    let of = allowed.map(|n| format!(" of at most {n}")).unwrap_or_default();
    let why = match f.retry_after {
        Some(ra) if f.kind == Kind::RateLimited => format!(" (the server asked for {ra:.0}s)"),
        _ => String::new(),
    };
    format!(
        "[LLM] {model}: attempt {attempt}{of} failed ({}: {what}); waiting {wait:.1}s before attempt {}{why}",
        f.kind.as_str(),
        attempt + 1
    )
}

/// Adaptations one call may make (each answers one 400).
const MAX_ADAPTATIONS: u32 = 4;

/// Ask the adaptation policy (`require("adapt").decide(info)`) what to change after a 400.
async fn adapt_decision(
    lua: &Lua,
    f: &Failure,
    req: &Request,
    call: &CallOpts,
    sent_with: &Adapt,
    en: &Engine,
) -> LuaResult<Option<Adapt>> {
    let body = sent_with.body(req, call.stream);
    let info = lua.create_table()?;
    info.set("status", f.status)?;
    info.set("kind", f.kind.as_str())?;
    info.set("param", f.param.as_deref())?;
    info.set("message", en.settings.mask(&f.message))?;
    info.set("model", req.model.as_str())?;
    let params: Vec<String> = body.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    info.set("params", params)?;
    info.set("response_format", body.pointer("/response_format/type").and_then(Value::as_str))?;
    let require: LuaFunction = lua.globals().get("require")?;
    let module: LuaTable = require.call("adapt")?;
    let func: LuaFunction = module
        .get("decide")
        .map_err(|_| LuaError::runtime("the adapt module (adapt.lua) must return a table with a decide function"))?;
    let ret: LuaValue = func.call_async((module, info)).await?;
    let LuaValue::Table(t) = ret else { return Ok(None) };
    let mut a = Adapt::default();
    if let Some(r) = t.get::<Option<LuaTable>>("rename")? {
        for pair in r.pairs::<String, String>() {
            let (k, v) = pair?;
            a.rename.insert(k, v);
        }
    }
    if let Some(d) = t.get::<Option<LuaTable>>("drop")? {
        for k in d.sequence_values::<String>() {
            a.drop.insert(k?);
        }
    }
    if let Some(set) = t.get::<Option<LuaTable>>("set")? {
        if let Value::Object(m) = boundary::from_lua_checked(lua, &LuaValue::Table(set), "adapt.lua: set")? {
            a.set = m;
        }
    }
    a.no_stream = t.get::<Option<bool>>("stream")? == Some(false);
    Ok((!a.is_empty()).then_some(a))
}

fn reply_table(lua: &Lua, rep: &Reply, attempts: u32, started: Instant, cost: Option<f64>) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("cost", cost)?;
    t.set("text", rep.text.as_str())?;
    if !rep.reasoning.is_empty() {
        t.set("reasoning", rep.reasoning.as_str())?;
    }
    t.set("finish_reason", rep.finish_reason.as_str())?;
    t.set("usage", boundary::to_lua(lua, &rep.usage.to_json())?)?;
    t.set("latency", rep.latency)?;
    t.set("model", rep.model.as_str())?;
    t.set("attempts", attempts)?;
    t.set("elapsed", started.elapsed().as_secs_f64())?;
    t.set("streamed", rep.streamed)?;
    t.set("replayed", rep.replayed)?;
    Ok(t)
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn give_up(
    lua: &Lua,
    f: &Failure,
    attempts: u32,
    started: Instant,
    reason: Option<String>,
    model: &str,
    en: &Engine,
) -> LuaResult<(LuaValue, LuaValue)> {
    let elapsed = started.elapsed().as_secs_f64();
    let verb = if reason.is_some() { "gave up" } else { "stopped" };
    let mut msg = format!("{}; {verb} after {} in {elapsed:.1}s", f.message, plural(attempts, "attempt"));
    if let Some(r) = &reason {
        msg.push_str(&format!(" ({r})"));
    }
    let mut extra = json!({
        "status": f.status, "attempts": attempts, "elapsed": elapsed, "retry_after": f.retry_after, "model": model,
    });
    if let Some(rep) = &f.reply {
        extra["text"] = json!(rep.text);
        extra["finish_reason"] = json!(rep.finish_reason);
        // a reply whose whole answer is in its reasoning (reasoning_content) came as `empty`: the
        // caller may keep it, or read it as a last resort
        if !rep.reasoning.is_empty() {
            extra["reasoning"] = json!(en.settings.mask(&rep.reasoning));
        }
        extra["usage"] = rep.usage.to_json();
    }
    boundary::fail_with(lua, f.kind.as_str(), en.settings.mask(&msg), &extra)
}

/// Ask the retry policy: Ok(wait seconds) to retry, Err(reason) to stop.
#[allow(clippy::too_many_arguments)]
async fn decide(
    lua: &Lua,
    retry: &LuaValue,
    f: &Failure,
    attempt: u32,
    counts: &BTreeMap<&'static str, u32>,
    started: Instant,
    model: &str,
    en: &Engine,
) -> LuaResult<(Result<f64, String>, Option<u32>)> {
    let info = lua.create_table()?;
    info.set("kind", f.kind.as_str())?;
    info.set("status", f.status)?;
    info.set("attempt", attempt)?;
    info.set("elapsed", started.elapsed().as_secs_f64())?;
    info.set("retry_after", f.retry_after)?;
    info.set("message", en.settings.mask(&f.message))?;
    info.set("model", model)?;
    let c = lua.create_table()?;
    for (k, n) in counts {
        c.set(*k, *n)?;
    }
    info.set("counts", c)?;
    let (func, this): (LuaFunction, Option<LuaTable>) = match retry {
        LuaValue::Boolean(false) => return Ok((Err("retries are off: retry = false".into()), Some(1))),
        LuaValue::Function(func) => (func.clone(), None),
        LuaValue::Table(t) => match t.get::<LuaValue>("decide")? {
            LuaValue::Function(func) => (func, Some(t.clone())),
            _ => return Err(boundary::misuse(lua, "llm.chat: the 'retry' table has no decide function")),
        },
        _ => {
            let require: LuaFunction = lua.globals().get("require")?;
            let module: LuaTable = require.call("retry")?;
            let policy = match &en.settings.retry {
                Some(cfg) => {
                    let new: LuaFunction = module.get("new")?;
                    new.call::<LuaTable>(boundary::to_lua(lua, cfg)?)?
                }
                None => module,
            };
            let func: LuaFunction = policy.get("decide").map_err(|_| {
                LuaError::runtime("the retry module (retry.lua) must return a table with a decide function")
            })?;
            (func, Some(policy))
        }
    };
    // the attempts this policy allows for this kind (retry.lua's max_attempts and per_kind), if it says
    let allowed = this.as_ref().and_then(|t| {
        let max = t.get::<Option<u32>>("max_attempts").ok().flatten();
        let per = t
            .get::<Option<LuaTable>>("per_kind")
            .ok()
            .flatten()
            .and_then(|p| p.get::<Option<u32>>(f.kind.as_str()).ok().flatten())
            .map(|n| n.saturating_add(1));
        match (max, per) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    });
    let ret: LuaMultiValue = match this {
        Some(t) => func.call_async((t, info)).await?,
        None => func.call_async(info).await?,
    };
    let mut it = ret.into_iter();
    let first = it.next().unwrap_or(LuaValue::Nil);
    let (go, wait, reason): (bool, Option<f64>, Option<String>) = match &first {
        LuaValue::Table(t) => (
            t.get::<Option<bool>>("retry")?.unwrap_or(false),
            t.get::<Option<f64>>("wait")?,
            t.get::<Option<String>>("reason")?,
        ),
        v => {
            let wait = match it.next() {
                Some(LuaValue::Integer(i)) => Some(i as f64),
                Some(LuaValue::Number(x)) => Some(x),
                _ => None,
            };
            let reason = match it.next() {
                Some(LuaValue::String(s)) => Some(s.to_string_lossy()),
                _ => None,
            };
            (!matches!(v, LuaValue::Nil | LuaValue::Boolean(false)), wait, reason)
        }
    };
    if go {
        let w = wait.filter(|w| w.is_finite()).unwrap_or(0.0).clamp(0.0, 86_400.0);
        Ok((Ok(w), allowed))
    } else {
        Ok((Err(reason.unwrap_or_else(|| "the retry policy said stop".into())), allowed))
    }
}
