//! The LLM endpoints labs have, each spoken by the loopback fake server as its provider documents it:
//! Azure OpenAI (deployments URL with `api-version`, and the v1 API with the deployment as `model`;
//! `api-key` header or an Entra ID bearer token), Gemini's OpenAI-compatible endpoint (list-shaped error
//! bodies, the retry delay in `RetryInfo`), content filters, `reasoning_effort`, extra headers.
//!
//! A request in the wrong shape gets the provider's own refusal (404 for a wrong URL, 401 for a missing
//! key) from the server's gate, so a run only succeeds when cellsci spoke the dialect. After each test
//! the key or token is in no file under the project and no line cellsci printed.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::{generation_reply, merge, metrics_cell, read_json, simple_handler, walk, Kind, Project};
use crate::util::fake_llm::{Received, Reply};
use crate::util::{self, cellsci};

/// An Azure resource key (32 hex digits, as the portal shows them).
const AZ_KEY: &str = "5f1e0c9ad2b84e6f9a7b3c2d1e0f4a5b";
/// An Entra ID access token (JWT-shaped).
const AZ_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2duaXRpdmUifQ.c2lnbmF0dXJlLXNlY3JldA";
const GEMINI_KEY: &str = "AIzaSyD-gemini-SECRET-0123456789";
const PROXY_KEY: &str = "proxy-SECRET-key-0987654321";

/// What Azure answers a request for a URL it does not serve (wrong path, no api-version).
fn azure_404() -> Reply {
    json_reply(404, json!({"error": {"code": "404", "message": "Resource not found"}}))
}

fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Http {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

/// How an Azure request must authenticate.
#[derive(Clone, Copy)]
enum AzureAuth {
    Key(&'static str),
    Token(&'static str),
}

/// Azure OpenAI's gate: the URL shape of the form (`deployments/DEP/chat/completions?api-version=V`, or
/// `v1/chat/completions`) and the credential (`api-key`, or `Authorization: Bearer` with a token).
fn azure_gate(path: String, auth: AzureAuth) -> impl Fn(&Received) -> Option<Reply> + Send + Sync {
    move |rx| {
        if rx.method != "POST" || rx.path != path {
            return Some(azure_404());
        }
        let ok = match auth {
            AzureAuth::Key(k) => rx.header("api-key") == Some(k) && rx.header("authorization").is_none(),
            AzureAuth::Token(t) => {
                rx.header("authorization") == Some(format!("Bearer {t}").as_str()) && rx.header("api-key").is_none()
            }
        };
        (!ok).then(|| {
            json_reply(
                401,
                json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}),
            )
        })
    }
}

/// Gemini's OpenAI-compatible endpoint: `POST /v1beta/openai/chat/completions` with `Authorization:
/// Bearer KEY`; its errors are JSON lists.
fn gemini_gate(key: &'static str) -> impl Fn(&Received) -> Option<Reply> + Send + Sync {
    move |rx| {
        if rx.path != "/v1beta/openai/chat/completions" {
            return Some(json_reply(
                404,
                json!([{"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}]),
            ));
        }
        (rx.header("authorization") != Some(format!("Bearer {key}").as_str())).then(|| {
            json_reply(
                401,
                json!([{"error": {"code": 401, "message": "API key not valid. Please pass a valid API key.", "status": "UNAUTHENTICATED"}}]),
            )
        })
    }
}

/// A streamed completion as Azure OpenAI sends it: a first chunk with no choices holding the prompt's
/// `prompt_filter_results`, then content chunks each with its `content_filter_results`, the finish, the
/// usage chunk, `[DONE]`.
fn azure_sse(text: &str) -> Reply {
    let safe = json!({"hate": {"filtered": false, "severity": "safe"}, "self_harm": {"filtered": false, "severity": "safe"},
                      "sexual": {"filtered": false, "severity": "safe"}, "violence": {"filtered": false, "severity": "safe"}});
    let mut out = format!(
        "data: {}\n\n",
        json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": safe}]})
    );
    let chunk = |delta: Value, finish: Value, filters: Value| {
        json!({"choices": [{"content_filter_results": filters, "delta": delta, "finish_reason": finish, "index": 0,
                            "logprobs": null}],
               "created": 1733100000, "id": "chatcmpl-AZ", "model": "gpt-4o-2024-11-20", "object": "chat.completion.chunk",
               "system_fingerprint": "fp_az"})
    };
    out += &format!("data: {}\n\n", chunk(json!({"content": "", "role": "assistant"}), Value::Null, json!({})));
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(40) {
        let piece: String = piece.iter().collect();
        out += &format!("data: {}\n\n", chunk(json!({"content": piece}), Value::Null, safe.clone()));
    }
    out += &format!("data: {}\n\n", chunk(json!({}), json!("stop"), json!({})));
    out += &format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [], "created": 1733100000, "id": "chatcmpl-AZ", "model": "gpt-4o-2024-11-20",
               "object": "chat.completion.chunk", "usage": {"completion_tokens": 300, "prompt_tokens": 900, "total_tokens": 1200}})
    );
    Reply::Http {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream; charset=utf-8".into())],
        body: out.into_bytes(),
    }
}

/// A pipeline project whose `llm` section is `llm` merged over the test default (`{ADDR}` is the fake
/// server's host:port), and whose key is not in the config unless `llm` puts it there.
fn project(llm: Value, gen: Vec<String>) -> Project {
    project_with(llm, simple_handler(gen))
}

fn project_with(llm: Value, handler: crate::pipeline::Handler) -> Project {
    let p = Project::new(json!({}), handler);
    let path = p.path().join("generate_execution_config.json");
    let mut cfg = read_json(&path);
    let llm: Value = serde_json::from_str(&llm.to_string().replace("{ADDR}", &p._srv.addr().to_string())).unwrap();
    merge(&mut cfg["llm"], json!({"api_key": null, "retry": {"deadline": 60, "base": 0.05, "max_wait": 0.2}}));
    merge(&mut cfg["llm"], llm);
    util::write(p.path(), "generate_execution_config.json", &serde_json::to_string_pretty(&cfg).unwrap());
    p
}

fn good_notebook() -> Vec<String> {
    vec![generation_reply(&[("T1", "x = 1\nprint('hello')"), ("T2", &metrics_cell(0.8))])]
}

/// `cellsci run` in the project with these environment variables.
fn run(p: &Project, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = cellsci(p.path());
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(["--config", "generate_execution_config.json", "run"]).args(args).output().unwrap()
}

/// None of `secrets` in what was printed or in any file under `dir` (the config the test wrote aside).
#[track_caller]
fn assert_hidden(dir: &Path, out: &Output, secrets: &[&str]) {
    let printed = util::text(out);
    for s in secrets {
        assert!(!printed.contains(s), "a secret was printed:\n{printed}");
        for f in walk(dir) {
            if f.file_name().is_some_and(|n| n == "generate_execution_config.json" || n == "cfg.json") {
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            assert!(!text.contains(s), "a secret was written to {}", f.display());
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_run_through_azure_deployments_sends_api_key_and_api_version_and_waits_the_delay_azure_names() {
    let gen = good_notebook().remove(0);
    let p = project_with(
        json!({"provider": "azure", "base_url": "http://{ADDR}", "deployment": "gpt4o-lab", "model": "gpt-4o"}),
        Box::new(move |kind, req, _| match kind {
            Kind::Generation if req["stream"] == json!(true) => azure_sse(&gen),
            Kind::Generation => Reply::text(&gen),
            _ => Reply::text("The better model wins on every fold."),
        }),
    );
    let srv = &p._srv;
    // the documented default api-version, the key from AZURE_OPENAI_API_KEY in the api-key header
    srv.set_gate(azure_gate(
        "/openai/deployments/gpt4o-lab/chat/completions?api-version=2024-10-21".into(),
        AzureAuth::Key(AZ_KEY),
    ));
    // Azure's 429 names its delay in the message only (no Retry-After header)
    srv.push_reply_with(json_reply(
        429,
        json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."}}),
    ));
    let out = run(&p, &[("AZURE_OPENAI_API_KEY", AZ_KEY)], &[]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("[CHECK] better | PCC: 0.8000"), "{so}");
    assert!(so.contains("[ARCHIVE] Saved run to: prompt_run_"), "{so}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("[LLM] gpt-4o: attempt 1 of at most 11 failed (rate_limited: HTTP 429")
            && l.contains("Please retry after 1 second.")
            && l.ends_with("waiting 1.0s before attempt 2 (the server asked for 1s)")),
        "{err}"
    );
    let rx = srv.received();
    assert!(rx.len() >= 3, "generation (429, then again) and the report narrative: {rx:?}");
    let gap = rx[1].at.duration_since(rx[0].at);
    assert!(gap >= Duration::from_millis(950), "the delay in Azure's message was not honoured ({gap:?})");
    for r in &rx {
        assert_eq!(r.path, "/openai/deployments/gpt4o-lab/chat/completions?api-version=2024-10-21");
        assert_eq!(r.header("api-key"), Some(AZ_KEY));
        assert_eq!(r.header("authorization"), None);
    }
    // the generation request streams (read from Azure's SSE, with its filter results), the narrative does not
    assert_eq!(rx[1].body["stream"], json!(true), "{}", rx[1].body);
    let s = p.summary();
    assert_eq!(s["iterations"][0]["usage"]["prompt_tokens"].as_u64().map(|t| t >= 900), Some(true), "{s:#}");
    assert_eq!(rx[1].body["messages"][0]["role"], "system");
    assert_hidden(p.path(), &out, &[AZ_KEY]);
}

#[test]
fn a_run_through_azure_v1_sends_the_deployment_as_model_and_the_entra_token_as_bearer() {
    // detected from the resource's host name would need DNS: loopback says llm.provider instead
    let p = project(
        json!({"provider": "azure", "base_url": "http://{ADDR}/openai/v1/", "deployment": "gpt4o-lab",
               "model": "gpt-4o", "api_key": AZ_KEY, "record": "cassette.jsonl"}),
        good_notebook(),
    );
    let srv = &p._srv;
    srv.set_gate(azure_gate("/openai/v1/chat/completions".into(), AzureAuth::Token(AZ_TOKEN)));
    let out = run(&p, &[("AZURE_OPENAI_AD_TOKEN", AZ_TOKEN)], &[]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("[CHECK] better | PCC: 0.8000"), "{so}");
    let rx = srv.received();
    assert!(rx.len() >= 2, "{rx:?}");
    for r in &rx {
        assert_eq!(r.path, "/openai/v1/chat/completions");
        assert_eq!(r.body["model"], "gpt4o-lab", "v1 takes the deployment as the model");
        assert_eq!(r.header("authorization"), Some(format!("Bearer {AZ_TOKEN}").as_str()));
    }
    // the token is sent; the key beside it is masked too, in the cassette as everywhere
    let cassette = std::fs::read_to_string(p.path().join("cassette.jsonl")).unwrap();
    assert_eq!(cassette.lines().count(), rx.len(), "every exchange recorded");
    assert_hidden(p.path(), &out, &[AZ_TOKEN, AZ_KEY]);
}

#[test]
fn a_run_through_gemini_waits_the_retry_delay_of_its_list_shaped_429() {
    let p = project(
        json!({"base_url": "http://{ADDR}/v1beta/openai/", "model": "gemini-2.5-flash", "api_key": GEMINI_KEY,
               "reasoning_effort": "low"}),
        good_notebook(),
    );
    let srv = &p._srv;
    srv.set_gate(gemini_gate(GEMINI_KEY));
    srv.push_reply_with(json_reply(
        429,
        json!([{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}}]),
    ));
    let out = run(&p, &[], &[]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    assert!(so.contains("[CHECK] better | PCC: 0.8000"), "{so}");
    let err = String::from_utf8_lossy(&out.stderr);
    let wait = err.lines().find(|l| l.contains("waiting")).unwrap_or_else(|| panic!("no wait said: {err}"));
    assert!(
        wait.starts_with("[LLM] gemini-2.5-flash: attempt 1 of at most 11 failed (rate_limited: HTTP 429 Too Many Requests: You exceeded your current quota")
            && wait.ends_with("waiting 1.0s before attempt 2 (the server asked for 1s)"),
        "{wait}"
    );
    let rx = srv.received();
    let gap = rx[1].at.duration_since(rx[0].at);
    assert!(gap >= Duration::from_millis(950), "Gemini's retryDelay was not honoured ({gap:?})");
    for r in &rx {
        assert_eq!(r.path, "/v1beta/openai/chat/completions");
        assert_eq!(r.body["model"], "gemini-2.5-flash");
        assert_eq!(r.body["reasoning_effort"], "low", "{}", r.body);
    }
    assert_hidden(p.path(), &out, &[GEMINI_KEY]);
}

/// Azure's answer to a prompt its content filter refuses.
fn azure_content_filter() -> Reply {
    json_reply(
        400,
        json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
            "type": null, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                "hate": {"filtered": false, "severity": "safe"}, "jailbreak": {"filtered": false, "detected": false},
                "self_harm": {"filtered": false, "severity": "safe"}, "sexual": {"filtered": false, "severity": "safe"},
                "violence": {"filtered": true, "severity": "medium"}}}}}),
    )
}

