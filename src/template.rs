//! `${name}` templates: the one expander for config values and prompt text. Unknown names are left as
//! written, so text can pass through several expansions (config first, prompt filling later).

/// Expand `${name}` (name = letters, digits, `_`) from `vars`, then the environment. Unknown names are
/// left exactly as written.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    expand_with(s, |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).or_else(|| std::env::var(n).ok()))
}

/// Replace each `${name}` (name = letters, digits, `_`) by `lookup(name)`; names it does not know are left
/// exactly as written. The one `${...}` expander: config values and prompt templates both use it.
pub fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    if !s.contains("${") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}');
        let name = end.map(|e| &after[..e]);
        match name.filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            Some(n) => {
                match lookup(n) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push_str("${");
                        out.push_str(n);
                        out.push('}');
                    }
                }
                rest = &after[n.len() + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
