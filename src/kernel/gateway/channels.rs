//! The kernel's WebSocket (`/api/kernels/<id>/channels?session_id=…`): Jupyter messages as JSON text
//! frames, each naming its channel. A reader task routes shell and iopub messages to channels; a writer
//! task sends what the executor queues. The session id stays the same for the kernel's life: when the
//! socket drops and is opened again with it, the gateway (jupyter_server) replays the messages it
//! buffered meanwhile, so a cell that finished while we were away still delivers its reply.

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::rest::{GatewayError, Rest};
use crate::kernel::cell::Msg;

/// One open WebSocket to a kernel.
pub struct Conn {
    out: mpsc::UnboundedSender<Message>,
    pub shell_rx: mpsc::UnboundedReceiver<Msg>,
    pub iopub_rx: mpsc::UnboundedReceiver<Msg>,
    /// Set (to why) once the socket is closed.
    pub closed: watch::Receiver<Option<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The gateway's socket, acknowledging every segment at once (TCP_QUICKACK re-armed after each read).
///
/// jupyter_server writes a cell's messages (busy, execute_input, outputs, reply, idle) as separate
/// small WebSocket frames on a socket without TCP_NODELAY: Nagle holds each one until the previous is
/// acknowledged, and a client that delays its ACKs (40 ms on Linux, having nothing to send) made every
/// cell take 48 ms instead of 5. Quick ACKs on our side release them at once.
struct QuickAck(tokio::net::TcpStream);

impl QuickAck {
    fn arm(&self) {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if r.is_ready() {
            self.arm();
        }
        r
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A Jupyter message of ours, as the gateway's JSON protocol carries it.
pub fn request(session: &str, msg_type: &str, channel: &str, content: Value) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let msg = json!({
        "header": {
            "msg_id": id,
            "msg_type": msg_type,
            "username": "cellsci",
            "session": session,
            "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    });
    (id, msg.to_string())
}

/// A received frame decoded: its channel and the message.
fn decode(text: &str) -> Option<(String, Msg)> {
    #[derive(serde::Deserialize)]
    struct H {
        #[serde(default)]
        msg_type: String,
        #[serde(default)]
        date: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        msg_id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Frame {
        #[serde(default)]
        channel: String,
        header: H,
        #[serde(default)]
        parent_header: Option<P>,
        #[serde(default)]
        content: Value,
    }
    let f: Frame = match crate::kernel::local::wire::parse_lossy(text.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("dropping a gateway message that does not decode: {e:#}");
            return None;
        }
    };
    let date = f.header.date.and_then(|d| d.as_str().map(str::to_string));
    let parent_id = f.parent_header.and_then(|p| p.msg_id).filter(|s| !s.is_empty());
    Some((f.channel, Msg { msg_type: f.header.msg_type, parent_id, date, content: f.content }))
}

impl Conn {
    /// Open the kernel's WebSocket.
    pub async fn open(rest: &Rest, kernel_id: &str, session: &str) -> Result<Conn, GatewayError> {
        let url = rest.ws_url(&format!("/api/kernels/{kernel_id}/channels?session_id={session}"));
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| GatewayError::new("config", None, format!("bad gateway WebSocket URL {url}: {e}")))?;
        if let Some(h) = rest.auth_header() {
            let v = h
                .parse()
                .map_err(|_| GatewayError::new("config", None, "the gateway token is not a valid header value"))?;
            req.headers_mut().insert("Authorization", v);
        }
        // Outputs of many MB come as one message (and one frame): no limit of ours cuts them.
        let mut cfg = WebSocketConfig::default();
        cfg.max_message_size = None;
        cfg.max_frame_size = None;
        let host = req.uri().host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
        let tls = req.uri().scheme_str() == Some("wss");
        let port = req.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| {
                GatewayError::new("connect", None, format!("cannot reach the gateway at {}: {e}", rest.base))
            })?;
            let _ = tcp.set_nodelay(true);
            tokio_tungstenite::client_async_tls_with_config(req, QuickAck(tcp), Some(cfg), None)
                .await
                .map_err(|e| ws_error(rest, &url, e))
        };
        let (ws, _) = match tokio::time::timeout(std::time::Duration::from_secs(30), connect).await {
            Err(_) => return Err(GatewayError::new("timeout", None, format!("opening {url} timed out"))),
            Ok(r) => r?,
        };
        use futures_util::{SinkExt, StreamExt};
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (shell_tx, shell_rx) = mpsc::unbounded_channel();
        let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let closed_tx = std::sync::Arc::new(closed_tx);
        let c2 = closed_tx.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let Some((channel, m)) = decode(t.as_str()) else { continue };
                        let tx = match channel.as_str() {
                            "iopub" => &iopub_tx,
                            "shell" => &shell_tx,
                            _ => continue,
                        };
                        let _ = tx.send(m);
                    }
                    Some(Ok(Message::Close(f))) => {
                        break format!(
                            "the gateway closed the kernel's WebSocket{}",
                            f.map(|f| format!(" ({})", f.reason)).unwrap_or_default()
                        )
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("the kernel's WebSocket failed: {e}"),
                    None => break "the kernel's WebSocket ended".to_string(),
                }
            };
            c2.send_replace(Some(why));
        });
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if let Err(e) = sink.send(m).await {
                    closed_tx.send_replace(Some(format!("sending on the kernel's WebSocket failed: {e}")));
                    break;
                }
            }
            let _ = sink.close().await;
        });
        Ok(Conn { out, shell_rx, iopub_rx, closed, tasks: vec![reader, writer] })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Queue a frame; false when the socket is gone.
    pub fn send(&self, text: String) -> bool {
        !self.is_closed() && self.out.send(Message::text(text)).is_ok()
    }

    /// Throw away what came for earlier requests.
    pub fn drain(&mut self) {
        while self.iopub_rx.try_recv().is_ok() {}
        while self.shell_rx.try_recv().is_ok() {}
    }
}

