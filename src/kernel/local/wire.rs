//! The wire protocol: signed multipart kernel messages decoded into raw JSON (outputs stay exactly
//! what the kernel sent), and the reader tasks that forward them from a socket to a channel.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::sync::mpsc;
use zeromq::SocketRecv;

pub use crate::kernel::cell::Msg;

/// Split a multipart message, check its signature and decode it. This is jupyter-zmq-client's
/// `RawMessage::from_multipart` without its copy of the signed parts into one buffer: the HMAC is
/// computed part by part, so a 20 MB output is never held twice while it is checked.
fn decode(zmsg: zeromq::ZmqMessage, mac: &Option<ring::hmac::Key>) -> Result<Msg> {
    let parts = zmsg.into_vec();
    let d = parts.iter().position(|p| &p[..] == b"<IDS|MSG>").context("kernel message without delimiter")?;
    if parts.len() < d + 6 {
        bail!("short kernel message");
    }
    let j = &parts[d + 2..];
    if let Some(key) = mac {
        let mut ctx = ring::hmac::Context::with_key(key);
        for p in &j[..4] {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let expected = unhex(&parts[d + 1]).context("kernel message with a malformed signature")?;
        let got = tag.as_ref();
        // constant-time comparison
        let diff = expected.len() ^ got.len() | expected.iter().zip(got).fold(0u8, |a, (x, y)| a | (x ^ y)) as usize;
        if diff != 0 {
            bail!("kernel message with a bad signature");
        }
    }
    #[derive(serde::Deserialize)]
    struct H {
        #[serde(default)]
        msg_type: String,
        #[serde(default)]
        date: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        msg_id: Option<String>,
    }
    let h: H = parse_lossy(&j[0])?;
    let p: P = parse_lossy(&j[1]).unwrap_or(P { msg_id: None });
    let content: Value = parse_lossy(&j[3])?;
    Ok(Msg { msg_type: h.msg_type, parent_id: p.msg_id, date: h.date, content })
}

/// Parse a message part; when it is not strict JSON because of unpaired surrogates, parse it again
/// with those replaced by U+FFFD, as Jupyter's own clients do.
///
/// Python strings may hold lone surrogates (`'\udcfe'`, or bytes decoded with `surrogateescape`).
/// jupyter_client encodes them as raw invalid UTF-8 bytes (its `surrogateescape` encoder), or, for
/// surrogates it cannot encode that way, as `\udXXX` escapes; serde_json rejects both, and a rejected
/// `execute_reply` left its cell waiting until the timeout. The strict parse runs first, so a
/// well-formed (multi-megabyte) output is never copied.
pub(crate) fn parse_lossy<T: serde::de::DeserializeOwned>(part: &[u8]) -> Result<T> {
    match serde_json::from_slice(part) {
        Ok(v) => Ok(v),
        Err(strict) => serde_json::from_str(&replace_lone_surrogates(&String::from_utf8_lossy(part)))
            .with_context(|| format!("kernel message part is not JSON ({strict})")),
    }
}

/// JSON text with every `\uXXXX` escape of an unpaired surrogate replaced by `\ufffd`; a properly
/// paired high+low escape and an escaped backslash followed by `u` are kept.
fn replace_lone_surrogates(s: &str) -> String {
    let b = s.as_bytes();
    let hex4 = |i: usize| -> Option<u32> {
        let h = b.get(i..i + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok().filter(|_| h.iter().all(u8::is_ascii_hexdigit))
    };
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included
            continue;
        }
        let Some(v) = hex4(i + 2) else {
            i += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&v)
            && b.get(i + 6) == Some(&b'\\')
            && b.get(i + 7) == Some(&b'u')
            && hex4(i + 8).is_some_and(|w| (0xDC00..0xE000).contains(&w));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&v) {
            out.push_str(&s[last..i]);
            out.push_str("\\ufffd");
            i += 6;
            last = i;
        } else {
            i += 6;
        }
    }
    out.push_str(&s[last..]);
    out
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let v = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.chunks(2).map(|p| Some(v(p[0])? << 4 | v(p[1])?)).collect()
}

/// Read messages from a socket forever, forwarding them; ends when the socket or the receiver does.
pub(super) fn reader<S: SocketRecv + Send + 'static>(
    mut socket: S,
    mac: Option<ring::hmac::Key>,
    tx: mpsc::UnboundedSender<Msg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(zmsg) = socket.recv().await else { break };
            let msg = match decode(zmsg, &mac) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("dropping a kernel message that does not decode: {e:#}");
                    continue;
                }
            };
            tracing::trace!(msg_type = %msg.msg_type, parent = ?msg.parent_id, "kernel message");
            if tx.send(msg).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &ring::hmac::Key, parts: &[&str], tamper: bool) -> zeromq::ZmqMessage {
        let mut ctx = ring::hmac::Context::with_key(key);
        for p in parts {
            ctx.update(p.as_bytes());
        }
        let sig: String = ctx.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut v: Vec<bytes::Bytes> = vec![bytes::Bytes::from_static(b"<IDS|MSG>"), sig.into_bytes().into()];
        for (i, p) in parts.iter().enumerate() {
            let p = if tamper && i == 3 { p.replace('1', "2") } else { p.to_string() };
            v.push(p.into_bytes().into());
        }
        zeromq::ZmqMessage::try_from(v).unwrap()
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let r = |s: &str| replace_lone_surrogates(s);
        assert_eq!(r(r#""a\udcfe b""#), r#""a\ufffd b""#);
        assert_eq!(r(r#""\ud83d\ude00""#), r#""\ud83d\ude00""#, "a valid pair is kept");
        assert_eq!(r(r#""\ud83d\u0041""#), r#""\ufffd\u0041""#, "a high surrogate without its low half");
        assert_eq!(r(r#""\\udcfe""#), r#""\\udcfe""#, "an escaped backslash, not an escape");
        assert_eq!(r(r#""\\\udcfe""#), r#""\\\ufffd""#);
        assert_eq!(r(r#""\ude00\ud83d""#), r#""\ufffd\ufffd""#, "reversed halves");
        let v: Value = parse_lossy(b"{\"t\": \"x\xfe\\udcff\"}").unwrap();
        assert_eq!(v["t"], "x\u{fffd}\u{fffd}");
    }

    #[test]
    fn signatures_are_checked_part_by_part() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let parts = [r#"{"msg_type": "stream", "date": "d"}"#, r#"{"msg_id": "p"}"#, "{}", r#"{"text": "1"}"#];
        let m = decode(signed(&key, &parts, false), &Some(key.clone())).unwrap();
        assert_eq!((m.msg_type.as_str(), m.parent_id.as_deref()), ("stream", Some("p")));
        assert!(decode(signed(&key, &parts, true), &Some(key)).is_err(), "a tampered message is rejected");
    }
}
