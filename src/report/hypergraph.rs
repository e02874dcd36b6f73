//! The task hypergraph of a generated notebook: cells (`metadata.subtask = {id, name, purpose}`) and
//! hyperedges (`metadata.execution.hypergraph.hyperedges = [{tail: [ids] or id, head: id}]`), as
//! hypergraph.json and as a Mermaid `flowchart TD` that Mermaid accepts whatever the ids and labels
//! hold. Node ids in the Mermaid text are generated (`c0`, `c1`, ..., `u0` for ids that are no cell),
//! so ids such as `end`, `graph`, `a b` or `x-->y` cannot break the syntax; labels are quoted with
//! every character Mermaid or markdown would interpret written as an entity. Edges that name ids which
//! are no cell are drawn to a dashed "not a cell" node, never dropped.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: String,
    pub name: String,
    pub purpose: String,
    /// Position in the notebook's cell list (0-based).
    pub index: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub tails: Vec<String>,
    pub heads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hypergraph {
    pub cells: Vec<Cell>,
    /// The hypergraph metadata exactly as the notebook holds it (`{}` when absent).
    pub raw: Value,
    pub edges: Vec<Edge>,
    pub warnings: Vec<String>,
}

/// An id as text: strings as they are, numbers in their JSON form.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Ids from a tail/head value: one id or a list of them.
fn ids(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(id_text).collect(),
        Some(v) => id_text(v).into_iter().collect(),
        None => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(""),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Read the hypergraph of an nbformat notebook.
pub fn from_notebook(nb: &Value) -> Result<Hypergraph, String> {
    let Some(top) = nb.as_object() else {
        return Err("a notebook is a JSON object with 'cells'".into());
    };
    let cells_v = match top.get("cells") {
        Some(Value::Array(a)) => a.as_slice(),
        // an empty Lua table cannot say it is a list
        Some(Value::Object(o)) if o.is_empty() => &[],
        Some(Value::Null) | None => &[],
        Some(_) => return Err("the notebook's 'cells' is not a list".into()),
    };
    let mut h = Hypergraph::default();
    for (index, c) in cells_v.iter().enumerate() {
        let Some(st) = c.pointer("/metadata/subtask").and_then(|s| s.as_object()) else { continue };
        if c.get("cell_type").and_then(|t| t.as_str()).is_some_and(|t| t != "code") {
            continue;
        }
        let Some(id) = st.get("id").and_then(id_text) else {
            h.warnings.push(format!("cell {index} has a subtask without an id"));
            continue;
        };
        if h.cells.iter().any(|x| x.id == id) {
            h.warnings
                .push(format!("subtask id '{id}' is used by more than one cell; the first (cell {index}) is kept"));
            continue;
        }
        h.cells.push(Cell { id, name: text(st.get("name")), purpose: text(st.get("purpose")), index });
    }
    let meta = top.get("metadata");
    let raw = meta
        .and_then(|m| m.pointer("/execution/hypergraph"))
        .or_else(|| meta.and_then(|m| m.get("hypergraph")))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let edges_v = match &raw {
        Value::Object(o) => o.get("hyperedges").or_else(|| o.get("edges")),
        Value::Array(_) => Some(&raw),
        _ => None,
    };
    match edges_v {
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(Value::Array(list)) => {
            for (i, e) in list.iter().enumerate() {
                let Some(o) = e.as_object() else {
                    h.warnings.push(format!("hyperedge {i} is not an object; skipped"));
                    continue;
                };
                let pick = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k));
                let tails = ids(pick(&["tail", "tails", "source", "sources", "from"]));
                let heads = ids(pick(&["head", "heads", "target", "targets", "to"]));
                if heads.is_empty() {
                    h.warnings.push(format!("hyperedge {i} has no head; skipped"));
                    continue;
                }
                h.edges.push(Edge { tails, heads });
            }
        }
        Some(_) => h.warnings.push("the hypergraph's 'hyperedges' is not a list".into()),
        None => {}
    }
    h.raw = raw;
    for id in h.unknown_ids() {
        h.warnings.push(format!("hyperedges name '{id}', which is no cell's subtask id"));
    }
    Ok(h)
}

