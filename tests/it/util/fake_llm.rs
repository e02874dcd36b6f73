//! A fake OpenAI-compatible server on 127.0.0.1 for tests: real HTTP/1.1 over loopback, owned by the
//! test (a background thread per connection), answering `POST …/chat/completions` from a FIFO queue of
//! scripted replies, then a responder closure, then a default reply.
//!
//! ```ignore
//! let srv = FakeLlm::start();
//! srv.push_reply("hello");                    // 200 completion (streamed when the request streams)
//! srv.push(429, &[("Retry-After", "1")], "slow down");
//! srv.push_stall(30.0);                        // read the request, answer nothing
//! srv.push_drop();                             // read the request, close the connection
//! let url = srv.url();                         // "http://127.0.0.1:PORT/v1"
//! ... run cellsci with llm.base_url = url ...
//! assert_eq!(srv.requests()[0]["model"], "fake-model");
//! ```
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A completion with this text (as SSE when the request asked to stream).
    Text { text: String, finish_reason: String },
    /// A raw HTTP response.
    Http { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// An SSE stream of these content pieces, `delay` apart, ending with finish_reason, usage, [DONE].
    Stream { chunks: Vec<String>, delay: Duration, finish_reason: String, usage: bool },
    /// Read the request and answer nothing for this long, then close.
    Stall(Duration),
    /// Read the request and close the connection at once.
    Drop,
    /// A reasoning model's completion: `reasoning_content` beside the text (streamed as
    /// `delta.reasoning_content` pieces first when the request streams), and `reasoning_tokens` in
    /// `usage.completion_tokens_details`.
    Thinking { reasoning: String, text: String, reasoning_tokens: u64 },
    /// Wait, then give this reply (keeps requests in flight, e.g. to observe a concurrency limit).
    Slow(Duration, Box<Reply>),
}

impl Reply {
    pub fn text(t: &str) -> Reply {
        Reply::Text { text: t.to_string(), finish_reason: "stop".into() }
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }
}

type Responder = std::sync::Arc<dyn Fn(&Value) -> Reply + Send + Sync>;
type Gate = std::sync::Arc<dyn Fn(&Received) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    /// Asked first about every request (URL, headers, body): a dialect's own refusals (a wrong path,
    /// a missing key) come from here, before the queue is touched.
    gate: Option<Gate>,
    queue: VecDeque<Reply>,
    responder: Option<Responder>,
    default: Option<Reply>,
    received: Vec<Received>,
    in_flight: usize,
    max_in_flight: usize,
}

pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FakeLlm {
    /// Start on 127.0.0.1 with a free port.
    pub fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (st, stop) = (state.clone(), stopping.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, stop) = (st.clone(), stop.clone());
                std::thread::spawn(move || serve(conn, st, stop));
            }
        });
        FakeLlm { addr, state, stopping, accept: Mutex::new(Some(accept)) }
    }

    /// The base URL to put in `llm.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue any reply.
    pub fn push_reply_with(&self, r: Reply) {
        self.state().queue.push_back(r);
    }

    /// Queue a completion with this text.
    pub fn push_reply(&self, text: &str) {
        self.push_reply_with(Reply::text(text));
    }

    /// Queue a completion whose text is this JSON value.
    pub fn push_json_reply(&self, v: &Value) {
        self.push_reply(&v.to_string());
    }

    /// Queue a completion cut off by max_tokens (finish_reason "length").
    pub fn push_truncated(&self, text: &str) {
        self.push_reply_with(Reply::Text { text: text.into(), finish_reason: "length".into() });
    }

    /// Queue a raw HTTP response.
    pub fn push(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.push_reply_with(Reply::Http {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        });
    }

    /// Queue a streamed reply made of these pieces.
    pub fn push_stream(&self, chunks: &[&str], delay: Duration) {
        self.push_reply_with(Reply::Stream {
            chunks: chunks.iter().map(|s| s.to_string()).collect(),
            delay,
            finish_reason: "stop".into(),
            usage: true,
        });
    }

    /// Queue a request that gets no answer for `secs`.
    pub fn push_stall(&self, secs: f64) {
        self.push_reply_with(Reply::Stall(Duration::from_secs_f64(secs)));
    }

    /// Queue a request whose connection is closed without an answer.
    pub fn push_drop(&self) {
        self.push_reply_with(Reply::Drop);
    }

    /// Answer requests the queue does not cover with this closure (given the request body).
    pub fn set_responder(&self, f: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.state().responder = Some(std::sync::Arc::new(f));
    }

    /// Ask `f` about every request first (its path with the query, headers, body): `Some(reply)` answers
    /// it (a provider's 404 for a wrong URL, 401 for a missing key), `None` lets the queue and the
    /// responder answer. This is how a test makes the server speak a provider's dialect.
    pub fn set_gate(&self, f: impl Fn(&Received) -> Option<Reply> + Send + Sync + 'static) {
        self.state().gate = Some(std::sync::Arc::new(f));
    }

    /// Answer requests the queue does not cover with this reply (default: the text "fake reply").
    pub fn set_default(&self, r: Reply) {
        self.state().default = Some(r);
    }

    /// Bodies of the requests received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state().received.iter().map(|r| r.body.clone()).collect()
    }

    /// Everything about the requests received.
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state().max_in_flight
    }

    /// Replies still queued.
    pub fn pending(&self) -> usize {
        self.state().queue.len()
    }

    /// Stop accepting connections (stalled answers end too). Idempotent; also done on drop.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = TcpStream::connect(self.addr); // wake the accept loop
        if let Some(h) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req { method, path, headers, body })
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut w = conn;
    while let Some(req) = read_request(&mut reader) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let reply = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let rx = Received {
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: body.clone(),
                at: Instant::now(),
            };
            let gated = st.gate.as_ref().and_then(|g| g(&rx));
            st.received.push(rx);
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
            match gated.or_else(|| st.queue.pop_front()) {
                Some(r) => Ok(r),
                None => match (&st.responder, &st.default) {
                    (Some(f), _) => Err(f.clone()),
                    (None, Some(d)) => Ok(d.clone()),
                    (None, None) => Ok(Reply::text("fake reply")),
                },
            }
        };
        // The responder runs outside the lock: requests answered by one (which may take its time, like
        // a real model) are served concurrently.
        let reply = match reply {
            Ok(r) => r,
            Err(f) => f(&body),
        };
        // "in flight" is the time before the answer starts: counting the writing too would let a
        // client that already has its answer (and sent the next request) look like one more at once
        let mut reply = reply;
        while let Reply::Slow(d, r) = reply {
            std::thread::sleep(d);
            reply = *r;
        }
        state.lock().unwrap_or_else(|e| e.into_inner()).in_flight -= 1;
        let keep = respond(&mut w, &body, reply, &stop);
        if !keep {
            let _ = w.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn usage_for(req: &Value, text: &str) -> Value {
    let prompt_chars: usize = req["messages"]
        .as_array()
        .map(|ms| ms.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum())
        .unwrap_or(0);
    let (p, c) = (prompt_chars as u64 / 4 + 1, text.len() as u64 / 4 + 1);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn model_of(req: &Value) -> String {
    req["model"].as_str().unwrap_or("fake-model").to_string()
}

/// Write one reply; false when the connection must close afterwards.
fn respond(w: &mut TcpStream, req: &Value, reply: Reply, stop: &AtomicBool) -> bool {
    match reply {
        Reply::Http { status, headers, body } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n", reason(status), body.len());
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                head.push_str("content-type: text/plain\r\n");
            }
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            w.write_all(head.as_bytes()).is_ok() && w.write_all(&body).is_ok() && w.flush().is_ok()
        }
        Reply::Text { text, finish_reason } => {
            if req["stream"] == json!(true) {
                let chunks: Vec<String> = split_pieces(&text);
                return stream(w, req, &chunks, Duration::ZERO, &finish_reason, true, &text, stop);
            }
            let body = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model_of(req),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason}],
                "usage": usage_for(req, &text),
            })
            .to_string();
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            w.write_all(head.as_bytes()).is_ok() && w.write_all(body.as_bytes()).is_ok() && w.flush().is_ok()
        }
        Reply::Stream { chunks, delay, finish_reason, usage } => {
            let text: String = chunks.concat();
            stream(w, req, &chunks, delay, &finish_reason, usage, &text, stop)
        }
        Reply::Thinking { reasoning, text, reasoning_tokens } => {
            let mut usage = usage_for(req, &text);
            usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning_tokens});
            if req["stream"] == json!(true) {
                let model = model_of(req);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let mut out = head.to_string();
                let chunk = |delta: Value, finish: Value| {
                    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                };
                for p in split_pieces(&reasoning) {
                    out += &format!("data: {}\n\n", chunk(json!({"reasoning_content": p}), Value::Null));
                }
                for p in split_pieces(&text) {
                    out += &format!("data: {}\n\n", chunk(json!({"content": p}), Value::Null));
                }
                out += &format!("data: {}\n\n", chunk(json!({}), json!("stop")));
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                               "model": model, "choices": [], "usage": usage});
                out += &format!("data: {u}\n\ndata: [DONE]\n\n");
                let _ = w.write_all(out.as_bytes());
                let _ = w.flush();
                return false;
            }
            let body = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model_of(req),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                             "reasoning_content": reasoning}, "finish_reason": "stop"}],
                "usage": usage,
            })
            .to_string();
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            w.write_all(head.as_bytes()).is_ok() && w.write_all(body.as_bytes()).is_ok() && w.flush().is_ok()
        }
        Reply::Stall(d) => {
            let until = Instant::now() + d;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }
        Reply::Drop => false,
        Reply::Slow(d, r) => {
            std::thread::sleep(d);
            respond(w, req, *r, stop)
        }
    }
}

fn split_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if cur.len() >= 6 || c == ' ' || c == '\n' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn stream(
    w: &mut TcpStream,
    req: &Value,
    chunks: &[String],
    delay: Duration,
    finish_reason: &str,
    usage: bool,
    text: &str,
    stop: &AtomicBool,
) -> bool {
    let model = model_of(req);
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let mut send = |v: &str| w.write_all(format!("data: {v}\n\n").as_bytes()).is_ok() && w.flush().is_ok();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    if !send(&chunk(json!({"role": "assistant", "content": ""}), Value::Null)) {
        return false;
    }
    for c in chunks {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if !send(&chunk(json!({"content": c}), Value::Null)) {
            return false;
        }
    }
    send(&chunk(json!({}), json!(finish_reason)));
    if usage && req["stream_options"]["include_usage"] == json!(true) {
        let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [], "usage": usage_for(req, text)});
        send(&u.to_string());
    }
    send("[DONE]");
    false // connection: close ends the body
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
