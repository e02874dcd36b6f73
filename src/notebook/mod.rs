//! Jupyter notebooks (nbformat 4.0–4.5), read and written faithfully.
//!
//! A notebook is kept as the JSON the file holds (`serde_json::Value` with `preserve_order`), not as a
//! typed model: runtimed's `nbformat` crate drops unknown cell metadata (our own `subtask` key among
//! them), re-orders notebook metadata through a `HashMap`, appends a newline to the last source line,
//! silently skips outputs it cannot parse, and upgrades 4.0–4.4 files to 4.5 with invented cell ids.
//! Here every member a file holds is written back as it was; only cells a caller changes are touched,
//! and those are written the way Jupyter writes them (sorted keys, multi-line strings as line lists,
//! one-space indent, a final newline).
//!
//! Saving after every cell must stay cheap on long notebooks, so each cell's serialized text is cached
//! and only cells that changed are serialized again; a save concatenates the cached pieces. The text of
//! a very large cell (a 20 MB image) is not kept in memory: it is written straight to the file, and
//! later saves copy it from the previous file (whose inode stays readable after the rename).
//! This module must never lose a member of a user's notebook.

pub mod params;
pub mod saver;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

mod serialize;
use serialize::*;
pub use serialize::{pretty, py_float};

/// Newest minor version of nbformat 4 we write for new notebooks.
pub const NBFORMAT_MINOR: i64 = 5;

/// Cells whose text is larger than this are cached in the written file instead of in memory.
const BIG_CELL: usize = 4 << 20;

/// The serialized text of a cell, indented for its place in the file.
#[derive(Debug, Clone)]
enum Cache {
    None,
    Mem(String),
    /// Bytes `off..off + len` of a file this notebook wrote.
    Disk {
        file: Arc<File>,
        off: u64,
        len: u64,
    },
}

/// One cell: its JSON object and its cached text.
#[derive(Debug, Clone)]
struct Cell {
    value: Value,
    cache: Cache,
}

impl Cell {
    fn new(value: Value) -> Self {
        Cell { value, cache: Cache::None }
    }
}

/// A writer that counts what passes through it (to know where a cell lands in the file).
struct Counting<'a> {
    inner: &'a mut dyn Write,
    pos: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copy `len` bytes at `off` of `file` into `w`.
fn copy_range(file: &File, off: u64, len: u64, w: &mut dyn Write) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], off + done)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cached notebook text is gone"));
        }
        w.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// A notebook document.
#[derive(Debug, Clone)]
pub struct Notebook {
    /// Top-level members other than `cells`, in file order.
    top: Map<String, Value>,
    /// Where `cells` stood among the top-level members.
    cells_pos: usize,
    cells: Vec<Cell>,
}

impl Default for Notebook {
    fn default() -> Self {
        Self::new()
    }
}

impl Notebook {
    /// A new, empty nbformat 4.5 notebook for a Python 3 kernel.
    pub fn new() -> Self {
        let mut top = Map::new();
        top.insert(
            "metadata".into(),
            json!({
                "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                "language_info": {"name": "python"}
            }),
        );
        top.insert("nbformat".into(), json!(4));
        top.insert("nbformat_minor".into(), json!(NBFORMAT_MINOR));
        Notebook { top, cells_pos: 0, cells: Vec::new() }
    }