impl Hypergraph {
    /// Ids used by hyperedges that no cell has, in order of first use.
    pub fn unknown_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.edges {
            for id in e.tails.iter().chain(&e.heads) {
                if !self.cells.iter().any(|c| &c.id == id) && !out.contains(id) {
                    out.push(id.clone());
                }
            }
        }
        out
    }

    /// hypergraph.json: `{cells: [{id, name, purpose, index}], hypergraph: <as in the notebook>,
    /// hyperedges: [{tail: [ids], head: id}]}` (+ `warnings` when there are any). `cells` and
    /// `hypergraph` are what the original tool wrote; `hyperedges` is the normalised form.
    pub fn to_json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| json!({"id": c.id, "name": c.name, "purpose": c.purpose, "index": c.index}))
            .collect();
        let mut edges = Vec::new();
        for e in &self.edges {
            for h in &e.heads {
                edges.push(json!({"tail": e.tails, "head": h}));
            }
        }
        let mut m = Map::new();
        m.insert("cells".into(), Value::Array(cells));
        m.insert("hypergraph".into(), self.raw.clone());
        m.insert("hyperedges".into(), Value::Array(edges));
        if !self.warnings.is_empty() {
            m.insert("warnings".into(), json!(self.warnings));
        }
        Value::Object(m)
    }

    /// hypergraph.md: a fenced Mermaid `flowchart TD`.
    pub fn mermaid(&self) -> String {
        let mut o = String::from("```mermaid\nflowchart TD\n");
        let node_of = |id: &str| -> String {
            match self.cells.iter().position(|c| c.id == id) {
                Some(i) => format!("c{i}"),
                None => format!("u{}", self.unknown_ids().iter().position(|u| u == id).unwrap_or(0)),
            }
        };
        if self.cells.is_empty() && self.edges.is_empty() {
            o.push_str("    empty[\"(this notebook has no subtask cells)\"]\n");
        }
        for (i, c) in self.cells.iter().enumerate() {
            let mut label = label_text(&c.id, 60);
            let name = label_text(&c.name, 60);
            if !name.is_empty() && c.name != c.id {
                label.push_str(": ");
                label.push_str(&name);
            }
            let purpose = label_text(&c.purpose, 80);
            if !purpose.is_empty() {
                label.push_str("<br/>");
                label.push_str(&purpose);
            }
            o.push_str(&format!("    c{i}[\"{label}\"]\n"));
        }
        let unknown = self.unknown_ids();
        for (i, id) in unknown.iter().enumerate() {
            o.push_str(&format!("    u{i}[\"{} (not a cell)\"]:::missing\n", label_text(id, 60)));
        }
        for e in &self.edges {
            let heads: Vec<String> = e.heads.iter().map(|h| node_of(h)).collect();
            if e.tails.is_empty() {
                continue; // a root: the node is already drawn
            }
            let tails: Vec<String> = e.tails.iter().map(|t| node_of(t)).collect();
            o.push_str(&format!("    {} --> {}\n", tails.join(" & "), heads.join(" & ")));
        }
        if !unknown.is_empty() {
            o.push_str("    classDef missing fill:#fff4f4,stroke:#c00,stroke-dasharray:5 5\n");
        }
        o.push_str("```\n");
        o
    }
}

/// Text for inside a quoted Mermaid label: whitespace collapsed, cut to `max` characters, and every
/// character Mermaid, HTML or a markdown fence could interpret written as a Mermaid entity (`#quot;`,
/// `#35;`, ...). `#` goes first so the entities themselves stay intact.
pub fn label_text(s: &str, max: usize) -> String {
    let collapsed: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = if collapsed.chars().count() > max {
        format!("{}…", collapsed.chars().take(max - 1).collect::<String>().trim_end())
    } else {
        collapsed
    };
    let mut out = String::with_capacity(cut.len() + 8);
    for ch in cut.chars() {
        match ch {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '`' => out.push_str("#96;"),
            '\\' => out.push_str("#92;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_escape_everything_mermaid_reads() {
        assert_eq!(label_text("a \"b\" <c> & #d `e`", 80), "a #quot;b#quot; #lt;c#gt; #amp; #35;d #96;e#96;");
        assert_eq!(label_text("line\none\ttwo", 80), "line one two");
        assert_eq!(label_text("abcdef", 4), "abc…");
    }
}
