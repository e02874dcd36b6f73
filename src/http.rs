//! What every HTTP client of cellsci (the LLM endpoint, a kernel gateway) is built with: one TLS
//! provider, no proxy for loopback, no Nagle, our user agent; and errors told with their causes.

use std::time::Duration;

/// A reqwest client builder for `base_url`: the process's TLS provider installed (reqwest is built
/// without a default one), the proxy skipped for a loopback address (a proxy cannot reach this
/// machine's loopback), `connect_timeout`, TCP_NODELAY and cellsci's user agent.
pub fn client_builder(base_url: &str, connect_timeout: Duration) -> reqwest::ClientBuilder {
    static TLS: std::sync::Once = std::sync::Once::new();
    TLS.call_once(|| {
        // another part may have installed one already
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("cellsci/", env!("CARGO_PKG_VERSION")));
    if is_loopback(base_url) {
        b = b.no_proxy();
    }
    b
}

/// Whether a URL names this machine (127.0.0.0/8, ::1, localhost).
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let Some(host) = u.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost"),
    }
}

/// An error and its causes, `: `-joined, each cause once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        assert!(is_loopback("http://127.0.0.1:8000/v1"));
        assert!(is_loopback("http://localhost:11434/v1"));
        assert!(is_loopback("http://[::1]:8000/v1"));
        assert!(!is_loopback("https://api.openai.com/v1"));
        assert!(!is_loopback("http://10.0.0.2/v1"));
    }
}