fn ws_error(rest: &Rest, url: &str, e: tokio_tungstenite::tungstenite::Error) -> GatewayError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(r) => {
            let s = r.status().as_u16();
            match s {
                401 | 403 => GatewayError::new(
                    "auth",
                    Some(s),
                    format!("the gateway at {} refused the token (HTTP {s} on its WebSocket)", rest.base),
                ),
                404 => GatewayError::new("not_found", Some(s), format!("{url}: HTTP 404 (no such kernel)")),
                s if s >= 500 => GatewayError::new("server", Some(s), format!("{url}: HTTP {s}")),
                _ => GatewayError::new("client", Some(s), format!("{url}: HTTP {s}")),
            }
        }
        E::Io(io) => GatewayError::new("connect", None, format!("cannot reach the gateway at {}: {io}", rest.base)),
        other => GatewayError::new("reset", None, format!("{url}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_routed_by_channel_and_parent() {
        let (id, text) = request("s1", "execute_request", "shell", json!({"code": "1"}));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["header"]["msg_id"], json!(id));
        assert_eq!(v["channel"], "shell");
        let frame = json!({"channel": "iopub", "header": {"msg_type": "stream", "date": "2026-01-01T00:00:00Z"},
            "parent_header": {"msg_id": id}, "content": {"name": "stdout", "text": "x"}});
        let (ch, m) = decode(&frame.to_string()).unwrap();
        assert_eq!((ch.as_str(), m.msg_type.as_str(), m.parent_id.as_deref()), ("iopub", "stream", Some(id.as_str())));
        // the gateway's own status messages (restarting, dead) have an empty parent
        let st = json!({"channel": "iopub", "header": {"msg_type": "status"}, "parent_header": {}, "content": {"execution_state": "restarting"}});
        assert_eq!(decode(&st.to_string()).unwrap().1.parent_id, None);
        assert!(decode("not json").is_none());
    }
}
