//! Turning iopub messages into nbformat outputs the way nbclient does: consecutive streams of the same
//! name merged, carriage returns and backspaces applied, `clear_output(wait=True)` deferred to the next
//! output, `update_display_data` applied by display id, `execute_result` with its count, errors with
//! their ANSI-coloured traceback kept (the notebook shows colours; scripts get a stripped copy).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// New data for every output, in any cell, that shows `display_id` (Jupyter's display ids outlive the
/// cell that made them: `handle.update()` in a later cell changes the earlier output).
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayUpdate {
    pub display_id: String,
    pub data: Value,
    pub metadata: Value,
}

/// What a cell's messages built: its outputs, which of them carry a display id, and the display
/// updates that earlier cells' outputs must also receive, in the order they came.
#[derive(Debug, Clone, Default)]
pub struct Built {
    pub outputs: Vec<Value>,
    /// (output index, display id) of this cell's outputs that have one.
    pub display_ids: Vec<(usize, String)>,
    pub display_updates: Vec<DisplayUpdate>,
}

/// What one cell keeps of each stream (stdout, stderr) by default: a cell printing without end keeps
/// its first and its last half of this, around a line saying how much was dropped (`exec.max_output_bytes`,
/// `k:execute{max_output_bytes=}`; 0 keeps everything).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// One stream of a cell past its cap: the head stays in its output, the tail is kept here (at most twice
/// its share, trimmed as it grows) and joins the head, after a marker, when the cell finishes.
#[derive(Clone, Default, Debug)]
struct Overflow {
    /// The output holding the head.
    at: usize,
    tail: String,
    /// Bytes dropped so far (those trimmed off the tail).
    dropped: u64,
}

#[derive(Default)]
pub struct OutputBuilder {
    pub outputs: Vec<Value>,
    /// Bytes each stream may keep in this cell (0: no cap).
    cap: usize,
    /// Bytes each stream has kept in its head so far.
    kept: HashMap<String, usize>,
    /// Streams past their cap.
    overflow: HashMap<String, Overflow>,
    clear_pending: bool,
    /// display_id → indices of outputs showing it.
    display: HashMap<String, Vec<usize>>,
    /// Every display-id message, for outputs of earlier cells.
    updates: Vec<DisplayUpdate>,
    /// Index of an output whose stream text still needs carriage-return processing.
    dirty_streams: Vec<usize>,
}