#[test]
fn a_content_filter_refusal_is_reported_as_such_and_not_retried() {
    let p = project(
        json!({"provider": "azure", "base_url": "http://{ADDR}/openai", "model": "gpt4o-lab", "api_key": AZ_KEY}),
        good_notebook(),
    );
    let srv = &p._srv;
    srv.set_gate(azure_gate(
        "/openai/deployments/gpt4o-lab/chat/completions?api-version=2024-10-21".into(),
        AzureAuth::Key(AZ_KEY),
    ));
    srv.set_default(azure_content_filter());
    srv.set_responder(|_| azure_content_filter());
    let out = run(&p, &[], &[]);
    let so = stdout(&out);
    // the loop ran to its end: exit 0, as the runner needs
    assert_eq!(out.status.code(), Some(0), "{}", util::text(&out));
    let failed: Vec<&str> = so.lines().filter(|l| l.starts_with("[GENERATE] Notebook Generation Failed:")).collect();
    assert_eq!(failed.len(), 2, "{so}");
    for l in &failed {
        assert!(
            l.contains("the generation request was refused: HTTP 400 Bad Request: the provider's content filter refused the prompt (filtered: violence (medium)): The response was filtered"),
            "{l}"
        );
    }
    assert!(!so.contains("Success threshold met"), "{so}");
    // one request per iteration: neither the retry policy nor adapt.lua sent it again
    let rx = srv.received();
    assert_eq!(rx.len(), 2, "{:?}", rx.iter().map(|r| &r.path).collect::<Vec<_>>());
    assert!(!util::text(&out).contains("waiting"), "{}", util::text(&out));
    let s = p.summary();
    for it in s["iterations"].as_array().unwrap() {
        assert_eq!(it["status"], "CRASH", "{it:#}");
        assert_eq!(it["error_kind"], "content_filter", "{it:#}");
    }
    assert_hidden(p.path(), &out, &[AZ_KEY]);
}

