//! The LLM engine: an OpenAI-compatible chat client that runs for hours on a paid API.
//!
//! It must never hang (every await has a timeout and watches Ctrl-C), never give up early for a
//! reason that would pass (every failure is classified so a retry policy can decide), never retry on
//! its own (the policy is Lua: `stdlib/retry.lua`, consulted by `src/lua/llm.rs`), and never leak the
//! API key: the key is only ever put in the Authorization header; everything printed, logged, recorded
//! or returned goes through [`mask`].
//!
//! Layout: [`message`] holds the request, reply and failure types; [`settings`] the run's settings;
//! [`client`] does one HTTP exchange (streaming or not) and classifies its outcome; [`engine`] adds what
//! every attempt needs around it (budgets, the concurrency limit, record/replay, telemetry, the event
//! log); [`extract`] is `llm.extract_json`; [`cassette`] records and replays exchanges.

pub mod cassette;
pub mod client;
pub mod engine;
pub mod extract;
pub mod message;
pub mod settings;
pub mod telemetry;

pub use engine::Engine;
pub use message::*;
pub use settings::*;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn clip_keeps_both_ends_and_whole_characters() {
        assert_eq!(clip("short", 10, 10), ("short".to_string(), 0));
        let (c, cut) = clip("ééééé", 3, 3);
        assert_eq!(cut, 6);
        assert_eq!(c, "é\n[… 6 bytes cut …]\né");
        let (c, cut) = clip(&"x".repeat(1000), 0, 10);
        assert_eq!((c.as_str(), cut), ("\n[… 990 bytes cut …]\nxxxxxxxxxx", 990));
    }

    #[test]
    fn think_blocks_are_reasoning_not_answer() {
        let s = |t: &str| split_reasoning(t);
        assert_eq!(s("plain"), ("plain".into(), String::new()));
        assert_eq!(s("<think>a</think>\nB"), ("B".into(), "a".into()));
        assert_eq!(s("x<think>a</think>y<think>b</think>z"), ("xyz".into(), "a\n\nb".into()));
        // a proxy that drops the opening tag
        assert_eq!(s("hmm</think>\n{\"a\": 1}"), ("{\"a\": 1}".into(), "hmm".into()));
        // cut off while thinking: no answer
        assert_eq!(s("<think>still going"), (String::new(), "still going".into()));
    }

    #[test]
    fn base_url_forms() {
        let n = |s: &str| normalize_base_url(s).unwrap();
        assert_eq!(n("https://api.openai.com"), "https://api.openai.com/v1");
        assert_eq!(n("https://api.openai.com/"), "https://api.openai.com/v1");
        assert_eq!(n("https://api.openai.com/v1/"), "https://api.openai.com/v1");
        assert_eq!(n("[api](https://api.openai.com/v1)"), "https://api.openai.com/v1");
        assert_eq!(n("[https://x.org/v1](https://x.org/v1/)"), "https://x.org/v1");
        assert_eq!(n(" <http://localhost:11434> "), "http://localhost:11434/v1");
        assert_eq!(n("http://h:4000/openai/v1/chat/completions"), "http://h:4000/openai/v1");
        assert_eq!(n("http://h/api"), "http://h/api");
        assert!(normalize_base_url("api.openai.com").is_err());
        assert!(normalize_base_url("").is_err());
    }

    #[test]
    fn azure_base_url_forms() {
        let a = |s: &str| azure_base_url(s).unwrap();
        let dep = Provider::AzureDeployments;
        assert_eq!(a("https://lab.openai.azure.com"), ("https://lab.openai.azure.com/openai".into(), dep, None, None));
        assert_eq!(a("https://lab.openai.azure.com/openai/").0, "https://lab.openai.azure.com/openai");
        assert_eq!(
            a("https://lab.openai.azure.com/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-06-01"),
            ("https://lab.openai.azure.com/openai".into(), dep, Some("gpt-4o prod".into()), Some("2024-06-01".into()))
        );
        assert_eq!(
            a("[azure](https://lab.openai.azure.com/openai/v1/)"),
            ("https://lab.openai.azure.com/openai/v1".into(), Provider::AzureV1, None, None)
        );
        // behind an API gateway: what comes before `deployments` is kept as it is
        assert_eq!(
            a("https://apim.azure-api.net/aoai/deployments/d1?api-version=2024-06-01").0,
            "https://apim.azure-api.net/aoai"
        );
        assert!(azure_base_url("lab.openai.azure.com").is_err());
        let llm = |url: &str, extra: Value| {
            let mut c = crate::config::LlmConfig { base_url: url.into(), ..Default::default() };
            if let Value::Object(m) = extra {
                c.extra = m;
            }
            c
        };
        assert!(is_azure(&llm("https://lab.openai.azure.com", json!({}))));
        assert!(is_azure(&llm("https://x.cognitiveservices.azure.com/openai/v1", json!({}))));
        assert!(!is_azure(&llm("https://api.openai.com/v1", json!({}))));
        assert!(is_azure(&llm("http://127.0.0.1:9/openai", json!({"provider": "azure"}))));
        assert!(!is_azure(&llm("https://lab.openai.azure.com/openai/v1", json!({"provider": "openai"}))));
        let s = |url: &str, extra: Value| {
            Settings::from_llm_config(&llm(url, extra), None, crate::secret::Secret::default(), None, None).unwrap()
        };
        let st = s("https://lab.openai.azure.com", json!({"deployment": "prod-4o"}));
        assert_eq!(
            st.chat_url("gpt-4o"),
            "https://lab.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        // no deployment: the request's model names it (as openai-python's AzureOpenAI does)
        let st = s("https://lab.openai.azure.com/openai", json!({"api_version": "2025-04-01-preview"}));
        assert_eq!(
            st.chat_url("gpt-4o"),
            "https://lab.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview"
        );
        let st = s("https://lab.openai.azure.com/openai/v1", json!({"deployment": "prod-4o"}));
        assert_eq!(
            (st.chat_url(&st.model), st.model.as_str()),
            ("https://lab.openai.azure.com/openai/v1/chat/completions".into(), "prod-4o")
        );
        let st = s("https://api.openai.com", json!({}));
        assert_eq!(st.chat_url("gpt-4o"), "https://api.openai.com/v1/chat/completions");
    }

    #[test]
    fn request_body() {
        let r = Request {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            temperature: Some(0.2),
            max_tokens: Some(10),
            json: true,
            json_schema: None,
            extra: [("seed".to_string(), json!(1))].into_iter().collect(),
        };
        let b = r.body(true);
        assert_eq!(b["response_format"]["type"], "json_object");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["seed"], 1);
        assert!(r.body(false).get("stream").is_none());
    }
}