/// An object from owned members. (`json!` would serialize each member again: a copy of a 20 MB image.)
fn obj(members: Vec<(&str, Value)>) -> Value {
    Value::Object(members.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn take_obj(content: &mut Value, key: &str) -> Value {
    match content.get_mut(key) {
        Some(v @ Value::Object(_)) => v.take(),
        _ => json!({}),
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A byte count for people: `45.2 MB`, `812 KB`, `17 bytes`.
pub fn human_bytes(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{} KB", n / 1000)
    } else {
        format!("{n} bytes")
    }
}

impl OutputBuilder {
    /// A builder whose streams keep at most `cap` bytes each (0: everything).
    pub fn with_cap(cap: usize) -> OutputBuilder {
        OutputBuilder { cap, ..Default::default() }
    }

    /// Stream text for `name` under the cap: the part that fits the head goes on as usual; the rest goes
    /// to the stream's tail. Returns (text for the head, whether the stream is past its cap).
    fn admit(&mut self, name: &str, text: String) -> (String, Option<String>) {
        if self.cap == 0 {
            return (text, None);
        }
        if self.overflow.contains_key(name) {
            return (String::new(), Some(text));
        }
        let head_budget = self.cap - self.cap / 2;
        let kept = self.kept.entry(name.to_string()).or_default();
        if *kept + text.len() <= head_budget {
            *kept += text.len();
            return (text, None);
        }
        // cut at the last line break that fits, else at a char boundary
        let room = floor_boundary(&text, head_budget - *kept);
        // (a piece with no line break that fits goes whole to the tail, unless the head is still empty)
        let cut = text[..room].rfind('\n').map(|i| i + 1).unwrap_or(if *kept > 0 { 0 } else { room });
        *kept += cut;
        let mut head = text;
        let rest = head.split_off(cut);
        (head, Some(rest))
    }

    /// Keep `rest` in the tail of stream `name` (its head is in output `at`).
    fn keep_in_tail(&mut self, name: &str, at: usize, rest: &str) {
        let tail_budget = self.cap / 2;
        let o = self.overflow.entry(name.to_string()).or_insert_with(|| Overflow { at, ..Default::default() });
        o.tail.push_str(rest);
        if o.tail.len() > tail_budget.saturating_mul(2).max(64) {
            let cut = o.tail.len() - tail_budget;
            let cut = (cut..=o.tail.len()).find(|&i| o.tail.is_char_boundary(i)).unwrap_or(o.tail.len());
            o.tail.drain(..cut);
            o.dropped += cut as u64;
        }
        if rest.contains(['\r', '\u{8}']) && !self.dirty_streams.contains(&at) {
            self.dirty_streams.push(at);
        }
    }

    /// Join each capped stream's tail to its head, after the line saying what was dropped.
    fn close_overflows(outputs: &mut [Value], overflow: &HashMap<String, Overflow>, cap: usize) {
        let tail_budget = cap / 2;
        for (name, o) in overflow {
            let mut tail = o.tail.as_str();
            let mut dropped = o.dropped;
            if tail.len() > tail_budget {
                let cut = tail.len() - tail_budget;
                let cut = (cut..=tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
                tail = &tail[cut..];
                dropped += cut as u64;
            }
            if dropped > 0 {
                // start the tail at a line break when one is near
                if let Some(nl) = tail.as_bytes().iter().take(4096).position(|&b| b == b'\n') {
                    tail = &tail[nl + 1..];
                    dropped += nl as u64 + 1;
                }
            }
            let Some(Value::String(t)) = outputs.get_mut(o.at).and_then(|v| v.get_mut("text")) else { continue };
            if dropped > 0 {
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push('\n');
                }
                t.push_str(&format!(
                    "\n[... cellsci: {} of {name} dropped here; this cell keeps the first and the last {} of each \
                     stream (exec.max_output_bytes) ...]\n\n",
                    human_bytes(dropped),
                    human_bytes(tail_budget as u64)
                ));
            }
            t.push_str(tail);
        }
    }

    /// Append stream text: to the last output when it is the same stream, else as a new output.
    fn push_stream(&mut self, name: &str, text: String) -> Option<usize> {
        if let Some(last) = self.outputs.last_mut() {
            if last.get("output_type").and_then(Value::as_str) == Some("stream")
                && last.get("name").and_then(Value::as_str) == Some(name)
            {
                if let Some(Value::String(t)) = last.get_mut("text") {
                    t.push_str(&text);
                }
                let i = self.outputs.len() - 1;
                self.mark_dirty(i, &text);
                return Some(i);
            }
        }
        let dirty = text.contains(['\r', '\u{8}']);
        self.outputs.push(obj(vec![
            ("name", Value::String(name.to_string())),
            ("output_type", json!("stream")),
            ("text", Value::String(text)),
        ]));
        let i = self.outputs.len() - 1;
        if dirty {
            self.dirty_streams.push(i);
        }
        Some(i)
    }

    /// The last output of stream `name`.
    fn last_stream(&self, name: &str) -> Option<usize> {
        self.outputs.iter().rposition(|o| {
            o.get("output_type").and_then(Value::as_str) == Some("stream")
                && o.get("name").and_then(Value::as_str) == Some(name)
        })
    }

    /// Handle one iopub message. Returns the index of the output it created or changed (None when it
    /// changed nothing visible).
    pub fn handle(&mut self, msg_type: &str, mut content: Value) -> Option<usize> {
        if self.clear_pending && matches!(msg_type, "stream" | "display_data" | "execute_result" | "error") {
            self.clear();
        }
        match msg_type {
            "stream" => {
                let name = content.get("name").and_then(Value::as_str).unwrap_or("stdout").to_string();
                let text = match content.get_mut("text") {
                    Some(Value::String(s)) => std::mem::take(s),
                    _ => String::new(),
                };
                let (text, rest) = self.admit(&name, text);
                if let Some(rest) = rest {
                    // past the cap: the head's output gets the rest's tail when the cell finishes
                    let at = match self.overflow.get(&name) {
                        Some(o) => o.at,
                        None => {
                            let i =
                                if text.is_empty() { self.last_stream(&name) } else { self.push_stream(&name, text) };
                            let i = i.unwrap_or_else(|| self.push_stream(&name, String::new()).unwrap_or(0));
                            self.keep_in_tail(&name, i, &rest);
                            return Some(i);
                        }
                    };
                    self.keep_in_tail(&name, at, &rest);
                    return Some(at);
                }
                self.push_stream(&name, text)
            }
            "display_data" => {
                let display_id = display_id(&content);
                let data = take_obj(&mut content, "data");
                let metadata = take_obj(&mut content, "metadata");
                if let Some(id) = &display_id {
                    self.update_display(id, &data, &metadata);
                }
                self.outputs.push(obj(vec![
                    ("data", data),
                    ("metadata", metadata),
                    ("output_type", json!("display_data")),
                ]));
                let i = self.outputs.len() - 1;
                if let Some(id) = display_id {
                    self.display.entry(id).or_default().push(i);
                }
                Some(i)
            }
            "update_display_data" => {
                // not an output of its own: new data for the outputs (of any cell) with its id
                let id = display_id(&content)?;
                let data = take_obj(&mut content, "data");
                let metadata = take_obj(&mut content, "metadata");
                self.update_display(&id, &data, &metadata)
            }
            "execute_result" => {
                let display_id = display_id(&content);
                let count = content.get("execution_count").cloned().unwrap_or(Value::Null);
                let data = take_obj(&mut content, "data");
                let metadata = take_obj(&mut content, "metadata");
                if let Some(id) = &display_id {
                    self.update_display(id, &data, &metadata);
                }
                self.outputs.push(obj(vec![
                    ("data", data),
                    ("execution_count", count),
                    ("metadata", metadata),
                    ("output_type", json!("execute_result")),
                ]));
                let i = self.outputs.len() - 1;
                if let Some(id) = display_id {
                    self.display.entry(id).or_default().push(i);
                }
                Some(i)
            }
            "error" => {
                let ename = content.get("ename").cloned().unwrap_or(json!(""));
                let evalue = content.get("evalue").cloned().unwrap_or(json!(""));
                let tb = content.get_mut("traceback").map(Value::take).unwrap_or(json!([]));
                self.outputs.push(obj(vec![
                    ("ename", ename),
                    ("evalue", evalue),
                    ("output_type", json!("error")),
                    ("traceback", tb),
                ]));
                Some(self.outputs.len() - 1)
            }
            "clear_output" => {
                if content.get("wait").and_then(Value::as_bool).unwrap_or(false) {
                    self.clear_pending = true;
                } else {
                    self.clear();
                }
                None
            }
            // comm_open / comm_msg / comm_close (widgets, custom comms) and anything else: not outputs
            _ => None,
        }
    }

    /// Give every output showing `id` new data and metadata (as nbclient's `_update_display_id`), and
    /// record the update for earlier cells. Returns the last output of this cell it changed.
    fn update_display(&mut self, id: &str, data: &Value, metadata: &Value) -> Option<usize> {
        self.updates.push(DisplayUpdate { display_id: id.to_string(), data: data.clone(), metadata: metadata.clone() });
        let idx = self.display.get(id)?;
        for &i in idx {
            if let Some(Value::Object(o)) = self.outputs.get_mut(i) {
                o.insert("data".into(), data.clone());
                o.insert("metadata".into(), metadata.clone());
            }
        }
        idx.last().copied()
    }

    fn mark_dirty(&mut self, i: usize, text: &str) {
        if text.contains(['\r', '\u{8}']) && !self.dirty_streams.contains(&i) {
            self.dirty_streams.push(i);
        }
    }

    fn clear(&mut self) {
        self.outputs.clear();
        self.kept.clear();
        self.overflow.clear();
        self.display.clear();
        self.dirty_streams.clear();
        self.clear_pending = false;
    }

    /// The finished outputs with their display ids and the display updates for earlier cells.
    pub fn finish_all(mut self) -> Built {
        let mut display_ids: Vec<(usize, String)> = std::mem::take(&mut self.display)
            .into_iter()
            .flat_map(|(id, v)| v.into_iter().map(move |i| (i, id.clone())))
            .collect();
        display_ids.sort();
        let display_updates = std::mem::take(&mut self.updates);
        Built { outputs: self.finish(), display_ids, display_updates }
    }

    /// The finished outputs (carriage returns and backspaces applied).
    pub fn finish(mut self) -> Vec<Value> {
        Self::close_overflows(&mut self.outputs, &self.overflow, self.cap);
        for i in std::mem::take(&mut self.dirty_streams) {
            if let Some(Value::String(t)) = self.outputs.get_mut(i).and_then(|o| o.get_mut("text")) {
                *t = apply_control_chars(t);
            }
        }
        self.outputs
    }

    /// A copy of the outputs so far, as they would be finished (for partial results).
    pub fn snapshot(&self) -> Vec<Value> {
        let b = OutputBuilder {
            outputs: self.outputs.clone(),
            dirty_streams: self.dirty_streams.clone(),
            cap: self.cap,
            overflow: self.overflow.clone(),
            ..Default::default()
        };
        b.finish()
    }
}

/// The display id of a display message: `transient.display_id` (transient data is never stored in
/// the notebook). A `transient` that is null or not an object has none, as in nbclient.
fn display_id(content: &Value) -> Option<String> {
    content.get("transient")?.get("display_id")?.as_str().map(String::from)
}

/// nbclient's stream clean-up: `.*\r(?=[^\n])` removed on every line (text overwritten by a carriage
/// return), then `[^\n]\b` removed until nothing changes (backspaces).
pub fn apply_control_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (n, line) in s.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        // the last '\r' that is followed by another character on this line
        let b = line.as_bytes();
        let mut cut = 0;
        for (i, &c) in b.iter().enumerate() {
            if c == b'\r' && i + 1 < b.len() {
                cut = i + 1;
            }
        }
        out.push_str(&line[cut..]);
    }
    if !out.contains('\u{8}') {
        return out;
    }
    let mut res = String::with_capacity(out.len());
    for ch in out.chars() {
        if ch == '\u{8}' {
            match res.chars().last() {
                Some(prev) if prev != '\n' && prev != '\u{8}' => {
                    res.pop();
                }
                _ => res.push(ch),
            }
        } else {
            res.push(ch);
        }
    }
    res
}

/// Remove ANSI escape sequences (colours, cursor moves) from text shown to scripts.
pub fn strip_ansi(s: &str) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])").expect("valid")
    });
    re.replace_all(s, "").into_owned()
}

