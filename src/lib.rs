//! cellsci: a Rust host that gives Lua scripts fast, reliable primitives (LLM, notebook, kernel, report,
//! files) for running LLM-driven notebook experiments. Policy lives in Lua (`scripts/`, `stdlib/`);
//! mechanisms live here.

pub mod cli;
pub mod config;
pub mod events;
pub mod exit;
pub mod files;
pub mod http;
pub mod kernel;
pub mod llm;
pub mod lua;
pub mod notebook;
pub mod notebook_run;
pub mod pyjson;
pub mod report;
pub mod secret;
pub mod signals;
pub mod start;
pub mod template;
pub mod ui;
pub mod untrusted;

/// Seconds as a `Duration` that never panics: negative or NaN is zero, and anything longer than about a
/// century (including infinity) is capped there, so `now + d` cannot overflow either.
/// `Duration::from_secs_f64` panics on values this large, and they come from scripts and configs.
pub fn duration_secs(x: f64) -> std::time::Duration {
    const CAP: f64 = 100.0 * 365.25 * 86_400.0;
    if x.is_nan() || x <= 0.0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs_f64(x.min(CAP))
}

#[cfg(test)]
mod tests {
    /// Regression: `time.sleep(1e20)`, `timeout = 1e20` and an `Infinity` timeout in the config panicked
    /// in `Duration::from_secs_f64`.
    #[test]
    fn huge_or_odd_seconds_do_not_panic() {
        use std::time::{Duration, Instant};
        assert_eq!(super::duration_secs(1.5), Duration::from_millis(1500));
        assert_eq!(super::duration_secs(-1.0), Duration::ZERO);
        assert_eq!(super::duration_secs(f64::NAN), Duration::ZERO);
        for x in [1e20, 1e300, f64::INFINITY] {
            let d = super::duration_secs(x);
            assert!(d > Duration::from_secs(86_400 * 365 * 50));
            let _ = Instant::now() + d * 6; // the stream cap multiplies the timeout
        }
    }
}
