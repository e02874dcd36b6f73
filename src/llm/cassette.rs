//! Record and replay of LLM exchanges: a cassette is a JSON-lines file, one exchange per line,
//! `{"request": {model, messages, temperature, max_tokens, json, extra}, "response": {text,
//! finish_reason, usage, model}}` (or `"error": {kind, status, message}` for the deterministic failures
//! `empty`, `truncated`, `client`, `bad_body`). No headers are written, so never the key; every line
//! is masked as well.
//!
//! Replay serves, for each request, the recorded exchanges with an identical request in their order;
//! when they are used up the last one is served again. A request the cassette does not hold fails
//! (`replay_miss`) with the closest recorded request and where it differs. Transport failures
//! (timeouts, 5xx...) are not recorded: a replay gives what the run finally got.
//!
//! Recording appends and never truncates: an existing cassette keeps its exchanges (delete it to start
//! afresh), and several runs may record into one cassette at once. Each exchange is one line written
//! by one `write` on an `O_APPEND` descriptor under an exclusive `flock`, so lines of concurrent
//! recorders never interleave or overwrite each other.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Failure, Kind, Reply, Request};

pub struct Recorder {
    path: PathBuf,
    file: std::fs::File,
}

impl Recorder {
    /// Record into `path`: appended to when it exists, created (with its folders) when not.
    pub fn open(path: &Path) -> Result<Recorder, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| format!("cannot open cassette {} for appending: {e}", path.display()))?;
        Ok(Recorder { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one exchange (flushed at once so an interrupted run keeps what it paid for).
    pub fn write(
        &mut self,
        req: &Request,
        r: &Result<Reply, Failure>,
        mask: &dyn Fn(&str) -> String,
    ) -> std::io::Result<()> {
        let entry = match r {
            Ok(rep) => json!({"request": req.key(), "response": rep.to_json()}),
            Err(f)
                if matches!(
                    f.kind,
                    Kind::Empty | Kind::Truncated | Kind::Client | Kind::BadBody | Kind::ContentFilter
                ) =>
            {
                let mut e = json!({"request": req.key(),
                    "error": {"kind": f.kind.as_str(), "status": f.status, "message": f.message}});
                if let Some(rep) = &f.reply {
                    e["response"] = rep.to_json();
                }
                e
            }
            Err(_) => return Ok(()),
        };
        let mut line = mask(&serde_json::to_string(&entry).unwrap_or_default());
        line.push('\n');
        let _lock = Flock::exclusive(&self.file)?;
        // A run killed mid-line (before this fix, or by a full disk) left a half line: start on a new
        // one, so this exchange stays readable and only the broken line is lost.
        let len = self.file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut last, len - 1)?;
            if last[0] != b'\n' {
                line.insert(0, '\n');
            }
        }
        crate::files::append_whole(&self.file, line.as_bytes())
    }
}

/// An exclusive `flock` on a file, released when dropped (advisory: every recorder takes it).
struct Flock<'a>(&'a std::fs::File);