/// An output object in the message shape (for the `on_output` callback and logs): kept as is.
pub fn summary(o: &Value) -> String {
    match o.get("output_type").and_then(Value::as_str) {
        Some("stream") => o.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
        Some("error") => {
            let tb: Vec<String> = o
                .get("traceback")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(strip_ansi).collect())
                .unwrap_or_default();
            format!("{}\n", tb.join("\n"))
        }
        Some(_) => {
            let data = o.get("data").and_then(Value::as_object);
            match data.and_then(|d| d.get("text/plain")).and_then(Value::as_str) {
                Some(t) => format!("{t}\n"),
                None => format!(
                    "[{}]\n",
                    data.map(|d| d.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()
                ),
            }
        }
        None => String::new(),
    }
}

/// Keep only timing keys nbclient records, in its order.
pub fn timing_map(t: &HashMap<&'static str, String>) -> Map<String, Value> {
    let mut m = Map::new();
    for k in ["iopub.execute_input", "iopub.status.busy", "iopub.status.idle", "shell.execute_reply"] {
        if let Some(v) = t.get(k) {
            m.insert(k.to_string(), json!(v));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_return_and_backspace() {
        assert_eq!(apply_control_chars("10%\r50%\r100%\ndone\n"), "100%\ndone\n");
        assert_eq!(apply_control_chars("a\r\nb"), "a\r\nb");
        assert_eq!(apply_control_chars("abc\u{8}\u{8}x"), "ax");
    }

    #[test]
    fn streams_merge_and_clear_wait() {
        let mut b = OutputBuilder::default();
        b.handle("stream", json!({"name": "stdout", "text": "a"}));
        b.handle("stream", json!({"name": "stdout", "text": "b\n"}));
        b.handle("stream", json!({"name": "stderr", "text": "e"}));
        assert_eq!(b.outputs.len(), 2);
        b.handle("clear_output", json!({"wait": true}));
        assert_eq!(b.outputs.len(), 2);
        b.handle("stream", json!({"name": "stdout", "text": "z"}));
        let out = b.finish();
        assert_eq!(out, vec![json!({"name": "stdout", "output_type": "stream", "text": "z"})]);
    }

    #[test]
    fn a_capped_stream_keeps_head_and_tail_per_stream_and_a_clear_starts_over() {
        let mut b = OutputBuilder::with_cap(1000);
        for i in 0..1000 {
            b.handle("stream", json!({"name": "stdout", "text": format!("out {i:04}\n")}));
            b.handle("stream", json!({"name": "stderr", "text": format!("err {i:04}\n")}));
        }
        let snap = b.snapshot();
        let out = b.finish();
        assert_eq!(snap, out, "a partial result shows what the finished one will");
        // alternating streams make an output each until their cap; past it, none
        assert!(out.len() < 200, "{}", out.len());
        for (sname, name) in [("stdout", "out"), ("stderr", "err")] {
            let t: String = out.iter().filter(|o| o["name"] == sname).map(|o| o["text"].as_str().unwrap()).collect();
            let t = t.as_str();
            assert!(t.len() < 1200, "{}", t.len());
            assert!(t.starts_with(&format!("{name} 0000\n")) && t.ends_with(&format!("{name} 0999\n")), "{t}");
            assert!(t.contains("dropped here"), "{t}");
            // whole lines on both sides of the marker
            for l in t.lines().filter(|l| !l.is_empty() && !l.starts_with("[...")) {
                assert_eq!(l.len(), 8, "{l:?} in {t}");
            }
        }
        let mut b = OutputBuilder::with_cap(100);
        b.handle("stream", json!({"name": "stdout", "text": "x".repeat(500)}));
        b.handle("clear_output", json!({"wait": false}));
        b.handle("stream", json!({"name": "stdout", "text": "fresh"}));
        assert_eq!(b.finish()[0]["text"], "fresh");
        // multi-byte text is cut at character boundaries
        let mut b = OutputBuilder::with_cap(101);
        b.handle("stream", json!({"name": "stdout", "text": "é".repeat(400)}));
        let t = b.finish()[0]["text"].as_str().unwrap().to_string();
        assert!(t.starts_with('é') && t.ends_with('é'), "{t}");
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m: x"), "ZeroDivisionError: x");
    }
}
