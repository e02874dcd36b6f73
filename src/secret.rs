//! The API key and its masking: one type the host context holds and hands to the event log, the LLM
//! engine and the Lua layer, so that every place that prints or writes text masks it the same way.
//! It must never print the key: `Debug` shows `***` and the last four characters at most.

/// The LLM's secret (the API key), when there is one, and the other secret values of the same
/// config (an Entra ID token, header values from the environment) that are masked like it.
#[derive(Clone, Default)]
pub struct Secret(Option<String>, Vec<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(k) => write!(f, "Secret({})", mask_key(k)),
            None => f.write_str("Secret(none)"),
        }
    }
}

impl Secret {
    pub fn new(key: Option<String>) -> Secret {
        Secret(key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()), Vec::new())
    }

    /// This secret, also masking `other` (a second credential, a secret header value) wherever it
    /// masks the key. Values shorter than 4 characters are not masked (they would mangle any text).
    pub fn also_masking(mut self, other: impl IntoIterator<Item = String>) -> Secret {
        for o in other {
            let o = o.trim().to_string();
            if o.len() >= 4 && self.0.as_deref() != Some(o.as_str()) && !self.1.contains(&o) {
                self.1.push(o);
            }
        }
        // the longest first: a value that holds another is masked whole
        self.1.sort_by_key(|o| std::cmp::Reverse(o.len()));
        self
    }

    /// The other secret values masked with the key.
    pub fn others(&self) -> &[String] {
        &self.1
    }

    /// The key a run uses: the configured one (an unexpanded `${VAR}` is none), else `OPENAI_API_KEY`.
    pub fn resolve(configured: Option<&str>) -> Secret {
        Secret::resolve_from(configured, &["OPENAI_API_KEY"])
    }

    /// A secret from the config (an empty value or an unexpanded `${VAR}` is none), else from the first of
    /// `vars` that is set and not empty.
    pub fn resolve_from(configured: Option<&str>, vars: &[&str]) -> Secret {
        let from_env = || vars.iter().find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()));
        let key =
            configured.filter(|k| !k.trim().is_empty() && !k.contains("${")).map(str::to_string).or_else(from_env);
        Secret::new(key)
    }

    /// The key itself, for the one place that needs it (the Authorization header) and for scrubbing it
    /// from a kernel's environment.
    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// `s` with the key (and the other secret values), bearer tokens and `sk-…` look-alikes replaced.
    pub fn mask(&self, s: &str) -> String {
        self.mask_exact(&mask(s, self.expose()))
    }

    /// `s` with only the exact secret values replaced (no look-alike patterns: a cassette stores prompts
    /// that must replay unchanged).
    pub fn mask_exact(&self, s: &str) -> String {
        let mut out = match self.0.as_deref() {
            Some(k) if k.len() >= 4 => s.replace(k, "***"),
            _ => s.to_string(),
        };
        for o in &self.1 {
            if out.contains(o.as_str()) {
                out = out.replace(o.as_str(), "***");
            }
        }
        out
    }

    /// The key as a script or a log may show it (`***6789`).
    pub fn masked(&self) -> Option<String> {
        self.0.as_deref().map(mask_key)
    }
}

/// `sk-…6789`-style: enough to tell keys apart, never enough to use one.
pub fn mask_key(k: &str) -> String {
    let tail: String = k.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if k.chars().count() < 12 {
        "***".into()
    } else {
        format!("***{tail}")
    }
}

/// Remove the key, bearer tokens and `sk-…` look-alikes from a text that may be shown or written.
pub fn mask(s: &str, key: Option<&str>) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let mut out = match key {
        Some(k) if k.len() >= 4 => s.replace(k, "***"),
        _ => s.to_string(),
    };
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{8,}").expect("valid regex")
    });
    if re.is_match(&out) {
        out = re
            .replace_all(&out, |c: &regex::Captures| match c.get(1) {
                Some(b) => format!("{}***", b.as_str()),
                None => "sk-***".to_string(),
            })
            .into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        let key = "sk-test-SECRET123456789";
        let s = format!("auth failed for {key}; header Authorization: Bearer abcdefghijkl; other sk-proj-ABCDEFGHIJ");
        let m = mask(&s, Some(key));
        assert!(!m.contains("SECRET"), "{m}");
        assert!(!m.contains("abcdefghijkl"), "{m}");
        assert!(!m.contains("ABCDEFGHIJ"), "{m}");
        assert_eq!(mask_key(key), "***6789");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Secret::new(Some("sk-test-SECRET123456789".into()));
        assert_eq!(format!("{s:?}"), "Secret(***6789)");
        assert_eq!(s.mask("key sk-test-SECRET123456789 here"), "key *** here");
    }
}
