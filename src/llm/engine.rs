//! The engine: everything around one attempt (budgets, the concurrency limit, record/replay,
//! telemetry, the event log), shared by every coroutine of a run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::events::EventLog;

use super::message::*;
use super::settings::*;
use super::{cassette, client, telemetry};

/// Everything around one attempt: budgets, concurrency, record/replay, telemetry, events.
/// Shared by every coroutine of a run (and usable from Rust directly).
pub struct Engine {
    pub settings: Settings,
    /// Why the settings could not be built, reported on the first call (kind "config").
    pub settings_error: Option<String>,
    pub telemetry: Mutex<telemetry::Telemetry>,
    recorder: Mutex<Option<cassette::Recorder>>,
    player: Mutex<Option<Result<cassette::Player, String>>>,
    endpoints: Mutex<std::collections::HashMap<String, Arc<client::Endpoint>>>,
    /// Where each exchange is logged (the current trial's event log), when there is one.
    events: Option<Arc<EventLog>>,
    /// Progress is shown (a terminal): the default is then to stream.
    progress: bool,
    /// The API said to wait (a 429 with Retry-After) until then: every branch's next attempt waits, so
    /// a rate limit met by one branch slows all of them instead of each branch hitting it in turn.
    hold_until: Mutex<Option<Instant>>,
    /// How requests to each model are adapted (learnt from 400s that named a parameter), for the run.
    adaptations: Mutex<std::collections::HashMap<String, Adapt>>,
    /// Prices per model: the price table with the config's `llm.prices` on top.
    prices: std::collections::BTreeMap<String, Price>,
    /// What the requests sent and not yet answered are expected to use: budgets count them, so that
    /// concurrent branches cannot all pass a budget check that only the finished requests had met.
    in_flight: Mutex<InFlight>,
}

/// The expected use of the requests in flight.
#[derive(Debug, Default)]
struct InFlight {
    requests: u64,
    tokens: u64,
    cost: f64,
}

/// One request's share of `InFlight`, given back when its attempt is over (its real use is then in
/// the telemetry).
struct Reservation<'a> {
    engine: &'a Engine,
    tokens: u64,
    cost: f64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut f = self.engine.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        f.requests = f.requests.saturating_sub(1);
        f.tokens = f.tokens.saturating_sub(self.tokens);
        f.cost = (f.cost - self.cost).max(0.0);
    }
}

impl Engine {
    pub fn new(settings: Settings, events: Option<Arc<EventLog>>, progress: bool) -> Engine {
        Engine {
            settings_error: None,
            telemetry: Mutex::new(Default::default()),
            recorder: Mutex::new(None),
            player: Mutex::new(None),
            endpoints: Mutex::new(Default::default()),
            events,
            progress,
            hold_until: Mutex::new(None),
            adaptations: Mutex::new(Default::default()),
            prices: settings.prices.clone(),
            settings,
            in_flight: Mutex::new(InFlight::default()),
        }
    }

    /// Wait out a rate limit another attempt was told about (Ctrl-C ends the wait).
    async fn honour_hold(&self, model: &str) -> Result<(), Failure> {
        let until = *self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        let Some(until) = until else { return Ok(()) };
        let now = Instant::now();
        if until <= now {
            return Ok(());
        }
        let wait = (until - now).as_secs_f64();
        let line = format!("[LLM] {model}: waiting {wait:.1}s before sending: the API asked another request to wait (429, Retry-After)");
        if wait >= 0.5 {
            crate::ui::info(&line);
        }
        let bar = crate::ui::spinner(line);
        let r = tokio::select! {
            _ = crate::signals::token().cancelled() => Err(Failure::new(
                Kind::Interrupted, "interrupted (Ctrl-C) while waiting out the API's rate limit")),
            _ = tokio::time::sleep(until - now) => Ok(()),
        };
        bar.finish_and_clear();
        r
    }

    fn tel(&self) -> std::sync::MutexGuard<'_, telemetry::Telemetry> {
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the default is to stream (progress on a terminal), unless the config says.
    pub fn default_stream(&self) -> bool {
        self.settings.stream.unwrap_or(self.progress)
    }