impl<'a> Flock<'a> {
    fn exclusive(f: &'a std::fs::File) -> std::io::Result<Flock<'a>> {
        loop {
            // SAFETY: flock on a descriptor we own for the duration of the borrow.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot fail in a way we could act on.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

struct Entry {
    request: Value,
    outcome: Result<Reply, Failure>,
    used: bool,
}

pub struct Player {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Player {
    pub fn load(path: &Path) -> Result<Player, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read cassette {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("cassette {} line {}: not JSON: {e}", path.display(), i + 1))?;
            let request = v
                .get("request")
                .cloned()
                .ok_or_else(|| format!("cassette {} line {}: no \"request\"", path.display(), i + 1))?;
            let reply = v.get("response").and_then(Reply::from_json);
            let outcome = match v.get("error") {
                Some(e) => {
                    let kind = e.get("kind").and_then(Value::as_str).and_then(Kind::parse).unwrap_or(Kind::BadBody);
                    let mut f = Failure::new(kind, e.get("message").and_then(Value::as_str).unwrap_or("").to_string());
                    f.status = e.get("status").and_then(Value::as_u64).map(|s| s as u16);
                    f.reply = reply.map(Box::new);
                    Err(f)
                }
                None => reply
                    .ok_or_else(|| format!("cassette {} line {}: no \"response\" text", path.display(), i + 1))
                    .map(Ok)?,
            };
            entries.push(Entry { request, outcome, used: false });
        }
        Ok(Player { path: path.to_path_buf(), entries })
    }

    pub fn lookup(&mut self, key: &Value) -> Result<Reply, Failure> {
        let hit = self
            .entries
            .iter()
            .position(|e| !e.used && &e.request == key)
            .or_else(|| self.entries.iter().rposition(|e| &e.request == key));
        if let Some(i) = hit {
            self.entries[i].used = true;
            return self.entries[i].outcome.clone();
        }
        let closest =
            self.entries.iter().enumerate().max_by(|a, b| {
                similarity(&a.1.request, key).total_cmp(&similarity(&b.1.request, key)).then(b.0.cmp(&a.0))
            });
        let msg = match closest {
            None => format!("the cassette {} holds no exchanges", self.path.display()),
            Some((i, e)) => format!(
                "the cassette {} holds no exchange for this request ({} recorded); the closest (#{}) differs at {}",
                self.path.display(),
                self.entries.len(),
                i + 1,
                first_difference(&e.request, key, "").unwrap_or_else(|| "nothing (?)".into())
            ),
        };
        Err(Failure::new(Kind::ReplayMiss, msg))
    }
}

/// How alike two requests are: equal fields and messages, then the common prefix of the first
/// message that differs.
fn similarity(a: &Value, b: &Value) -> f64 {
    let mut s = 0.0;
    for k in ["model", "temperature", "max_tokens", "json", "extra"] {
        if a.get(k) == b.get(k) {
            s += 1.0;
        }
    }
    let empty = Vec::new();
    let ma = a.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    let mb = b.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    for (x, y) in ma.iter().zip(mb) {
        if x == y {
            s += 10.0;
        } else {
            let (cx, cy) = (x.to_string(), y.to_string());
            let common = cx.bytes().zip(cy.bytes()).take_while(|(p, q)| p == q).count();
            s += 9.0 * common as f64 / cx.len().max(cy.len()).max(1) as f64;
            break;
        }
    }
    if ma.len() == mb.len() {
        s += 1.0;
    }
    s
}

/// Where two JSON values first differ: `messages[1].content at char 57: recorded '…' vs now '…'`.
pub fn first_difference(rec: &Value, now: &Value, path: &str) -> Option<String> {
    let at = |p: &str| if p.is_empty() { "the request".to_string() } else { p.to_string() };
    match (rec, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().collect();
            keys.extend(b.keys().filter(|k| !a.contains_key(*k)));
            for k in keys {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = first_difference(x, y, &sub) {
                            return Some(d);
                        }
                    }
                    (Some(x), None) => return Some(format!("{sub}: recorded {} vs now absent", short(x))),
                    (None, Some(y)) => return Some(format!("{sub}: recorded absent vs now {}", short(y))),
                    (None, None) => {}
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(d) = first_difference(x, y, &format!("{path}[{}]", i + 1)) {
                    return Some(d);
                }
            }
            (a.len() != b.len()).then(|| format!("{}: recorded {} items vs now {}", at(path), a.len(), b.len()))
        }
        (Value::String(a), Value::String(b)) if a != b => {
            let common: usize = a.chars().zip(b.chars()).take_while(|(p, q)| p == q).count();
            let around = |s: &str| {
                let from = common.saturating_sub(20);
                let piece: String = s.chars().skip(from).take(60).collect();
                format!("'{}{}'", if from > 0 { "…" } else { "" }, piece.replace('\n', "\\n"))
            };
            Some(format!("{} at char {}: recorded {} vs now {}", at(path), common + 1, around(a), around(b)))
        }
        (x, y) if x != y => Some(format!("{}: recorded {} vs now {}", at(path), short(x), short(y))),
        _ => None,
    }
}

fn short(v: &Value) -> String {
    super::head(&v.to_string(), 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_names_the_place() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hello world"}]});
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]});
        let d = first_difference(&a, &b, "").unwrap();
        assert!(d.starts_with("messages[1].content at char 7"), "{d}");
        let c = json!({"model": "n", "messages": []});
        assert!(first_difference(&a, &c, "").unwrap().starts_with("model at char 1"));
    }
}