/// Write `cfg.json` with this llm section (`{URL}` is the server's base URL) and run `lua` as a script.
fn script(
    srv: &crate::util::fake_llm::FakeLlm,
    llm: Value,
    lua: &str,
    env: &[(&str, &str)],
) -> (Output, tempfile::TempDir) {
    let dir = util::tempdir();
    let llm: Value = serde_json::from_str(&llm.to_string().replace("{URL}", &srv.url())).unwrap();
    util::write(
        dir.path(),
        "cfg.json",
        &serde_json::to_string_pretty(&json!({"dataset_name": "t", "llm": llm})).unwrap(),
    );
    util::write(dir.path(), "t.lua", lua);
    let mut c = cellsci(dir.path());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(["--config", "cfg.json", "script", "t.lua"]).output().unwrap();
    (out, dir)
}

#[test]
fn a_streamed_reply_cut_by_the_content_filter_is_content_filter_with_its_partial_text() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    srv.push_reply_with(Reply::Stream {
        chunks: vec!["Step 1: ".into(), "take the".into()],
        delay: Duration::ZERO,
        finish_reason: "content_filter".into(),
        usage: true,
    });
    let (out, dir) = script(
        &srv,
        json!({"model": "gemini-2.5-flash", "base_url": "{URL}", "api_key": GEMINI_KEY, "timeout": 10}),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true}
        assert(not r, "a filtered reply is not a reply")
        assert(err.kind == "content_filter" and err.attempts == 1, tostring(err))
        assert(err.text == "Step 1: take the", tostring(err.text))
        assert(err.message:find("content filter stopped the reply after 16 chars", 1, true), err.message)
        print(tostring(err))
        "#,
        &[],
    );
    let t = util::ok(&out);
    assert!(t.contains("content_filter: the provider's content filter stopped the reply"), "{t}");
    assert_eq!(srv.received().len(), 1);
    assert_hidden(dir.path(), &out, &[GEMINI_KEY]);
}