    /// Use this price table (`stdlib/prices.lua`); the config's `llm.prices` entries stay on top.
    pub fn set_price_table(&mut self, table: std::collections::BTreeMap<String, Price>) {
        let mut p = table;
        p.extend(self.settings.prices.clone());
        self.prices = p;
    }

    /// What this usage of `model` cost, when the model has a price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        price_of(&self.prices, model).map(|p| p.cost(usage))
    }

    /// How requests to `model` are adapted now.
    pub fn adaptation(&self, model: &str) -> Adapt {
        self.adaptations.lock().unwrap_or_else(|e| e.into_inner()).get(model).cloned().unwrap_or_default()
    }

    /// Remember `new` for `model` for the rest of the run, on top of what was learnt before, and return
    /// the result. What it changes is said once: a warning on stderr and an `llm_adapt` event.
    pub fn adapt(&self, model: &str, new: &Adapt, why: &str, sink: Option<&Arc<EventLog>>) -> Adapt {
        let (before, after) = {
            let mut map = self.adaptations.lock().unwrap_or_else(|e| e.into_inner());
            let slot = map.entry(model.to_string()).or_default();
            let before = slot.clone();
            *slot = before.merged(new);
            (before, slot.clone())
        };
        if after != before {
            let why = self.settings.mask(why);
            let change = Adapt {
                rename: after
                    .rename
                    .iter()
                    .filter(|(k, v)| before.rename.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                drop: after.drop.difference(&before.drop).cloned().collect(),
                set: after
                    .set
                    .iter()
                    .filter(|(k, v)| before.set.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                no_stream: after.no_stream && !before.no_stream,
            };
            crate::ui::eline(&format!(
                "warning: {model} rejected a request parameter ({}); from now on for this model: {}",
                head(&why, 200),
                change.describe()
            ));
            if let Some(events) = sink.or(self.events.as_ref()) {
                events.emit(
                    "llm_adapt",
                    json!({"model": model, "reason": why, "change": change.to_json(),
                                                "adaptation": after.to_json()}),
                );
            }
        }
        after
    }

    /// Check the budgets before sending a request, counting what the requests in flight are expected
    /// to use (their prompt, estimated at 4 characters a token, and their max_tokens), and reserve this
    /// request's share: a request is not sent once the budget is reached by what was used plus what is
    /// on its way. Calls are counted as requests (retries and replays included), one way everywhere.
    fn reserve(&self, req: &Request) -> Result<Reservation<'_>, Failure> {
        let t = self.tel();
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.settings;
        let pending = |n: u64| if n > 0 { format!(" (with {n} more in flight)") } else { String::new() };
        if let Some(max) = s.max_total_tokens {
            if t.total.total_tokens + f.tokens >= max {
                return Err(Failure::new(
                    Kind::Budget,
                    format!(
                        "LLM token budget used up: {} tokens used{} of llm.max_total_tokens = {max} (raise it or \
                         remove it from the config to go on)",
                        t.total.total_tokens,
                        pending(f.tokens)
                    ),
                ));
            }
        }
        if let Some(max) = s.max_cost {
            if t.total.cost + f.cost >= max {
                return Err(Failure::new(
                    Kind::Budget,
                    format!(
                        "LLM money budget used up: {:.4} spent{} of llm.max_cost = {max} (raise it or remove it \
                         from the config to go on)",
                        t.total.cost,
                        if f.cost > 0.0 {
                            format!(" (with {:.4} more expected in flight)", f.cost)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
        }
        if let Some(max) = s.max_calls {
            if t.total.requests + f.requests >= max {
                return Err(Failure::new(
                    Kind::Budget,
                    format!(
                        "LLM call budget used up: {} requests made{} of llm.max_calls = {max} (raise it or remove it \
                         from the config to go on)",
                        t.total.requests,
                        pending(f.requests)
                    ),
                ));
            }
        }
        let prompt = (req.chars() / 4) as u64;
        let tokens = prompt + req.max_tokens.unwrap_or(0);
        let usage = Usage {
            prompt_tokens: prompt,
            completion_tokens: req.max_tokens.unwrap_or(0),
            total_tokens: tokens,
            reasoning_tokens: 0,
        };
        let cost = self.cost(&req.model, &usage).unwrap_or(0.0);
        f.requests += 1;
        f.tokens += tokens;
        f.cost += cost;
        Ok(Reservation { engine: self, tokens, cost })
    }

    /// One attempt: budget check, replay or HTTP (+ record), telemetry and an event.
    pub async fn attempt(&self, req: &Request, opts: &CallOpts, attempt: u32) -> Result<Reply, Failure> {
        if let Some(e) = &self.settings_error {
            return Err(Failure::new(Kind::Config, e.clone()));
        }
        let reservation = self.reserve(req)?;
        if self.settings.max_cost.is_some() && price_of(&self.prices, &req.model).is_none() {
            return Err(Failure::new(
                Kind::Config,
                format!(
                    "llm.max_cost is set, but model '{}' has no price, so its calls could not be counted: add it \
                     to llm.prices in the config ({{\"input\": ..., \"output\": ...}} per million tokens) or to \
                     stdlib/prices.lua",
                    req.model
                ),
            ));
        }
        self.honour_hold(&req.model).await?;
        let started = Instant::now();
        let result = if self.settings.replay.is_some() {
            self.replay(req)
        } else {
            let r = self.http(req, opts).await;
            self.record(req, &r);
            r
        };
        let latency = started.elapsed().as_secs_f64();
        if let Err(f) = &result {
            if let (Kind::RateLimited, Some(secs)) = (f.kind, f.retry_after) {
                let until = Instant::now() + crate::duration_secs(secs.min(600.0));
                let mut h = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
                if h.is_none_or(|t| t < until) {
                    *h = Some(until);
                }
            }
        }
        let cost = match &result {
            Ok(rep) => self.cost(&req.model, &rep.usage),
            Err(f) => f.reply.as_ref().and_then(|rep| self.cost(&req.model, &rep.usage)),
        };
        if !matches!(&result, Err(f) if matches!(f.kind, Kind::Budget | Kind::Config | Kind::ReplayMiss)) {
            self.tel().record_attempt(&req.model, &result, latency, cost);
        }
        self.emit(req, &result, attempt, latency, cost, opts.events.as_ref());
        drop(reservation);
        result
    }

    async fn http(&self, req: &Request, opts: &CallOpts) -> Result<Reply, Failure> {
        let s = &self.settings;
        if !s.secret.is_set() && !s.headers_authenticate() && !crate::http::is_loopback(&s.base_url) {
            let how = if s.provider.is_azure() {
                "set llm.api_key in the config or the AZURE_OPENAI_API_KEY environment variable (or an Entra ID \
                 token in llm.azure_ad_token / AZURE_OPENAI_AD_TOKEN)"
            } else {
                "set llm.api_key in the config or the OPENAI_API_KEY environment variable"
            };
            return Err(Failure::new(
                Kind::Config,
                format!("no API key: {how} (base_url {} is not a local endpoint, so it needs one)", s.base_url),
            ));
        }
        let ep = self.endpoint().map_err(|e| Failure::new(Kind::Config, self.settings.mask(&e)))?;
        let wire = client::Wire {
            url: s.chat_url(&req.model),
            headers: s.request_headers().map_err(|e| Failure::new(Kind::Config, s.mask(&e)))?,
            secret: &s.secret,
        };
        client::chat(&ep, &wire, req, &self.adaptation(&req.model), opts).await.map_err(|mut f| {
            f.message = s.mask(&f.message);
            f
        })
    }

    /// The endpoint of the configured base_url (its client, pool and concurrency limit).
    pub fn endpoint(&self) -> Result<Arc<client::Endpoint>, String> {
        let s = &self.settings;
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = map.get(&s.base_url) {
            return Ok(ep.clone());
        }
        let ep =
            Arc::new(client::Endpoint::new(&s.base_url, crate::duration_secs(s.connect_timeout), s.max_concurrency)?);
        map.insert(s.base_url.clone(), ep.clone());
        Ok(ep)
    }

    fn replay(&self, req: &Request) -> Result<Reply, Failure> {
        let path = self.settings.replay.clone().unwrap_or_default();
        let mut guard = self.player.lock().unwrap_or_else(|e| e.into_inner());
        let player = guard.get_or_insert_with(|| cassette::Player::load(&path));
        match player {
            Err(e) => Err(Failure::new(Kind::Config, e.clone())),
            Ok(p) => p.lookup(&req.key()),
        }
    }

    fn record(&self, req: &Request, r: &Result<Reply, Failure>) {
        let Some(path) = &self.settings.record else { return };
        let mut guard = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            match cassette::Recorder::open(path) {
                Ok(rec) => *guard = Some(rec),
                Err(e) => {
                    crate::ui::eline(&format!("warning: cannot record LLM exchanges: {e}"));
                    return;
                }
            }
        }
        if let Some(rec) = guard.as_mut() {
            // only the secrets themselves: the look-alike patterns of `mask` could alter a prompt and break replay
            let secret = self.settings.secret.clone();
            let exact = move |s: &str| secret.mask_exact(s);
            if let Err(e) = rec.write(req, r, &exact) {
                crate::ui::eline(&format!("warning: cannot record LLM exchange to {}: {e}", path.display()));
            }
        }
    }

    fn emit(
        &self,
        req: &Request,
        r: &Result<Reply, Failure>,
        attempt: u32,
        latency: f64,
        cost: Option<f64>,
        sink: Option<&Arc<EventLog>>,
    ) {
        let Some(events) = sink.or(self.events.as_ref()) else { return };
        if let Some(s) = sink {
            let u = match r {
                Ok(rep) => Some(&rep.usage),
                Err(f) => f.reply.as_ref().map(|rep| &rep.usage),
            };
            s.add_usage(u.map_or(0, |u| u.prompt_tokens), u.map_or(0, |u| u.completion_tokens), latency, cost);
        }
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(|c| match c {
                Value::String(s) => s.clone(),
                o => o.to_string(),
            })
            .unwrap_or_default();
        let mut ev = json!({
            "model": req.model,
            "attempt": attempt,
            "latency": (latency * 1000.0).round() / 1000.0,
            "request": {
                "messages": req.messages.len(),
                "chars": req.chars(),
                "temperature": req.temperature,
                "max_tokens": req.max_tokens,
                "json": req.json,
                "last_user": head(&self.settings.mask(&last_user), 300),
            },
        });
        if let Some(c) = cost {
            ev["cost"] = json!(c);
        }
        let adapt = self.adaptation(&req.model);
        if !adapt.is_empty() && self.settings.replay.is_none() {
            ev["request"]["adapted"] = json!(adapt.describe());
        }
        match r {
            Ok(rep) => {
                ev["outcome"] = json!("ok");
                ev["replayed"] = json!(rep.replayed);
                ev["response"] = json!({
                    "chars": rep.text.chars().count(), "finish_reason": rep.finish_reason,
                    "usage": rep.usage.to_json(), "model": rep.model,
                    "text": head(&self.settings.mask(&rep.text), 300),
                });
                if !rep.reasoning.is_empty() {
                    ev["response"]["reasoning_chars"] = json!(rep.reasoning.chars().count());
                    ev["response"]["reasoning"] = json!(clip(&self.settings.mask(&rep.reasoning), 2048, 1024).0);
                }
            }
            Err(f) => {
                ev["outcome"] = json!("error");
                ev["error"] =
                    json!({"kind": f.kind.as_str(), "status": f.status, "message": self.settings.mask(&f.message)});
                if let Some(rep) = &f.reply {
                    ev["response"] = json!({"chars": rep.text.chars().count(), "finish_reason": rep.finish_reason,
                        "usage": rep.usage.to_json()});
                }
            }
        }
        events.emit("llm", ev);
    }

    /// Account for one `llm.chat` call as a whole (after its retries).
    pub fn record_call(&self, model: &str, ok: bool, attempts: u32) {
        self.tel().record_call(model, ok, attempts);
    }

    /// `llm.usage()`.
    pub fn usage(&self) -> Value {
        self.tel().usage()
    }

    /// `llm.usage_snapshot{reset=}`: counts since the previous reset.
    pub fn usage_snapshot(&self, reset: bool) -> Value {
        self.tel().snapshot(reset)
    }
}