    /// Read a notebook file.
    pub fn read(path: &Path) -> Result<Notebook> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read notebook {}", path.display()))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a notebook (invalid JSON)", path.display()))?;
        // nbformat's schema requires these four; a JSON file without them is something else, and
        // running it as a notebook of 0 cells would hide the mistake
        // (an nbformat 3 file has other members; from_value says how to convert it)
        let v3 = value.get("nbformat").and_then(Value::as_i64).is_some_and(|n| n != 4);
        let missing: Vec<&str> = ["cells", "metadata", "nbformat", "nbformat_minor"]
            .into_iter()
            .filter(|k| !v3 && !value.as_object().is_some_and(|m| m.contains_key(*k)))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} is not a Jupyter notebook: it has no {} (a notebook is a JSON object with cells, metadata, \
                 nbformat and nbformat_minor)",
                path.display(),
                missing.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
            );
        }
        Notebook::from_value(value).with_context(|| format!("{} is not a valid notebook", path.display()))
    }

    /// Build from the notebook's JSON document.
    pub fn from_value(value: Value) -> Result<Notebook> {
        let Value::Object(map) = value else { bail!("a notebook must be a JSON object") };
        let mut top = Map::new();
        let mut cells_pos = None;
        let mut cells = Vec::new();
        for (k, v) in map {
            if k == "cells" {
                let Value::Array(a) = v else { bail!("'cells' must be a list") };
                cells_pos = Some(top.len());
                for (i, mut c) in a.into_iter().enumerate() {
                    check_cell(&c).with_context(|| format!("cell {}", i + 1))?;
                    add_required(&mut c);
                    cells.push(Cell::new(c));
                }
            } else {
                top.insert(k, v);
            }
        }
        match top.get("nbformat").and_then(Value::as_i64) {
            Some(4) => {}
            Some(n) => bail!("nbformat {n} is not supported (only 4.x); convert it with `jupyter nbconvert --to notebook --nbformat 4`"),
            None if top.contains_key("nbformat") => bail!("'nbformat' must be a number (4)"),
            None => {
                top.insert("nbformat".into(), json!(4));
            }
        }
        if cells_pos.is_none() {
            bail!("a notebook needs 'cells' (a list)");
        }
        if top.get("nbformat_minor").is_some_and(|v| !v.is_i64()) {
            bail!("'nbformat_minor' must be a number");
        }
        if !top.contains_key("nbformat_minor") {
            top.insert("nbformat_minor".into(), json!(NBFORMAT_MINOR));
        }
        if !top.get("metadata").is_some_and(Value::is_object) {
            top.insert("metadata".into(), json!({}));
        }
        let mut nb = Notebook { top, cells_pos: cells_pos.unwrap_or(0), cells };
        if nb.wants_ids() {
            for i in 0..nb.cells.len() {
                if nb.cells[i].value.get("id").is_none() {
                    let id = nb.fresh_id();
                    insert_sorted(nb.cells[i].value.as_object_mut().expect("checked"), "id", json!(id));
                }
            }
        }
        Ok(nb)
    }

    /// nbformat_minor of the document.
    pub fn minor(&self) -> i64 {
        self.top.get("nbformat_minor").and_then(Value::as_i64).unwrap_or(NBFORMAT_MINOR)
    }

    /// Cell ids are part of the format from 4.5 on (and forbidden before).
    fn wants_ids(&self) -> bool {
        self.minor() >= 5
    }

    fn fresh_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
            if !self.cells.iter().any(|c| c.value.get("id").and_then(Value::as_str) == Some(id.as_str())) {
                return id;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The notebook metadata.
    pub fn metadata(&self) -> &Value {
        self.top.get("metadata").expect("metadata is always present")
    }

    pub fn set_metadata(&mut self, m: Value) -> Result<()> {
        if !m.is_object() {
            bail!("notebook metadata must be a table of named fields");
        }
        self.top.insert("metadata".into(), m);
        Ok(())
    }

    /// The raw JSON of cell `i` (0-based), as stored.
    pub fn cell_value(&self, i: usize) -> Option<&Value> {
        self.cells.get(i).map(|c| &c.value)
    }

    /// Cell `i` (0-based) with multi-line strings joined: `{cell_type, id, metadata, source, outputs,
    /// execution_count, attachments}` (absent members left out).
    pub fn cell_joined(&self, i: usize) -> Option<Value> {
        let c = self.cells.get(i)?.value.as_object()?;
        let mut m = Map::new();
        for (k, v) in c {
            let v = match k.as_str() {
                "source" => Value::String(join_text(v)),
                "outputs" => {
                    Value::Array(v.as_array().map(|a| a.iter().map(join_output).collect()).unwrap_or_default())
                }
                _ => v.clone(),
            };
            m.insert(k.clone(), v);
        }
        Some(Value::Object(m))
    }

    /// Make a cell object from a caller's description (`cell_type` default "code", `source` a string or
    /// list of lines, `metadata`, `outputs`, `execution_count`, `id`, `attachments`).
    pub fn make_cell(&self, spec: Value) -> Result<Value> {
        let spec = match spec {
            Value::String(s) => json!({ "source": s }),
            Value::Object(m) => Value::Object(m),
            other => bail!("a cell must be a table or a source string, not {}", type_name(&other)),
        };
        let get = |k: &str| spec.get(k).filter(|v| !v.is_null());
        let cell_type = get("cell_type").and_then(Value::as_str).unwrap_or("code").to_string();
        if !matches!(cell_type.as_str(), "code" | "markdown" | "raw") {
            bail!("cell_type must be \"code\", \"markdown\" or \"raw\", not {cell_type:?}");
        }
        for k in spec.as_object().expect("object").keys() {
            if !matches!(
                k.as_str(),
                "cell_type" | "source" | "metadata" | "outputs" | "execution_count" | "id" | "attachments"
            ) {
                bail!("unknown cell field '{k}' (known: cell_type, source, metadata, outputs, execution_count, id, attachments)");
            }
        }
        let source = match get("source") {
            None => String::new(),
            Some(Value::Object(o)) if o.is_empty() => String::new(),
            Some(v @ (Value::String(_) | Value::Array(_))) => join_text(v),
            Some(other) => bail!("cell source must be a string, not {}", type_name(other)),
        };
        let metadata = match get("metadata") {
            None => json!({}),
            Some(Value::Array(a)) if a.is_empty() => json!({}),
            Some(m @ Value::Object(_)) => m.clone(),
            Some(other) => bail!("cell metadata must be a table, not {}", type_name(other)),
        };
        // Keys in sorted order, as Jupyter writes them.
        let mut m = Map::new();
        if cell_type == "markdown" || cell_type == "raw" {
            if let Some(a) = get("attachments") {
                m.insert("attachments".into(), a.clone());
            }
        }
        m.insert("cell_type".into(), json!(cell_type));
        if cell_type == "code" {
            m.insert("execution_count".into(), get("execution_count").cloned().unwrap_or(Value::Null));
        }
        if self.wants_ids() {
            let id = match get("id").and_then(Value::as_str) {
                Some(id) => {
                    if !valid_id(id) {
                        bail!("cell id {id:?} is not valid (1-64 letters, digits, '-' or '_')");
                    }
                    if self.cells.iter().any(|c| c.value.get("id").and_then(Value::as_str) == Some(id)) {
                        bail!("cell id {id:?} is already used in this notebook");
                    }
                    id.to_string()
                }
                None => self.fresh_id(),
            };
            m.insert("id".into(), json!(id));
        }
        m.insert("metadata".into(), metadata);
        if cell_type == "code" {
            let outputs = match get("outputs") {
                None => Vec::new(),
                Some(Value::Object(o)) if o.is_empty() => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(other) => bail!("cell outputs must be a list, not {}", type_name(other)),
            };
            m.insert("outputs".into(), Value::Array(outputs));
        }
        m.insert("source".into(), split_lines(&source));
        Ok(Value::Object(m))
    }

    /// Append a cell (see `make_cell`).
    pub fn push(&mut self, spec: Value) -> Result<usize> {
        let c = self.make_cell(spec)?;
        self.cells.push(Cell::new(c));
        Ok(self.cells.len() - 1)
    }

    /// Insert a cell before position `i` (0-based; `i == len` appends).
    pub fn insert(&mut self, i: usize, spec: Value) -> Result<()> {
        if i > self.cells.len() {
            bail!("position {} is past the end (the notebook has {} cells)", i + 1, self.cells.len());
        }
        let c = self.make_cell(spec)?;
        self.cells.insert(i, Cell::new(c));
        Ok(())
    }

    /// Remove cell `i` (0-based), returning it.
    pub fn remove(&mut self, i: usize) -> Result<Value> {
        self.check_index(i)?;
        Ok(self.cells.remove(i).value)
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.cells.len() {
            bail!("no cell {} (the notebook has {} cells)", i + 1, self.cells.len());
        }
        Ok(())
    }

    fn cell_mut(&mut self, i: usize) -> Result<&mut Map<String, Value>> {
        self.check_index(i)?;
        let c = &mut self.cells[i];
        c.cache = Cache::None;
        c.value.as_object_mut().context("cell is not an object")
    }

    /// Replace the source of cell `i` (0-based).
    pub fn set_source(&mut self, i: usize, src: &str) -> Result<()> {
        let c = self.cell_mut(i)?;
        insert_sorted(c, "source", split_lines(src));
        Ok(())
    }

    /// Set the outputs, execution count and timing of code cell `i` (0-based) from an execution result,
    /// taking ownership of them: outputs can be large (images), so they are moved, never copied.
    pub fn set_outputs_owned(
        &mut self,
        i: usize,
        outputs: Vec<Value>,
        execution_count: Option<i64>,
        timing: Option<Map<String, Value>>,
    ) -> Result<()> {
        let c = self.cell_mut(i)?;
        if c.get("cell_type").and_then(Value::as_str) != Some("code") {
            bail!("cell {} is not a code cell", i + 1);
        }
        insert_sorted(c, "outputs", Value::Array(outputs));
        insert_sorted(c, "execution_count", execution_count.map(Value::from).unwrap_or(Value::Null));
        if let Some(t) = timing {
            if !c.get("metadata").is_some_and(Value::is_object) {
                insert_sorted(c, "metadata", json!({}));
            }
            let meta = c.get_mut("metadata").and_then(Value::as_object_mut).expect("metadata object");
            insert_sorted(meta, "execution", Value::Object(t));
        }
        Ok(())
    }

    /// Replace the data and metadata of output `j` of cell `i` (0-based): a display update that reached an
    /// output of an earlier cell by its display id.
    pub fn set_output_data(&mut self, i: usize, j: usize, data: Value, metadata: Value) -> Result<()> {
        let c = self.cell_mut(i)?;
        let o = c
            .get_mut("outputs")
            .and_then(Value::as_array_mut)
            .and_then(|a| a.get_mut(j))
            .and_then(Value::as_object_mut)
            .with_context(|| format!("cell {} has no output {}", i + 1, j + 1))?;
        o.insert("data".into(), data);
        o.insert("metadata".into(), metadata);
        Ok(())
    }

    /// The cell's `metadata.tags` include `tag`.
    pub fn has_tag(&self, i: usize, tag: &str) -> bool {
        self.cells
            .get(i)
            .and_then(|c| c.value.pointer("/metadata/tags"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|t| t.as_str() == Some(tag)))
    }

    /// Clear every code cell's outputs and execution count (and recorded timing).
    pub fn clear_outputs(&mut self) {
        for i in 0..self.cells.len() {
            let is_code = self.cells[i].value.get("cell_type").and_then(Value::as_str) == Some("code");
            let has = self.cells[i].value.get("outputs").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
                || !self.cells[i].value.get("execution_count").is_none_or(Value::is_null)
                || self.cells[i].value.pointer("/metadata/execution").is_some();
            if is_code && has {
                let c = self.cell_mut(i).expect("in range");
                insert_sorted(c, "outputs", json!([]));
                insert_sorted(c, "execution_count", Value::Null);
                if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.shift_remove("execution");
                }
            }
        }
    }

    /// The whole notebook as its JSON document.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        // one copy of the cells (outputs can be megabytes), placed where they stood
        let mut cells = Some(Value::Array(self.cells.iter().map(|c| c.value.clone()).collect()));
        for (i, (k, v)) in self.top.iter().enumerate() {
            if i == self.cells_pos {
                if let Some(c) = cells.take() {
                    m.insert("cells".into(), c);
                }
            }
            m.insert(k.clone(), v.clone());
        }
        if let Some(c) = cells {
            m.insert("cells".into(), c);
        }
        Value::Object(m)
    }

    /// Serialize the whole notebook the way Jupyter does (one-space indent, final newline), reusing
    /// the cached text of unchanged cells.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// Write the serialized notebook to `w`.
    pub fn write_to(&mut self, w: &mut dyn Write) -> std::io::Result<()> {
        let mut c = Counting { inner: w, pos: 0 };
        let mut starts = Vec::new();
        self.write_head(&mut c)?;
        self.emit_from(&mut c, 0, true, None, &mut Vec::new(), &mut starts).map(|_| ())
    }

    /// `{` and the top-level members that come before `cells`.
    fn write_head(&self, w: &mut Counting) -> std::io::Result<()> {
        w.write_all(b"{\n")?;
        for (k, v) in self.top.iter().take(self.cells_pos) {
            write_member(w, k, v, false)?;
        }
        Ok(())
    }

    /// Everything from cell `from` on: the cells (after the `"cells": [` line when `head`), then the
    /// members after them and the closing brace. Records where each cell's line starts in `starts` and
    /// returns where the cells end (where ` ]` begins). With `target` (the file `w` writes into), very
    /// large cells are streamed and their place in it returned in `moved`, to become their cache once the
    /// file is safely written.
    fn emit_from(
        &mut self,
        w: &mut Counting,
        from: usize,
        head: bool,
        target: Option<&Arc<File>>,
        moved: &mut Vec<(usize, Cache)>,
        starts: &mut Vec<u64>,
    ) -> std::io::Result<u64> {
        let count = self.cells.len();
        if head {
            w.write_all(if count == 0 { b" \"cells\": []" } else { b" \"cells\": [\n" })?;
        }
        starts.truncate(from);
        for j in from..count {
            starts.push(w.pos);
            let c = &mut self.cells[j];
            w.write_all(b"  ")?;
            if matches!(c.cache, Cache::None) {
                if let Some(t) = target.filter(|_| estimate(&c.value, 3) > BIG_CELL) {
                    let start = w.pos;
                    write_pretty(&CellSer(&c.value), 2, &mut *w)?;
                    moved.push((j, Cache::Disk { file: t.clone(), off: start, len: w.pos - start }));
                } else {
                    c.cache = Cache::Mem(pretty_with(&CellSer(&c.value), &c.value, 2));
                }
            }
            match &c.cache {
                Cache::None => {}
                Cache::Mem(s) => w.write_all(s.as_bytes())?,
                Cache::Disk { file, off, len } => {
                    let start = w.pos;
                    copy_range(file, *off, *len, &mut *w)?;
                    if let Some(t) = target {
                        moved.push((j, Cache::Disk { file: t.clone(), off: start, len: *len }));
                    }
                }
            }
            w.write_all(if j + 1 < count { b",\n" } else { b"\n" })?;
        }
        let cells_end = w.pos;
        if count > 0 {
            w.write_all(b" ]")?;
        }
        let after = self.top.len() - self.cells_pos.min(self.top.len());
        w.write_all(if after == 0 { b"\n" } else { b",\n" })?;
        for (i, (k, v)) in self.top.iter().skip(self.cells_pos).enumerate() {
            write_member(w, k, v, i + 1 == after)?;
        }
        w.write_all(b"}\n")?;
        Ok(cells_end)
    }

    /// Write the notebook to `path` atomically (a temporary file in the same folder, then a rename).
    pub fn write(&mut self, path: &Path) -> Result<()> {
        self.write_placed(path).map(drop)
    }

    /// Write the notebook to `path` atomically, and say where its cells lie in the file, so that later
    /// saves can rewrite only its end (`rewrite_from`).
    pub fn write_placed(&mut self, path: &Path) -> Result<Placed> {
        // No fsync: the notebook is saved after every cell, and the rename already protects it from a crash.
        let tmp = crate::files::temp_beside(path).with_context(|| format!("cannot write {}", path.display()))?;
        let target = Arc::new(tmp.as_file().try_clone()?);
        let mut starts = Vec::new();
        let (moved, cells_end) = {
            let mut bw = std::io::BufWriter::with_capacity(256 * 1024, tmp.as_file());
            let mut w = Counting { inner: &mut bw, pos: 0 };
            let mut moved = Vec::new();
            let cells_end = self
                .write_head(&mut w)
                .and_then(|_| self.emit_from(&mut w, 0, true, Some(&target), &mut moved, &mut starts))
                .with_context(|| format!("cannot write {}", path.display()))?;
            bw.flush().with_context(|| format!("cannot write {}", path.display()))?;
            (moved, cells_end)
        };
        crate::files::persist(tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        // Only now that the file is complete may large cells be read back from it.
        for (j, cache) in moved {
            self.cells[j].cache = cache;
        }
        Ok(Placed { file: target, path: path.to_path_buf(), starts, cells_end })
    }

    /// Whether the top-level member `key` comes after `cells` in the file (so that a change to it
    /// leaves every cell where it is).
    pub fn after_cells(&self, key: &str) -> bool {
        self.top.keys().position(|k| k == key).is_some_and(|i| i >= self.cells_pos)
    }

    /// Save by rewriting the file `placed` describes from cell `from` on (0-based; the notebook's length
    /// for the members after the cells only), in place: the cost is what changed from there, not the whole
    /// notebook. Everything before cell `from` and the members before the cells must be as they were
    /// written (the caller knows what it changed); the number of cells must be the same. Returns false,
    /// having written nothing, when that cannot be done (a large cell further on is cached in the file
    /// region to be rewritten, the cell count changed, or `path` is no longer the file written): then
    /// `write_placed` is the way.
    ///
    /// Unlike `write`, this is not atomic: a process reading the file meanwhile may see it half written,
    /// and if the writing process dies in the middle the file is cut there.
    pub fn rewrite_from(&mut self, placed: &mut Placed, from: usize) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let n = self.cells.len();
        if n == 0 || from > n || placed.starts.len() != n {
            return Ok(false);
        }
        if self.cells[from..].iter().any(|c| matches!(c.cache, Cache::Disk { .. })) {
            return Ok(false);
        }
        let (ours, now) = (placed.file.metadata()?, std::fs::metadata(&placed.path));
        if !now.is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev()) {
            return Ok(false);
        }
        let off = if from < n { placed.starts[from] } else { placed.cells_end };
        let path = placed.path.clone();
        let ctx = || format!("cannot write {}", path.display());
        let file = placed.file.clone();
        let mut moved = Vec::new();
        let (cells_end, end) = {
            let mut at = WriteAt { file: &file, pos: off };
            let mut bw = std::io::BufWriter::with_capacity(256 * 1024, &mut at);
            let mut w = Counting { inner: &mut bw, pos: off };
            let cells_end =
                self.emit_from(&mut w, from, false, Some(&file), &mut moved, &mut placed.starts).with_context(ctx)?;
            let end = w.pos;
            bw.flush().with_context(ctx)?;
            (cells_end, end)
        };
        file.set_len(end).with_context(ctx)?;
        placed.cells_end = cells_end;
        for (j, cache) in moved {
            self.cells[j].cache = cache;
        }
        Ok(true)
    }
}