#[test]
fn reasoning_effort_is_sent_and_adapted_away_when_the_model_refuses_it() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    srv.push(
        400,
        &[("content-type", "application/json")],
        r#"{"error": {"message": "Unrecognized request argument supplied: reasoning_effort", "type": "invalid_request_error", "param": null, "code": null}}"#,
    );
    let (out, dir) = script(
        &srv,
        json!({"model": "gpt-4o", "base_url": "{URL}", "api_key": GEMINI_KEY, "timeout": 10, "reasoning_effort": "high"}),
        r#"
        local llm = require("llm")
        assert(llm.settings().reasoning_effort == "high")
        local r, err = llm.chat{prompt = "one"}
        assert(r, tostring(err))
        local r2, err2 = llm.chat{prompt = "two"}
        assert(r2, tostring(err2))
        local r3, err3 = llm.chat{prompt = "three", reasoning_effort = "low", model = "o4-mini"}
        assert(r3, tostring(err3))
        local r4, err4 = llm.chat{prompt = "four", reasoning_effort = false, model = "o4-mini"}
        assert(r4, tostring(err4))
        print("OK")
        "#,
        &[],
    );
    let t = util::ok(&out);
    assert!(t.contains("OK"), "{t}");
    assert!(
        t.contains("warning: gpt-4o rejected a request parameter (HTTP 400 Bad Request: Unrecognized request argument supplied: reasoning_effort); from now on for this model: reasoning_effort not sent"),
        "{t}"
    );
    let b = srv.requests();
    assert_eq!(b.len(), 5);
    assert_eq!(b[0]["reasoning_effort"], "high");
    assert!(b[1].get("reasoning_effort").is_none(), "adapted at once: {}", b[1]);
    assert!(b[2].get("reasoning_effort").is_none(), "and for the rest of the run: {}", b[2]);
    assert_eq!(b[3]["reasoning_effort"], "low", "another model still gets it");
    assert!(b[4].get("reasoning_effort").is_none(), "false sends none: {}", b[4]);
    assert_hidden(dir.path(), &out, &[GEMINI_KEY]);
}

#[test]
fn extra_headers_from_the_environment_are_sent_and_masked_and_openai_org_and_project_go_in_their_headers() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    // a proxy that echoes its key in an error (as some do)
    srv.push(
        502,
        &[("content-type", "application/json")],
        &format!(r#"{{"error": {{"message": "upstream refused key {PROXY_KEY}"}}}}"#),
    );
    let (out, dir) = script(
        &srv,
        json!({"model": "openai/gpt-4o", "base_url": "{URL}", "api_key": GEMINI_KEY, "timeout": 10,
               "retry": {"base": 0.01, "max_wait": 0.05},
               "organization": "org-lab42", "project": "proj_cells",
               "headers": {"X-Proxy-Key": "${PROXY_KEY}", "HTTP-Referer": "https://lab.example.org", "X-Title": "cellsci"}}),
        r#"
        local llm = require("llm")
        local h = llm.settings().headers
        assert(h["X-Proxy-Key"] == "***" and h["X-Title"] == "cellsci", require("json").encode(h))
        assert(require("host").config.llm.headers["X-Proxy-Key"] == "***", "scripts never see the value")
        local r, err = llm.chat{prompt = "hello"}
        assert(r, tostring(err))
        print(llm.mask("the proxy key is " .. os.getenv("PROXY_KEY")))
        require("log").info("[TEST] " .. os.getenv("PROXY_KEY"))
        "#,
        &[("PROXY_KEY", PROXY_KEY)],
    );
    let t = util::ok(&out);
    assert!(t.contains("the proxy key is ***"), "{t}");
    assert!(t.contains("upstream refused key ***"), "the echoed header value is masked in the retry line: {t}");
    let rx = srv.received();
    assert_eq!(rx.len(), 2);
    for r in &rx {
        assert_eq!(r.header("x-proxy-key"), Some(PROXY_KEY));
        assert_eq!(r.header("http-referer"), Some("https://lab.example.org"));
        assert_eq!(r.header("x-title"), Some("cellsci"));
        assert_eq!(r.header("openai-organization"), Some("org-lab42"));
        assert_eq!(r.header("openai-project"), Some("proj_cells"));
        assert_eq!(r.header("authorization"), Some(format!("Bearer {GEMINI_KEY}").as_str()));
    }
    assert_hidden(dir.path(), &out, &[PROXY_KEY, GEMINI_KEY]);
}

