//! Per-run accounting of LLM use: every attempt (request) and every `llm.chat` call, in total and per
//! model, plus a window that a script can read and reset once per iteration. Budgets read the totals.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Failure, Reply};

#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// `llm.chat` calls (each may make several requests).
    pub calls: u64,
    pub ok: u64,
    pub failed: u64,
    /// Requests sent (attempts, retries included; replayed ones too).
    pub requests: u64,
    /// Requests beyond the first of each call.
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of the completion tokens, those spent thinking (when the endpoint says).
    pub reasoning_tokens: u64,
    /// What the priced requests cost (per the price table).
    pub cost: f64,
    /// Requests that used tokens of a model with no price (not in `cost`).
    pub unpriced: u64,
    /// Seconds spent in requests (sum over requests; waits between retries not included).
    pub latency: f64,
    /// Failed requests by kind.
    pub failures: BTreeMap<String, u64>,
}

impl Counts {
    fn attempt(&mut self, r: &Result<Reply, Failure>, latency: f64, cost: Option<f64>) {
        self.requests += 1;
        match cost {
            Some(c) => self.cost += c,
            None if r.as_ref().is_ok_and(|rep| rep.usage.total_tokens > 0) => self.unpriced += 1,
            None => {}
        }
        self.latency += latency;
        let usage = match r {
            Ok(rep) => Some(rep.usage),
            Err(f) => {
                *self.failures.entry(f.kind.as_str().to_string()).or_default() += 1;
                f.reply.as_ref().map(|r| r.usage)
            }
        };
        if let Some(u) = usage {
            self.prompt_tokens += u.prompt_tokens;
            self.completion_tokens += u.completion_tokens;
            self.total_tokens += u.total_tokens;
            self.reasoning_tokens += u.reasoning_tokens;
        }
    }

    fn call(&mut self, ok: bool, attempts: u32) {
        self.calls += 1;
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.retries += u64::from(attempts.saturating_sub(1));
    }

    pub fn to_json(&self) -> Value {
        json!({
            "calls": self.calls, "ok": self.ok, "failed": self.failed, "requests": self.requests,
            "retries": self.retries, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost": (self.cost * 1e9).round() / 1e9, "unpriced": self.unpriced, "latency": (self.latency * 1000.0).round() / 1000.0, "failures": self.failures,
        })
    }
}

#[derive(Debug, Default)]
pub struct Telemetry {
    pub total: Counts,
    pub models: BTreeMap<String, Counts>,
    pub window: Counts,
    pub window_models: BTreeMap<String, Counts>,
}

impl Telemetry {
    pub fn record_attempt(&mut self, model: &str, r: &Result<Reply, Failure>, latency: f64, cost: Option<f64>) {
        self.total.attempt(r, latency, cost);
        self.window.attempt(r, latency, cost);
        self.models.entry(model.to_string()).or_default().attempt(r, latency, cost);
        self.window_models.entry(model.to_string()).or_default().attempt(r, latency, cost);
    }

    pub fn record_call(&mut self, model: &str, ok: bool, attempts: u32) {
        self.total.call(ok, attempts);
        self.window.call(ok, attempts);
        self.models.entry(model.to_string()).or_default().call(ok, attempts);
        self.window_models.entry(model.to_string()).or_default().call(ok, attempts);
    }

    fn shape(c: &Counts, models: &BTreeMap<String, Counts>) -> Value {
        let mut v = c.to_json();
        v["models"] = Value::Object(models.iter().map(|(k, c)| (k.clone(), c.to_json())).collect());
        v
    }

    /// Totals of the run with a per-model breakdown under `models`.
    pub fn usage(&self) -> Value {
        Self::shape(&self.total, &self.models)
    }

    /// The counts since the last reset (same shape as `usage`); `reset` starts a new window.
    pub fn snapshot(&mut self, reset: bool) -> Value {
        let v = Self::shape(&self.window, &self.window_models);
        if reset {
            self.window = Counts::default();
            self.window_models.clear();
        }
        v
    }
}