/// Where a notebook's cells lie in the file it was written to (see `Notebook::write_placed`).
pub struct Placed {
    file: Arc<File>,
    path: std::path::PathBuf,
    /// The offset of each cell's first line.
    starts: Vec<u64>,
    /// The offset just past the last cell, where ` ]` begins.
    cells_end: u64,
}

/// Writes at increasing offsets of a file (positioned writes, no shared cursor).
struct WriteAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for WriteAt<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One top-level member: ` "key": value` and its separator.
fn write_member(w: &mut Counting, k: &str, v: &Value, last: bool) -> std::io::Result<()> {
    w.write_all(b" ")?;
    w.write_all(serde_json::to_string(k).expect("string").as_bytes())?;
    w.write_all(b": ")?;
    w.write_all(pretty(v, 1).as_bytes())?;
    w.write_all(if last { b"\n" } else { b",\n" })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

fn check_cell(c: &Value) -> Result<()> {
    let Some(m) = c.as_object() else { bail!("a cell must be an object") };
    match m.get("cell_type").and_then(Value::as_str) {
        Some("code" | "markdown" | "raw") => Ok(()),
        Some(t) => bail!("unknown cell_type {t:?}"),
        None => bail!("cell has no cell_type"),
    }
}

/// Members every cell must have (a valid file has them already; a table from Lua loses nulls).
fn add_required(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    let code = m.get("cell_type").and_then(Value::as_str) == Some("code");
    if !m.contains_key("metadata") {
        insert_sorted(m, "metadata", json!({}));
    }
    if !m.contains_key("source") {
        insert_sorted(m, "source", json!([]));
    }
    if code {
        if !m.contains_key("execution_count") {
            insert_sorted(m, "execution_count", Value::Null);
        }
        if !m.contains_key("outputs") {
            insert_sorted(m, "outputs", json!([]));
        }
    }
}

/// nbformat's cell id rule.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Insert `k` keeping an existing key's place, or at its sorted place among sorted keys.
pub(crate) fn insert_sorted(m: &mut Map<String, Value>, k: &str, v: Value) {
    if let Some(slot) = m.get_mut(k) {
        *slot = v;
        return;
    }
    let pos = m.keys().position(|x| x.as_str() > k).unwrap_or(m.len());
    m.shift_insert(pos, k.to_string(), v);
}

/// `v` with the keys of every object sorted, as nbformat writes JSON.
pub fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut pairs: Vec<(&String, &Value)> = m.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(pairs.into_iter().map(|(k, v)| (k.clone(), sort_keys(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// A multi-line string as stored (a string or a list of strings), joined.
pub fn join_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Python's `str.splitlines(True)` for the line endings Jupyter writes (\n, \r\n, \r); as a JSON list.
pub fn split_lines(s: &str) -> Value {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                out.push(Value::String(s[start..=i].to_string()));
                start = i + 1;
            }
            b'\r' => {
                let end = if i + 1 < b.len() && b[i + 1] == b'\n' { i + 1 } else { i };
                out.push(Value::String(s[start..=end].to_string()));
                i = end;
                start = end + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < b.len() {
        out.push(Value::String(s[start..].to_string()));
    }
    Value::Array(out)
}

/// Mime types whose strings Jupyter stores as line lists.
fn splits_mime(key: &str) -> bool {
    key.starts_with("text/") || key == "application/javascript" || key == "image/svg+xml"
}

/// An output with its multi-line strings joined (the shape kernels send and scripts see).
pub fn join_output(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        if let Some(t) = m.get_mut("text") {
            if t.is_array() {
                *t = Value::String(join_text(t));
            }
        }
        if let Some(Value::Object(d)) = m.get_mut("data") {
            for (k, v) in d.iter_mut() {
                if splits_mime(k) && v.is_array() {
                    *v = Value::String(join_text(v));
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn floats_are_spelled_like_python() {
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(2.0), "2.0");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e16), "1.5e+16");
        assert_eq!(py_float(123456.789), "123456.789");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(-2.5e-7), "-2.5e-07");
    }

    use super::*;

    #[test]
    fn line_slices_match_splitlines() {
        for t in ["a\nb", "a\n", "", "a\r\nb\rc", "\n\n", "x\r"] {
            let a: Vec<&str> = line_slices(t).collect();
            assert_eq!(json!(a), split_lines(t), "{t:?}");
        }
    }

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(split_lines("a\nb"), json!(["a\n", "b"]));
        assert_eq!(split_lines("a\n"), json!(["a\n"]));
        assert_eq!(split_lines(""), json!([]));
        assert_eq!(split_lines("a\r\nb\rc"), json!(["a\r\n", "b\r", "c"]));
    }

    /// A save in place from a changed cell on gives the same bytes as writing the whole notebook.
    #[test]
    fn rewriting_from_a_cell_gives_the_bytes_of_a_whole_write() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("nb.ipynb");
        let mut nb = Notebook::new();
        for i in 0..6 {
            nb.push(json!({"source": format!("print({i})")})).unwrap();
        }
        let mut placed = nb.write_placed(&out).unwrap();
        let check = |nb: &mut Notebook| assert_eq!(std::fs::read(&out).unwrap(), nb.to_bytes());
        let text = |n: usize| vec![json!({"output_type": "stream", "name": "stdout", "text": "x".repeat(n)})];
        // cells finishing in order, an earlier cell growing and shrinking, then the metadata only
        for (i, n) in [(0, 10), (1, 5000), (2, 3), (1, 1), (5, 70000), (0, 0)] {
            nb.set_outputs_owned(i, text(n), Some(i as i64 + 1), None).unwrap();
            assert!(nb.rewrite_from(&mut placed, i).unwrap());
            check(&mut nb);
        }
        let mut md = nb.metadata().clone();
        md["cellsci"] = json!({"run": {"status": "ok"}});
        nb.set_metadata(md).unwrap();
        assert!(nb.after_cells("metadata"));
        assert!(nb.rewrite_from(&mut placed, nb.len()).unwrap());
        check(&mut nb);
        // another file in its place (a save by another program): not rewritten in place
        std::fs::write(d.path().join("other"), b"{}").unwrap();
        std::fs::rename(d.path().join("other"), &out).unwrap();
        assert!(!nb.rewrite_from(&mut placed, 0).unwrap());
    }

    #[test]
    fn round_trip_is_byte_exact_for_jupyter_layout() {
        let text = "{\n \"cells\": [\n  {\n   \"cell_type\": \"code\",\n   \"execution_count\": null,\n   \"id\": \"ab\",\n   \"metadata\": {},\n   \"outputs\": [],\n   \"source\": [\n    \"x = 1\\n\",\n    \"é\"\n   ]\n  }\n ],\n \"metadata\": {\n  \"zzz\": [\n   1,\n   2.5\n  ]\n },\n \"nbformat\": 4,\n \"nbformat_minor\": 5\n}\n";
        let mut nb = Notebook::from_value(serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(String::from_utf8(nb.to_bytes()).unwrap(), text);
    }
}