#[test]
fn a_header_whose_variable_is_unset_or_a_bad_provider_is_a_config_error_naming_the_key() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    let (out, _dir) = script(
        &srv,
        json!({"model": "m", "base_url": "{URL}", "headers": {"X-Proxy-Key": "${CELLSCI_TEST_UNSET_VAR}"}}),
        "print('ran')",
        &[],
    );
    let t = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    let line = regex::Regex::new(
        r"cfg\.json:\d+: llm\.headers\.X-Proxy-Key: \$\{CELLSCI_TEST_UNSET_VAR\} is not set in the environment",
    )
    .unwrap();
    assert!(line.is_match(&t), "{t}");
    assert!(!t.contains("ran"), "{t}");
    let (out, _dir) = script(&srv, json!({"model": "m", "base_url": "{URL}", "provider": "azur"}), "print('ran')", &[]);
    let t = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        regex::Regex::new(r#"cfg\.json:\d+: llm\.provider: expected one of "openai", "azure", got "azur""#)
            .unwrap()
            .is_match(&t),
        "{t}"
    );
    let (out, _dir) =
        script(&srv, json!({"model": "m", "base_url": "{URL}", "headers": {"Bad Header": "x"}}), "print('ran')", &[]);
    let t = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("llm.headers: expected valid HTTP header names ('Bad Header' is not one)"), "{t}");
    assert!(srv.received().is_empty());
}

#[test]
fn an_azure_config_without_key_or_token_says_which_variables_it_reads() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    let (out, _dir) = script(
        &srv,
        json!({"model": "gpt-4o", "base_url": "https://lab.openai.azure.com", "timeout": 5}),
        r#"
        local llm = require("llm")
        local s = llm.settings()
        assert(s.provider == "azure" and s.auth == "none", require("json").encode(s))
        assert(s.chat_url == "https://lab.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", s.chat_url)
        local r, err = llm.chat{prompt = "x"}
        assert(not r and err.kind == "config", tostring(err))
        print(err.message)
        "#,
        &[],
    );
    let t = util::ok(&out);
    assert!(t.contains("AZURE_OPENAI_API_KEY") && t.contains("AZURE_OPENAI_AD_TOKEN"), "{t}");
}

#[test]
fn a_field_gemini_does_not_know_is_dropped_after_its_list_shaped_400() {
    let srv = crate::util::fake_llm::FakeLlm::start();
    srv.set_gate(gemini_gate(GEMINI_KEY));
    srv.push_reply_with(json_reply(
        400,
        json!([{"error": {"code": 400, "message": "Invalid JSON payload received. Unknown name \"seed\": Cannot find field.",
            "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"description": "Invalid JSON payload received. Unknown name \"seed\": Cannot find field."}]}]}}]),
    ));
    let url = srv.url().replace("/v1", "/v1beta/openai/");
    let (out, dir) = script(
        &srv,
        json!({"model": "gemini-2.5-flash", "base_url": url, "api_key": GEMINI_KEY, "timeout": 10}),
        r#"
        local r, err = require("llm").chat{prompt = "x", extra = {seed = 7, top_p = 0.5}}
        assert(r, tostring(err))
        assert(r.attempts == 2, r.attempts)
        "#,
        &[],
    );
    let t = util::ok(&out);
    assert!(t.contains("from now on for this model: seed not sent"), "{t}");
    let b = srv.requests();
    assert_eq!(b.len(), 2);
    assert_eq!((b[0]["seed"].clone(), b[1].get("seed")), (json!(7), None));
    assert_eq!(b[1]["top_p"], json!(0.5), "only the field named is dropped");
    assert_hidden(dir.path(), &out, &[GEMINI_KEY]);
}
