//! The gateway's REST API (`/api/kernelspecs`, `/api/kernels[/<id>[/interrupt|/restart]]`), with every
//! failure classified so that a script's retry policy can decide (as for LLM calls): `auth` (the token
//! was refused), `server` (5xx, or the gateway's kernel limit), `connect` (unreachable), `timeout`,
//! `client` (another 4xx), `protocol` (an answer that is not what the API says), and what Enterprise
//! Gateway says in its own way: `no_such_kernel` (an unknown kernelspec: EG answers 500 with a
//! `NoSuchKernel` traceback, KG 404), `unauthorized` (EG's 403 "User … is not authorized", its
//! `EG_UNAUTHORIZED_USERS` holding root by default), `launch_timeout` (EG's 500 "Waited too long": the
//! kernel did not report back within `KERNEL_LAUNCH_TIMEOUT`).
//! The token travels in the `Authorization` header only, never in a URL, so no error message or log
//! line can carry it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::secret::Secret;

/// A failed gateway call, with the kind a retry policy branches on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub kind: &'static str,
    pub status: Option<u16>,
    pub message: String,
}

impl GatewayError {
    pub fn new(kind: &'static str, status: Option<u16>, message: impl Into<String>) -> GatewayError {
        GatewayError { kind, status, message: message.into() }
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Rest {
    /// `http(s)://host:port[/prefix]`, no trailing slash.
    pub base: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rest({}, token {:?})", self.base, self.token)
    }
}

/// How long one REST call may take (a gateway starting a kernel on Kubernetes answers the POST only
/// when the pod is up, so that one gets the start timeout instead).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Rest {
    pub fn new(base: &str, token: Secret) -> Result<Rest, GatewayError> {
        let base = base.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(GatewayError::new(
                "config",
                None,
                format!("the gateway URL must start with http:// or https://, got {base:?}"),
            ));
        }
        let http = crate::http::client_builder(&base, Duration::from_secs(10)).build().map_err(|e| {
            GatewayError::new("config", None, format!("cannot build the HTTP client: {}", crate::http::error_chain(&e)))
        })?;
        Ok(Rest { base, token, http })
    }

    /// `ws(s)://…` for a path of the gateway.
    pub fn ws_url(&self, path: &str) -> String {
        let b = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.base.trim_start_matches("http://"))
        };
        format!("{b}{path}")
    }

    /// The `Authorization` header's value, when there is a token.
    pub fn auth_header(&self) -> Option<String> {
        self.token.expose().map(|t| format!("token {t}"))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), GatewayError> {
        let url = format!("{}{path}", self.base);
        let mut rq = self.http.request(method.clone(), &url).timeout(timeout);
        if let Some(h) = self.auth_header() {
            rq = rq.header(reqwest::header::AUTHORIZATION, h);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let what = format!("{method} {url}");
        let resp = rq.send().await.map_err(|e| self.transport_error(&what, &e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.transport_error(&what, &e))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok((status, v));
        }
        // Enterprise Gateway may say it in `reason` with an empty `message`
        let said = ["message", "reason"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).filter(|s| !s.trim().is_empty()))
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        let said = self.token.mask(said.trim());
        let kind = match status {
            401 => "auth",
            403 if said.contains("Limit") => "server",
            403 if said.contains("not authorized") => "unauthorized",
            500 if said.contains("Waited too long") || said.contains("launch timeout") => "launch_timeout",
            500 if text.contains("NoSuchKernel") || said.contains("No such kernel") => "no_such_kernel",
            403 => "auth",
            404 => "not_found",
            s if s >= 500 => "server",
            _ => "client",
        };
        let message = match kind {
            "auth" => format!(
                "the gateway at {} refused the token (HTTP {status} on {what}): set exec.gateway_token or \
                 CELLSCI_GATEWAY_TOKEN to the gateway's auth token",
                self.base
            ),
            _ if said.is_empty() => format!("{what}: HTTP {status}"),
            _ => format!("{what}: HTTP {status}: {said}"),
        };
        Err(GatewayError::new(kind, Some(status), message))
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> GatewayError {
        let cause = crate::http::error_chain(e);
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "reset"
        };
        let message = match kind {
            "connect" => format!("cannot reach the gateway at {} ({what}): {cause}", self.base),
            "timeout" => format!("the gateway at {} did not answer in time ({what})", self.base),
            _ => format!("{what} failed: {cause}"),
        };
        GatewayError::new(kind, None, self.token.mask(&message))
    }

    /// `GET /api`: `{version}` (Jupyter Server's), with `gateway_version` on Enterprise Gateway.
    pub async fn api(&self) -> Result<Value, GatewayError> {
        Ok(self.call(reqwest::Method::GET, "/api", None, CALL_TIMEOUT).await?.1)
    }

    /// `GET /api/kernelspecs`: `{default, kernelspecs: {name: {name, spec, resources}}}`.
    pub async fn specs(&self) -> Result<Value, GatewayError> {
        Ok(self.call(reqwest::Method::GET, "/api/kernelspecs", None, CALL_TIMEOUT).await?.1)
    }

    /// `POST /api/kernels`: a new kernel's id.
    pub async fn create(&self, name: &str, env: &Value, timeout: Duration) -> Result<String, GatewayError> {
        let body = json!({"name": name, "env": env});
        let (_, v) = match self.call(reqwest::Method::POST, "/api/kernels", Some(body), timeout).await {
            Err(e) if e.kind == "not_found" || e.kind == "no_such_kernel" => {
                let known = self.spec_names().await.unwrap_or_default();
                return Err(GatewayError::new(
                    "no_such_kernel",
                    e.status,
                    format!(
                        "the gateway at {} has no kernelspec named '{name}' (it has: {})",
                        self.base,
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ),
                ));
            }
            r => r?,
        };
        v.get("id").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            GatewayError::new(
                "protocol",
                None,
                format!("the gateway at {} answered a kernel start without an id", self.base),
            )
        })
    }

    async fn spec_names(&self) -> Result<Vec<String>, GatewayError> {
        let v = self.specs().await?;
        let mut names: Vec<String> =
            v.get("kernelspecs").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// `GET /api/kernels/<id>`: the kernel's model, None when the gateway does not have it (culled,
    /// deleted, or lost in a restart of the gateway).
    pub async fn get(&self, id: &str) -> Result<Option<Value>, GatewayError> {
        match self.call(reqwest::Method::GET, &format!("/api/kernels/{id}"), None, CALL_TIMEOUT).await {
            Ok((_, v)) => Ok(Some(v)),
            Err(e) if e.kind == "not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn interrupt(&self, id: &str) -> Result<(), GatewayError> {
        self.call(reqwest::Method::POST, &format!("/api/kernels/{id}/interrupt"), None, CALL_TIMEOUT).await.map(|_| ())
    }

    /// `POST /api/kernels/<id>/restart`; `Ok(false)` when the gateway does not have the kernel.
    pub async fn restart(&self, id: &str, timeout: Duration) -> Result<bool, GatewayError> {
        match self.call(reqwest::Method::POST, &format!("/api/kernels/{id}/restart"), None, timeout).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind == "not_found" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /api/kernels/<id>`; a kernel already gone is fine.
    pub async fn delete(&self, id: &str, timeout: Duration) -> Result<(), GatewayError> {
        match self.call(reqwest::Method::DELETE, &format!("/api/kernels/{id}"), None, timeout).await {
            Err(e) if e.kind != "not_found" => Err(e),
            _ => Ok(()),
        }
    }
}
