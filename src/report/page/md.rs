//! A small, closed Markdown renderer for the texts a card shows as prose (the research strategy and the
//! LLM's narrative): headings, paragraphs, bullet and numbered lists, fenced code, tables kept as
//! preformatted text, and inline bold, italics and code. Every character of the input is HTML-escaped and
//! only the tags written here are emitted: raw HTML stays text, and links and images become their text
//! (the page fetches nothing and runs nothing).

use std::sync::LazyLock;

use regex::Regex;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#x27;"),
            _ => o.push(c),
        }
    }
    o
}

static BOLD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\*\*([^*]+)\*\*|__([^_]+)__").unwrap());
static ITALIC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\*([^*\s][^*]*)\*").unwrap());
static LINK: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"!?\[([^\]]*)\]\(([^)\s]*)[^)]*\)").unwrap());
static NUMBERED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d{1,3}[.)]\s+").unwrap());

/// One line's inline markup: `code` spans first (their content stays literal), then links and images
/// as their text, bold, italics.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{}</code>", esc(part)));
            continue;
        }
        let text = LINK.replace_all(part, |c: &regex::Captures| {
            let label = c[1].to_string();
            let url = c[2].to_string();
            if label.is_empty() || label == url {
                url
            } else if url.is_empty() {
                label
            } else {
                format!("{label} ({url})")
            }
        });
        let e = esc(&text);
        let e = BOLD.replace_all(&e, |c: &regex::Captures| {
            format!("<strong>{}</strong>", c.get(1).or(c.get(2)).map_or("", |m| m.as_str()))
        });
        let e = ITALIC.replace_all(&e, "<em>$1</em>");
        out.push_str(&e);
    }
    out
}

enum Block {
    None,
    Para(Vec<String>),
    List(bool, Vec<String>),
    Table(Vec<String>),
}

fn flush(b: &mut Block, out: &mut String) {
    match std::mem::replace(b, Block::None) {
        Block::None => {}
        Block::Para(lines) => {
            out.push_str(&format!("<p>{}</p>\n", lines.iter().map(|l| inline(l)).collect::<Vec<_>>().join(" ")))
        }
        Block::List(numbered, items) => {
            let tag = if numbered { "ol" } else { "ul" };
            out.push_str(&format!("<{tag}>"));
            for it in items {
                out.push_str(&format!("<li>{}</li>", inline(&it)));
            }
            out.push_str(&format!("</{tag}>\n"));
        }
        Block::Table(lines) => out.push_str(&format!("<pre>{}</pre>\n", esc(&lines.join("\n")))),
    }
}

/// `text` (Markdown) as HTML built only from escaped text and the tags above.
pub fn to_html(text: &str) -> String {
    let mut out = String::new();
    let mut block = Block::None;
    let mut fence: Option<Vec<String>> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        if let Some(code) = fence.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push_str(&format!("<pre><code>{}</code></pre>\n", esc(&code.join("\n"))));
                fence = None;
            } else {
                code.push(raw.to_string());
            }
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("```") {
            flush(&mut block, &mut out);
            fence = Some(Vec::new());
            continue;
        }
        if t.is_empty() {
            flush(&mut block, &mut out);
            continue;
        }
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') {
            flush(&mut block, &mut out);
            out.push_str(&format!("<h5 class=\"md\">{}</h5>\n", inline(t[hashes..].trim())));
            continue;
        }
        if t.starts_with('|') {
            if !matches!(block, Block::Table(_)) {
                flush(&mut block, &mut out);
                block = Block::Table(Vec::new());
            }
            if let Block::Table(lines) = &mut block {
                lines.push(t.to_string());
            }
            continue;
        }
        let bullet = ["- ", "* ", "+ "].iter().find_map(|b| t.strip_prefix(b));
        let numbered = NUMBERED.find(t).map(|m| &t[m.end()..]);
        if let Some(item) = bullet.or(numbered) {
            let is_num = bullet.is_none();
            match &mut block {
                Block::List(n, items) if *n == is_num => items.push(item.to_string()),
                _ => {
                    flush(&mut block, &mut out);
                    block = Block::List(is_num, vec![item.to_string()]);
                }
            }
            continue;
        }
        match &mut block {
            // a continuation line of a list item
            Block::List(_, items) if raw.starts_with("  ") => {
                if let Some(last) = items.last_mut() {
                    last.push(' ');
                    last.push_str(t);
                }
            }
            Block::Para(lines) => lines.push(t.to_string()),
            _ => {
                flush(&mut block, &mut out);
                block = Block::Para(vec![t.to_string()]);
            }
        }
    }
    if let Some(code) = fence {
        out.push_str(&format!("<pre><code>{}</code></pre>\n", esc(&code.join("\n"))));
    }
    flush(&mut block, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_a_few_tags_and_everything_else_stays_text() {
        let html = to_html(
            "## Plan\n\nFit a **ridge** baseline, then *one* model (`fit(x)`).\nSecond line.\n\n- dose\n- time\n  continued\n\n1. first\n2. second\n\n```python\nx = '<b>'\n```\n| a | b |\n|---|---|\n",
        );
        assert!(html.contains("<h5 class=\"md\">Plan</h5>"), "{html}");
        assert!(html.contains("<p>Fit a <strong>ridge</strong> baseline, then <em>one</em> model (<code>fit(x)</code>). Second line.</p>"), "{html}");
        assert!(html.contains("<ul><li>dose</li><li>time continued</li></ul>"), "{html}");
        assert!(html.contains("<ol><li>first</li><li>second</li></ol>"), "{html}");
        assert!(html.contains("<pre><code>x = &#x27;&lt;b&gt;&#x27;</code></pre>"), "{html}");
        assert!(html.contains("<pre>| a | b |\n|---|---|</pre>"), "{html}");
    }

    #[test]
    fn raw_html_links_and_images_are_text() {
        let html = to_html(
            "<script>alert(1)</script> <img src=x onerror=alert(1)>\n[click](javascript:alert(1)) ![pic](http://x/y.png) **<i>b</i>** `<code>`",
        );
        for tag in ["<script", "<img", "<a ", "<i>", "href"] {
            assert!(!html.contains(tag), "{tag}: {html}");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("click (javascript:alert(1))") && html.contains("pic (http://x/y.png)"), "{html}");
        assert!(
            html.contains("<strong>&lt;i&gt;b&lt;/i&gt;</strong>") && html.contains("<code>&lt;code&gt;</code>"),
            "{html}"
        );
    }
}
