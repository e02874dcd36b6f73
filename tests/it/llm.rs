//! Tests for the llm area: the real binary (`cellsci script`) against the loopback fake server, over
//! real HTTP. After each, the key must appear in no file cellsci wrote and nothing it printed.
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::fake_llm::{FakeLlm, Reply};
use crate::util::{self, tempdir};

const KEY: &str = "sk-test-SECRET123456789";

/// Write `cfg.json` with an llm section pointing at `url` (plus `extra` keys in the llm section).
fn config(dir: &Path, url: &str, extra: Value) {
    let mut llm = json!({"model": "fake-model", "base_url": url, "api_key": KEY, "timeout": 10});
    if let (Some(o), Value::Object(e)) = (llm.as_object_mut(), extra) {
        o.extend(e);
    }
    util::write(dir, "cfg.json", &serde_json::to_string_pretty(&json!({"dataset_name": "t", "llm": llm})).unwrap());
}

/// Run `lua` as a script with the config in `dir`; extra global flags go before `script`.
fn run(dir: &Path, lua: &str, flags: &[&str]) -> Output {
    util::write(dir, "t.lua", lua);
    let out = util::cellsci(dir).args(["--config", "cfg.json"]).args(flags).args(["script", "t.lua"]).output().unwrap();
    assert_no_key(dir, &out);
    out
}

use util::ok;

/// The key is in no file under `dir` other than the config the test wrote, and in no output.
fn assert_no_key(dir: &Path, out: &Output) {
    let printed = util::text(out);
    assert!(!printed.contains("SECRET123456789"), "the key was printed:\n{printed}");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "cfg.json") {
                let bytes = std::fs::read(&p).unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains("SECRET123456789"),
                    "the key was written to {}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn chat_sends_an_openai_request_and_returns_the_reply() {
    let srv = FakeLlm::start();
    srv.push_reply("hello there");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "hi", system = "be brief", temperature = 0.1, max_tokens = 50,
                                extra = {seed = 7}}
        assert(r, tostring(err))
        assert(r.text == "hello there", r.text)
        assert(r.finish_reason == "stop", r.finish_reason)
        assert(r.usage.total_tokens > 0)
        assert(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens)
        assert(r.attempts == 1 and r.model == "fake-model" and r.latency >= 0 and r.streamed == false)
        local u = llm.usage()
        assert(u.calls == 1 and u.requests == 1 and u.total_tokens == r.usage.total_tokens, u.calls)
        assert(u.models["fake-model"].calls == 1)
        local s = llm.settings()
        assert(s.api_key == "***6789", s.api_key)
        local ok, e = pcall(llm.chat, {promt = "typo"})
        assert(not ok and tostring(e):find("unknown option 'promt'") and tostring(e):find("t.lua:"), tostring(e))
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
    let rx = srv.received();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].method, "POST");
    assert_eq!(rx[0].path, "/v1/chat/completions");
    assert_eq!(rx[0].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    let b = &rx[0].body;
    assert_eq!(b["model"], "fake-model");
    assert_eq!(b["messages"], json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]));
    assert_eq!(b["temperature"], json!(0.1));
    assert_eq!(b["max_tokens"], json!(50));
    assert_eq!(b["seed"], json!(7));
    assert!(b.get("stream").is_none(), "not a terminal: no streaming by default");
}

#[test]
fn rate_limited_429_waits_as_retry_after_says() {
    let srv = FakeLlm::start();
    srv.push(429, &[("Retry-After", "1")], r#"{"error": {"message": "Rate limit reached"}}"#);
    srv.push_reply("after the wait");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x"}
        assert(r, tostring(err))
        assert(r.text == "after the wait" and r.attempts == 2, r.attempts)
        local u = require("llm").usage()
        assert(u.requests == 2 and u.retries == 1 and u.failures.rate_limited == 1)
        "#,
        &[],
    );
    // the wait is said on stderr, one line, with what failed and the attempts (issue 26: a rate-limited
    // run looked hung), in no words the runner reads
    let text = ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let waits: Vec<&str> = err.lines().filter(|l| l.contains("waiting")).collect();
    assert_eq!(waits.len(), 1, "{text}");
    let re = regex::Regex::new(
        r"^\[LLM\] fake-model: attempt 1 of at most 11 failed \(rate_limited: HTTP 429 Too Many Requests: Rate limit reached\); waiting (\d+\.\d)s before attempt 2 \(the server asked for 1s\)$",
    )
    .unwrap();
    let secs: f64 = re.captures(waits[0]).unwrap_or_else(|| panic!("{}", waits[0]))[1].parse().unwrap();
    assert!((1.0..3.0).contains(&secs), "{secs}");
    for marker in ["Exception:", "Traceback", "[FIX]", "Error in Node", "Success", "[CHECK]", "ITERATION"] {
        assert!(!waits[0].contains(marker), "{marker} in {}", waits[0]);
    }
    let rx = srv.received();
    assert_eq!(rx.len(), 2);
    let gap = rx[1].at.duration_since(rx[0].at);
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 was not honoured (retried after {gap:?})");
}

#[test]
fn server_500_is_retried_until_the_deadline_then_named() {
    let srv = FakeLlm::start();
    srv.set_default(Reply::Http { status: 500, headers: vec![], body: b"upstream exploded".to_vec() });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local policy = require("retry").new{base = 0.05, max_wait = 0.2, deadline = 1, max_attempts = 100,
                                            per_kind = {server = 100}}
        local r, err = require("llm").chat{prompt = "x", retry = policy}
        assert(not r)
        print(tostring(err))
        assert(err.kind == "server" and err.status == 500, err.kind)
        assert(err.attempts >= 2, err.attempts)
        -- waits are at most 0.25 s, so it cannot have stopped before 0.75 s of the 1 s deadline
        assert(err.elapsed > 0.7, err.elapsed)
        local m = err.message
        assert(m:find("HTTP 500") and m:find("upstream exploded") and m:find("attempts") and m:find("deadline"), m)
        assert(not m:find("None"))
        "#,
        &[],
    );
    let t = ok(&out);
    assert!(t.contains("server: HTTP 500"), "{t}");
    assert!(srv.requests().len() >= 3);
}

#[test]
fn a_server_that_stalls_past_the_timeout_is_a_timeout() {
    let srv = FakeLlm::start();
    srv.push_stall(20.0);
    srv.push_reply("fine now");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", timeout = 0.5, retry = false}
        assert(not r and err.kind == "timeout", tostring(err))
        assert(err.message:find("within 0.5s") and err.attempts == 1, err.message)
        local r2, err2 = llm.chat{prompt = "y", timeout = 5}
        assert(r2 and r2.text == "fine now", tostring(err2))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn a_dropped_connection_is_a_reset_and_is_retried() {
    let srv = FakeLlm::start();
    srv.push_drop();
    srv.push_reply("after the drop");
    srv.push_drop();
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", retry = require("retry").new{base = 0.01}}
        assert(r, tostring(err))
        assert(r.text == "after the drop" and r.attempts == 2, r.attempts)
        local r2, err2 = llm.chat{prompt = "y", retry = false}
        assert(not r2 and err2.kind == "reset", tostring(err2))
        print(tostring(err2))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn an_html_error_page_is_summarised_not_dumped() {
    let srv = FakeLlm::start();
    let html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway\
                </h1></center><hr><center>nginx</center></body></html>";
    srv.push(502, &[("content-type", "text/html")], html);
    srv.push(200, &[("content-type", "text/html")], html);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", retry = false}
        assert(not r and err.kind == "server" and err.status == 502, tostring(err))
        assert(err.message:find("502 Bad Gateway") and not err.message:find("<html"), err.message)
        local r2, err2 = llm.chat{prompt = "x", retry = false}
        assert(not r2 and err2.kind == "bad_body", tostring(err2))
        assert(err2.message:find("not a JSON completion") and err2.message:find("HTML page"), err2.message)
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn empty_content_is_empty() {
    let srv = FakeLlm::start();
    srv.push_reply("");
    srv.push_reply("  \n");
    srv.push_reply("finally");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", retry = false}
        assert(not r and err.kind == "empty", tostring(err))
        -- the default policy retries an empty reply
        local r2, err2 = llm.chat{prompt = "x", retry = require("retry").new{base = 0.01}}
        assert(r2 and r2.text == "finally" and r2.attempts == 2, tostring(err2))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn a_truncated_reply_is_not_retried_and_keeps_the_partial_text() {
    let srv = FakeLlm::start();
    srv.push_truncated("{\"cells\": [{\"id\": \"c1\", \"code\": \"import num");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_tokens": 16}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x"}
        assert(not r and err.kind == "truncated", tostring(err))
        assert(err.attempts == 1, "truncated is not retried by default")
        assert(err.text:find("import num", 1, true) and err.finish_reason == "length")
        assert(err.message:find("max_tokens = 16"), err.message)
        local v, e = llm.extract_json(err.text)
        assert(v == nil and e.kind == "truncated", tostring(e))
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests()[0]["max_tokens"], json!(16));
}

#[test]
fn streaming_assembles_the_text_and_counts_usage() {
    let srv = FakeLlm::start();
    srv.push_stream(&["Hel", "lo ", "wor", "ld"], Duration::from_millis(20));
    srv.push_reply("a plain reply, streamed by the server in pieces");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", stream = true}
        assert(r, tostring(err))
        assert(r.text == "Hello world" and r.streamed and r.usage.total_tokens > 0, r.text)
        local r2 = assert(llm.chat{prompt = "y", stream = true})
        assert(r2.text == "a plain reply, streamed by the server in pieces", r2.text)
        "#,
        &[],
    );
    ok(&out);
    let b = &srv.requests()[0];
    assert_eq!(b["stream"], json!(true));
    assert_eq!(b["stream_options"]["include_usage"], json!(true));
}

#[test]
fn a_server_that_refuses_streaming_gets_a_plain_request() {
    let srv = FakeLlm::start();
    srv.push(400, &[("content-type", "application/json")], r#"{"error": {"message": "streaming is not supported"}}"#);
    srv.push_reply("plain one");
    srv.push_reply("plain two");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"stream": true}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r = assert(llm.chat{prompt = "x"})
        assert(r.text == "plain one" and not r.streamed and r.attempts == 1, r.text)
        local r2 = assert(llm.chat{prompt = "y"})
        assert(r2.text == "plain two")
        "#,
        &[],
    );
    ok(&out);
    let rq = srv.requests();
    assert_eq!(rq.len(), 3);
    assert_eq!(rq[0]["stream"], json!(true));
    assert!(rq[1].get("stream").is_none() && rq[2].get("stream").is_none(), "{rq:?}");
}

#[test]
fn budgets_stop_the_run_with_a_clear_message() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_calls": 2}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        assert(llm.chat{prompt = "1"})
        assert(llm.chat{prompt = "2"})
        local r, err = llm.chat{prompt = "3"}
        assert(not r and err.kind == "budget", tostring(err))
        assert(err.message:find("llm.max_calls = 2"), err.message)
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 2);

    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_total_tokens": 3}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        assert(llm.chat{prompt = "a prompt long enough to cost several tokens"})
        local r, err = llm.chat{prompt = "again"}
        assert(not r and err.kind == "budget" and err.message:find("max_total_tokens = 3"), tostring(err))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn record_then_replay_with_the_server_stopped() {
    let srv = FakeLlm::start();
    srv.push_reply("first answer");
    srv.push_reply("second answer");
    srv.push_reply("first again, differently");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let script = r#"
        local llm = require("llm")
        local a = assert(llm.chat{prompt = "question one"})
        local b = assert(llm.chat{prompt = "question two", temperature = 0.5})
        local c = assert(llm.chat{prompt = "question one"})
        print(a.text .. "|" .. b.text .. "|" .. c.text .. "|" .. tostring(a.replayed))
    "#;
    let out = run(dir.path(), script, &["--record", "cassette.jsonl"]);
    assert!(ok(&out).contains("first answer|second answer|first again, differently|false"));
    let cassette = std::fs::read_to_string(dir.path().join("cassette.jsonl")).unwrap();
    assert_eq!(cassette.lines().count(), 3);
    srv.stop();

    let out = run(dir.path(), script, &["--replay", "cassette.jsonl"]);
    assert!(ok(&out).contains("first answer|second answer|first again, differently|true"), "{}", util::text(&out));

    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "question three"}
        assert(not r and err.kind == "replay_miss", tostring(err))
        print(err.message)
        assert(err.message:find("messages[1].content at char 10", 1, true), err.message)
        assert(err.message:find("'question one'", 1, true) and err.message:find("'question three'", 1, true))
        "#,
        &["--replay", "cassette.jsonl"],
    );
    ok(&out);
}

/// Regression: `--record` truncated the cassette and wrote without append mode, so two runs recording at
/// once left 9 of 60 exchanges readable; every exchange of both runs must be one whole line, replayable.
#[test]
fn two_runs_recording_into_one_cassette_at_once_keep_every_exchange() {
    let srv = FakeLlm::start();
    srv.set_responder(|req| {
        let q = req["messages"][0]["content"].as_str().unwrap_or("");
        Reply::text(&format!("answer to {}", &q[..q.find(' ').unwrap_or(q.len())]))
    });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let script = |run: &str| {
        format!(
            r#"
            local llm = require("llm")
            for i = 1, 30 do
              local q = "{run}-" .. i .. " " .. string.rep("padding ", 4000)
              local r = assert(llm.chat{{prompt = q}})
              assert(r.text == "answer to {run}-" .. i, r.text)
            end
            print("done {run}")
            "#
        )
    };
    util::write(dir.path(), "a.lua", &script("A"));
    util::write(dir.path(), "b.lua", &script("B"));
    let spawn = |f: &str| {
        util::cellsci(dir.path())
            .args(["--config", "cfg.json", "--record", "cassette.jsonl", "script", f])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a.lua"), spawn("b.lua"));
    for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        ok(&out);
        assert_no_key(dir.path(), &out);
    }
    let cassette = std::fs::read_to_string(dir.path().join("cassette.jsonl")).unwrap();
    let mut seen = Vec::new();
    for (i, line) in cassette.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} is broken: {e}", i + 1));
        seen.push(v["response"]["text"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 60, "{seen:?}");
    srv.stop();
    for f in ["a.lua", "b.lua"] {
        let out = util::cellsci(dir.path())
            .args(["--config", "cfg.json", "--replay", "cassette.jsonl", "script", f])
            .output()
            .unwrap();
        ok(&out);
    }
}

/// Regression: `--record` truncated an existing cassette; recording again appends to it, and a half line a
/// killed run left at its end does not swallow the next exchange.
#[test]
fn recording_again_appends_to_the_cassette_instead_of_truncating_it() {
    let srv = FakeLlm::start();
    srv.push_reply("first answer");
    srv.push_reply("second answer");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(dir.path(), r#"assert(require("llm").chat{prompt = "one"})"#, &["--record", "cassette.jsonl"]);
    ok(&out);
    let path = dir.path().join("cassette.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"request\": {\"model\": \"half a li").unwrap();
    let out = run(dir.path(), r#"assert(require("llm").chat{prompt = "two"})"#, &["--record", "cassette.jsonl"]);
    ok(&out);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("first answer") && lines[2].contains("second answer"), "{text}");
    assert!(serde_json::from_str::<Value>(lines[2]).is_ok(), "the new exchange is a whole line: {text}");
}

#[test]
fn a_missing_key_is_a_config_error_before_any_request() {
    let dir = tempdir();
    util::write(
        dir.path(),
        "cfg.json",
        r#"{"llm": {"model": "m", "base_url": "[api](https://api.invalid.example/v1)"}}"#,
    );
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x"}
        assert(not r and err.kind == "config", tostring(err))
        assert(err.message:find("OPENAI_API_KEY") and err.message:find("llm.api_key"), err.message)
        assert(err.attempts == 1)
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn a_local_endpoint_needs_no_key_and_the_env_key_is_used() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    // a pasted markdown link with a trailing slash and no /v1
    let link = format!("[local](http://{}/)", srv.addr());
    util::write(dir.path(), "cfg.json", &json!({"llm": {"model": "m", "base_url": link}}).to_string());
    let out = run(dir.path(), r#"assert(require("llm").chat{prompt = "x"})"#, &[]);
    ok(&out);
    let out = util::cellsci(dir.path())
        .env("OPENAI_API_KEY", KEY)
        .args(["--config", "cfg.json", "script", "t.lua"])
        .output()
        .unwrap();
    assert_no_key(dir.path(), &out);
    ok(&out);
    let rx = srv.received();
    assert_eq!(rx[0].path, "/v1/chat/completions");
    assert_eq!(rx[0].header("authorization"), None);
    assert_eq!(rx[1].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
}

#[test]
fn a_client_error_is_not_retried_and_an_echoed_key_is_masked() {
    let srv = FakeLlm::start();
    let body = format!(r#"{{"error": {{"message": "Incorrect API key provided: {KEY}. Check it."}}}}"#);
    srv.push(401, &[("content-type", "application/json")], &body);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x"}
        assert(not r and err.kind == "client" and err.status == 401 and err.attempts == 1, tostring(err))
        print(tostring(err))
        error(err.message)  -- what a script that gives up prints
        "#,
        &[],
    );
    let t = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("Incorrect API key provided: ***"), "{t}");
    assert_eq!(srv.requests().len(), 1);
}

#[test]
fn usage_snapshot_accounts_per_iteration() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        assert(llm.chat{prompt = "1"}); assert(llm.chat{prompt = "2", model = "other-model"})
        local s1 = llm.usage_snapshot{reset = true}
        assert(s1.calls == 2 and s1.models["other-model"].calls == 1, s1.calls)
        assert(llm.chat{prompt = "3"})
        local s2 = llm.usage_snapshot()
        assert(s2.calls == 1 and s2.models["other-model"] == nil)
        local u = llm.usage()
        assert(u.calls == 3 and u.ok == 3 and u.models["fake-model"].calls == 2)
        assert(u.total_tokens == s1.total_tokens + s2.total_tokens)
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn concurrent_chats_respect_the_endpoint_limit() {
    let srv = FakeLlm::start();
    srv.set_default(Reply::Slow(Duration::from_millis(400), Box::new(Reply::text("slow"))));
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_concurrency": 2}));
    let out = run(
        dir.path(),
        r#"
        local llm, task = require("llm"), require("task")
        local fs = {}
        for i = 1, 6 do fs[i] = function() return assert(llm.chat{prompt = "p" .. i}).text end end
        local rs = task.all(fs)
        assert(#rs == 6 and rs[6] == "slow")
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 6);
    assert_eq!(srv.max_in_flight(), 2, "at most max_concurrency requests at once, and they do overlap");
}

#[test]
fn sixteen_coroutines_at_once() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_concurrency": 16}));
    let out = run(
        dir.path(),
        r#"
        local llm, task = require("llm"), require("task")
        local fs = {}
        for i = 1, 16 do
          fs[i] = function()
            for j = 1, 5 do assert(llm.chat{prompt = i .. "/" .. j}) end
            return i
          end
        end
        local rs = task.all(fs)
        assert(#rs == 16 and llm.usage().ok == 80)
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 80);
}

#[test]
fn a_retry_lua_next_to_the_script_replaces_the_policy() {
    let srv = FakeLlm::start();
    srv.set_default(Reply::Http { status: 503, headers: vec![], body: b"busy".to_vec() });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    util::write(
        dir.path(),
        "retry.lua",
        r#"
        local M = {}
        function M:decide(info)
          DECISIONS = (DECISIONS or 0) + 1
          assert(info.kind == "server" and info.status == 503 and info.counts.server == info.attempt)
          if info.attempt < 3 then return true, 0.01 end
          return false, 0, "my policy had enough"
        end
        return M
        "#,
    );
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x"}
        assert(not r and err.attempts == 3 and DECISIONS == 3, tostring(err))
        assert(err.message:find("my policy had enough"), err.message)
        -- a function works as a policy too, and may answer with a table
        local r2, err2 = llm.chat{prompt = "x", retry = function(info) return {retry = info.attempt < 2, wait = 0} end}
        assert(not r2 and err2.attempts == 2, tostring(err2))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn ctrl_c_ends_a_stalled_call_promptly() {
    let srv = FakeLlm::start();
    srv.push_stall(120.0);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"timeout": 300}));
    util::write(dir.path(), "t.lua", r#"local r, err = require("llm").chat{prompt = "x"}; print(tostring(err))"#);
    let run = util::Running::start(util::cellsci(dir.path()).args(["--config", "cfg.json", "script", "t.lua"]));
    util::wait_until("the request", 60, || !srv.requests().is_empty());
    run.signal(libc::SIGINT);
    let (_, t) = run.finish();
    assert!(!t.contains("SECRET123456789"), "{t}");
    assert!(t.contains("interrupted: interrupted (Ctrl-C)"), "{t}");
}

#[test]
fn events_of_each_exchange_are_logged_masked() {
    use cellsci::lua::ctx::HostCtx;
    let srv = FakeLlm::start();
    srv.push(500, &[], &format!("echoing your key {KEY}"));
    srv.push_reply("the answer");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let cfg = cellsci::config::load(&dir.path().join("cfg.json")).unwrap();
    let ctx = HostCtx::new(Some(std::sync::Arc::new(cfg)));
    let events = dir.path().join("events.jsonl");
    ctx.events.set_path(Some(events.clone()));
    let script = util::write(
        dir.path(),
        "t.lua",
        r#"local r = assert(require("llm").chat{prompt = "please answer", retry = require("retry").new{base = 0.01}})
           assert(r.attempts == 2)"#,
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let lua = cellsci::lua::Runtime::new(ctx).unwrap();
        lua.run_file(&script, &[]).await.unwrap();
    });
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("SECRET123456789"), "{text}");
    let all: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // the wait between the attempts is an event too (issue 26 item 13), masked like the rest
    assert_eq!(all.iter().filter(|e| e["kind"] == "llm_retry_wait").count(), 1, "{text}");
    let evs: Vec<Value> = all.into_iter().filter(|e| e["kind"] == "llm").collect();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["kind"], "llm");
    assert_eq!(evs[0]["outcome"], "error");
    assert_eq!(evs[0]["error"]["kind"], "server");
    assert_eq!(evs[1]["outcome"], "ok");
    assert_eq!(evs[1]["attempt"], 2);
    assert_eq!(evs[1]["request"]["last_user"], "please answer");
    assert_eq!(evs[1]["response"]["text"], "the answer");
}

#[test]
fn nothing_listening_is_a_connect_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempdir();
    config(dir.path(), &format!("http://127.0.0.1:{port}/v1"), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", retry = false}
        assert(not r and err.kind == "connect", tostring(err))
        assert(err.message:find("cannot connect to http://127.0.0.1:"), err.message)
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn a_stream_that_goes_silent_is_a_timeout() {
    let srv = FakeLlm::start();
    srv.push_stream(&["partial ", "answer"], Duration::from_secs(5));
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true, timeout = 1.5, retry = false}
        assert(not r and err.kind == "timeout" and err.message:find("stream stalled"), tostring(err))
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn an_exhausted_quota_is_not_waited_for() {
    let srv = FakeLlm::start();
    srv.push(
        429,
        &[("content-type", "application/json")],
        r#"{"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}"#,
    );
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x"}
        assert(not r and err.kind == "client" and err.status == 429 and err.attempts == 1, tostring(err))
        assert(err.message:find("exceeded your current quota"), err.message)
        "#,
        &[],
    );
    ok(&out);
}

#[test]
fn the_configs_retry_options_shape_the_default_policy() {
    let srv = FakeLlm::start();
    srv.set_default(Reply::Http { status: 502, headers: vec![], body: b"bad gateway".to_vec() });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"retry": {"base": 0.01, "per_kind": {"server": 2}}}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x"}
        assert(not r and err.kind == "server" and err.attempts == 3, tostring(err))
        assert(err.message:find("2 retries"), err.message)
        local ok, e = pcall(require("retry").new, {dedline = 1})
        assert(not ok and tostring(e):find("unknown option 'dedline'"), tostring(e))
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 3);
}

#[test]
fn a_stream_that_trickles_forever_is_cut_at_the_stream_timeout() {
    let srv = FakeLlm::start();
    let pieces: Vec<&str> = vec!["tick "; 100];
    srv.push_stream(&pieces, Duration::from_millis(100));
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true, timeout = 1, retry = false}
        assert(not r and err.kind == "timeout" and err.message:find("went on for more than 2s (2 x llm.timeout)", 1, true), tostring(err))
        "#,
        &[],
    );
    ok(&out);
}

/// Regression: a huge but finite timeout (`timeout = 1e20`, or `Infinity` in the config) panicked in
/// `Duration::from_secs_f64` instead of meaning "no practical limit"; so did `max_concurrency = 1e30`
/// (tokio's semaphore limit).
#[test]
fn huge_timeouts_do_not_panic() {
    let d = tempdir();
    let srv = FakeLlm::start();
    srv.push_reply("one");
    srv.push_reply("two");
    config(d.path(), &srv.url(), json!({"connect_timeout": 1e300, "max_concurrency": 1e30}));
    let out = run(
        d.path(),
        r#"local llm = require("llm")
local r = assert(llm.chat{prompt = "hi", timeout = 1e20, stream = false})
assert(r.text == "one", r.text)
r = assert(llm.chat{prompt = "hi", timeout = 1e300, stream = true})
assert(r.text == "two", r.text)
print("huge ok")"#,
        &[],
    );
    assert!(ok(&out).contains("huge ok"));
}

/// Regression: the event log cut a prompt at 300 characters (and an error message cut an HTTP body)
/// before masking, so a key straddling the cut was not found whole and its first characters leaked.
#[test]
fn key_cut_at_the_event_log_limit_is_still_masked() {
    let d = tempdir();
    let srv = FakeLlm::start();
    let key = "plainKEYabcdefghSECRETPART42";
    // an error body that echoes the key across the 300-character cut of its summary
    srv.push(401, &[], &format!("{{\"error\": {{\"message\": \"{}{key}\"}}}}", "y".repeat(285)));
    srv.push_reply("fine");
    config(d.path(), &srv.url(), json!({"api_key": key}));
    let out = run(
        d.path(),
        &format!(
            r#"require("log").set_event_file("events.jsonl")
local llm = require("llm")
local r, err = llm.chat{{prompt = "hi", stream = false}}
assert(not r and err.kind == "client", tostring(err))
print(err.message)
r = assert(llm.chat{{prompt = string.rep("x", 290) .. "{key}", stream = false}})
print("sent")"#
        ),
        &[],
    );
    assert!(!ok(&out).contains("plainKEYab"), "a piece of the key was printed");
    let text = std::fs::read_to_string(d.path().join("events.jsonl")).unwrap();
    assert!(!text.contains("plainKEYab"), "a piece of the key was logged: {text}");
    assert!(text.contains("***"), "{text}");
}

/// Regression: log.info / log.line / log.event wrote whatever a script passed, so a script that logged
/// the key (from env.get or a dumped table) put it on stderr and in events.jsonl.
#[test]
fn the_key_is_masked_in_script_logs_and_events() {
    let d = tempdir();
    let key = "plainKEYabcdefghSECRETPART42";
    config(d.path(), "http://127.0.0.1:9/v1", json!({"api_key": key}));
    let out = run(
        d.path(),
        &format!(
            r#"local log = require("log")
log.set_event_file("events.jsonl")
log.info("the key is {key}")
log.warn("again", "{key}")
log.line("line {key}")
log.event("mine", {{nested = {{k = "{key}"}}}})
print("logged")"#
        ),
        &[],
    );
    let printed = ok(&out);
    assert!(!printed.contains("SECRETPART"), "{printed}");
    let text = std::fs::read_to_string(d.path().join("events.jsonl")).unwrap();
    assert!(!text.contains("SECRETPART"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}

/// The retry policy decides every kind: a `client` failure (HTTP 401) is asked about too; the bundled
/// policy says no by its table, a policy of the user's may say yes.
#[test]
fn the_retry_policy_is_asked_about_every_kind_even_client_failures() {
    let srv = FakeLlm::start();
    let unauthorized = r#"{"error": {"message": "Incorrect API key provided"}}"#;
    srv.push(401, &[], unauthorized);
    srv.push(401, &[], unauthorized);
    srv.push_reply("hello after a key rotation");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x"}
        assert(not r and err.kind == "client" and err.attempts == 1, tostring(err))
        assert(err.message:find("client is not retried by this policy", 1, true), err.message)
        local asked = {}
        r, err = llm.chat{prompt = "x", retry = function(info)
          table.insert(asked, info.kind)
          return info.kind == "client", 0, "only client"
        end}
        assert(r and r.text == "hello after a key rotation" and r.attempts == 2, tostring(err))
        assert(#asked == 1 and asked[1] == "client", table.concat(asked, ","))
        "#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 3);
}

/// The events a script's `log.sink("ev.jsonl")` wrote.
fn sink_events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("ev.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Today's OpenAI reasoning models answer `max_tokens` with a 400; that ended a run as a `client`
/// failure. The call must pass with `max_completion_tokens`, and the model's next call send it at once.
#[test]
fn a_model_that_refuses_max_tokens_gets_max_completion_tokens_from_then_on() {
    let srv = FakeLlm::start();
    srv.push(
        400,
        &[("content-type", "application/json")],
        r#"{"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}"#,
    );
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_tokens": 500}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local sink = require("log").sink("ev.jsonl")
        local r, err = llm.chat{prompt = "one", events = sink}
        assert(r, tostring(err))
        assert(r.text == "fake reply" and r.attempts == 2, r.attempts)
        r, err = llm.chat{prompt = "two", events = sink}
        assert(r and r.attempts == 1, tostring(err))
        print("OK")
        "#,
        &[],
    );
    let printed = ok(&out);
    assert!(printed.contains("OK"));
    let rq = srv.requests();
    assert_eq!(rq.len(), 3);
    assert_eq!(rq[0]["max_tokens"], json!(500));
    for r in &rq[1..] {
        assert_eq!(r["max_completion_tokens"], json!(500), "{r}");
        assert!(r.get("max_tokens").is_none(), "{r}");
        assert_eq!(r["model"], "fake-model");
        assert!(r["messages"].is_array());
    }
    let err = util::text(&out);
    assert_eq!(err.matches("max_tokens sent as max_completion_tokens").count(), 1, "warned once:\n{err}");
    let evs = sink_events(dir.path());
    let adapts: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "llm_adapt").collect();
    assert_eq!(adapts.len(), 1, "{evs:?}");
    assert_eq!(adapts[0]["change"]["rename"]["max_tokens"], "max_completion_tokens");
}

/// Reasoning models accept only the default temperature; the request is sent again without it, and
/// so is every later one to that model (another model keeps its temperature).
#[test]
fn a_model_that_refuses_temperature_is_sent_none_from_then_on() {
    let srv = FakeLlm::start();
    srv.set_responder(|body| {
        if body["model"] == "reasoner" && body.get("temperature").is_some() {
            return Reply::Http {
                status: 400,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"error": {"message": "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported.", "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}"#.to_vec(),
            };
        }
        Reply::text("fine")
    });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"temperature": 0.2}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "one", model = "reasoner"}
        assert(r and r.text == "fine" and r.attempts == 2, tostring(err))
        r, err = llm.chat{prompt = "two", model = "reasoner"}
        assert(r and r.attempts == 1, tostring(err))
        r, err = llm.chat{prompt = "three", model = "classic"}
        assert(r and r.attempts == 1, tostring(err))
        "#,
        &[],
    );
    ok(&out);
    let rq = srv.requests();
    assert_eq!(rq.len(), 4);
    assert_eq!(rq[0]["temperature"], json!(0.2));
    assert!(rq[1].get("temperature").is_none() && rq[2].get("temperature").is_none());
    assert_eq!(rq[3]["model"], "classic");
    assert_eq!(rq[3]["temperature"], json!(0.2));
    assert_eq!(util::text(&out).matches("temperature not sent").count(), 1);
}

/// `llm.max_tokens: null` and `llm.temperature: null` mean the request carries neither field.
#[test]
fn null_max_tokens_and_temperature_are_not_sent() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_tokens": null, "temperature": null}));
    ok(&run(dir.path(), r#"assert(require("llm").chat{prompt = "x"})"#, &[]));
    let rq = srv.requests();
    assert_eq!(rq.len(), 1);
    for k in ["max_tokens", "max_completion_tokens", "temperature"] {
        assert!(rq[0].get(k).is_none(), "{k} sent: {}", rq[0]);
    }
}

/// A 400 that names no parameter (a bad model name) is not adapted: one request, kind `client`.
#[test]
fn a_400_naming_no_parameter_is_not_adapted() {
    let srv = FakeLlm::start();
    srv.push(400, &[], r#"{"error": {"message": "The model 'nope' does not exist"}}"#);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_tokens": 100, "temperature": 0.5}));
    let out = run(
        dir.path(),
        r#"local r, err = require("llm").chat{prompt = "x"}
           assert(not r and err.kind == "client", tostring(err))"#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 1);
}

/// An endpoint that refuses `response_format` gets the request without it (json_object is the last
/// structured format before none).
#[test]
fn a_model_that_refuses_response_format_is_asked_without_it() {
    let srv = FakeLlm::start();
    srv.push(
        400,
        &[],
        r#"{"error": {"message": "'response_format' of type 'json_object' is not supported with this model"}}"#,
    );
    srv.push_reply(r#"{"a": 1}"#);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    ok(&run(
        dir.path(),
        r#"local r, err = require("llm").chat{prompt = "x", json = true}; assert(r, tostring(err))"#,
        &[],
    ));
    let rq = srv.requests();
    assert_eq!(rq.len(), 2);
    assert_eq!(rq[0]["response_format"]["type"], "json_object");
    assert!(rq[1].get("response_format").is_none());
}

/// Thinking models through proxies send their reasoning in `reasoning_content` (whole, or as stream
/// deltas) or inline `<think>` blocks: none of it may reach `text` (the answer that is parsed), all of
/// it goes to the event log, and the reasoning tokens the endpoint reports are counted.
#[test]
fn reasoning_is_kept_out_of_the_answer_logged_and_counted() {
    let srv = FakeLlm::start();
    let thinking = || Reply::Thinking {
        reasoning: "Let me think about {\"not\": \"the answer\"} carefully.".into(),
        text: r#"{"answer": 42}"#.into(),
        reasoning_tokens: 7,
    };
    srv.push_reply_with(thinking());
    srv.push_reply_with(thinking());
    srv.push_reply("<think>\nmaybe {\"a\": 0}?\n</think>\n{\"a\": 1}");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local sink = require("log").sink("ev.jsonl")
        for _, stream in ipairs{false, true} do
          local r, err = llm.chat{prompt = "q", stream = stream, events = sink}
          assert(r, tostring(err))
          assert(r.text == '{"answer": 42}', r.text)
          assert(r.streamed == stream)
          assert(r.reasoning:find("carefully", 1, true), tostring(r.reasoning))
          assert(r.usage.completion_tokens_details.reasoning_tokens == 7)
          assert(llm.extract_json(r.text).answer == 42)
        end
        local r = assert(llm.chat{prompt = "q", events = sink})
        assert(r.text == '{"a": 1}', r.text)
        assert(r.reasoning:find('maybe {"a": 0}?', 1, true), r.reasoning)
        local u = llm.usage()
        assert(u.reasoning_tokens == 14, u.reasoning_tokens)
        assert(u.models["fake-model"].reasoning_tokens == 14)
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
    let evs: Vec<Value> = sink_events(dir.path()).into_iter().filter(|e| e["kind"] == "llm").collect();
    assert_eq!(evs.len(), 3);
    for e in &evs[..2] {
        assert_eq!(e["response"]["text"], r#"{"answer": 42}"#);
        assert!(e["response"]["reasoning"].as_str().unwrap().contains("carefully"), "{e}");
    }
    assert!(evs[2]["response"]["reasoning"].as_str().unwrap().contains("maybe"));
}

/// A long reasoning is clipped in the event log (both ends kept), never dropped or logged whole.
#[test]
fn long_reasoning_is_clipped_in_the_event_log() {
    let srv = FakeLlm::start();
    let long = format!("START {} END", "x".repeat(20_000));
    srv.push_reply_with(Reply::Thinking { reasoning: long, text: "done".into(), reasoning_tokens: 5000 });
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    ok(&run(
        dir.path(),
        r#"local r = assert(require("llm").chat{prompt = "q", events = require("log").sink("ev.jsonl")})
           assert(r.text == "done")"#,
        &[],
    ));
    let ev = sink_events(dir.path()).into_iter().find(|e| e["kind"] == "llm").unwrap();
    let logged = ev["response"]["reasoning"].as_str().unwrap();
    assert!(logged.starts_with("START") && logged.ends_with("END") && logged.len() < 4000, "{}", logged.len());
    assert_eq!(ev["response"]["reasoning_chars"], 20_010);
}

/// Each call says what it cost (prompt and completion tokens at the model's price per million), the
/// run's usage sums it, and the config's `llm.prices` wins over the price table.
#[test]
fn a_call_costs_its_tokens_at_the_models_price() {
    let srv = FakeLlm::start();
    srv.set_responder(|_| Reply::Http {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 3000, "total_tokens": 4000,
                      "completion_tokens_details": {"reasoning_tokens": 2000}}})
        .to_string()
        .into_bytes(),
    });
    let dir = tempdir();
    // priced by the config; "gpt-4o-mini-2024-07-18" by the table's "gpt-4o-mini" entry (its prefix)
    config(
        dir.path(),
        &srv.url(),
        json!({"prices": {"priced": {"input": 2, "output": 10},
                                                      "thinker": {"input": 1, "output": 4, "reasoning": 8}}}),
    );
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local function near(a, b) return math.abs(a - b) < 1e-9 end
        local r = assert(llm.chat{prompt = "x", model = "priced"})
        assert(near(r.cost, (1000 * 2 + 3000 * 10) / 1e6), r.cost)
        r = assert(llm.chat{prompt = "x", model = "thinker"})
        assert(near(r.cost, (1000 * 1 + 1000 * 4 + 2000 * 8) / 1e6), r.cost)
        r = assert(llm.chat{prompt = "x", model = "gpt-4o-mini-2024-07-18"})
        assert(near(r.cost, (1000 * 0.15 + 3000 * 0.60) / 1e6), r.cost)
        r = assert(llm.chat{prompt = "x", model = "nobody-knows"})
        assert(r.cost == nil)
        local u = llm.usage()
        assert(near(u.cost, 0.032 + 0.021 + 0.00195), u.cost)
        assert(u.unpriced == 1 and near(u.models.priced.cost, 0.032))
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
}

/// `llm.max_cost` stops further requests once the run has spent it (kind `budget`, so a loop ends
/// cleanly), and refuses a model it cannot price rather than spend uncounted money.
#[test]
fn the_money_budget_stops_further_calls() {
    let srv = FakeLlm::start();
    let dir = tempdir();
    // the fake counts ~chars/4 tokens: each call costs well over 0.000001 at 1000 per million
    config(
        dir.path(),
        &srv.url(),
        json!({"max_cost": 0.000001, "prices": {"fake-model": {"input": 1000, "output": 1000}}}),
    );
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r = assert(llm.chat{prompt = "first"})
        assert(r.cost > 0.000001, r.cost)
        local r2, err = llm.chat{prompt = "second"}
        assert(not r2 and err.kind == "budget", tostring(err))
        assert(err.message:find("llm.max_cost = ", 1, true), err.message)
        local r3, err3 = llm.chat{prompt = "x", model = "unpriced-model"}
        assert(not r3 and err3.kind == "budget", tostring(err3))
        assert(require("llm").settings().max_cost == 0.000001)
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
    assert_eq!(srv.requests().len(), 1);

    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_cost": 5}));
    let out = run(
        dir.path(),
        r#"local r, err = require("llm").chat{prompt = "x", model = "unpriced-model"}
           assert(not r and err.kind == "config" and err.message:find("no price"), tostring(err))"#,
        &[],
    );
    ok(&out);
    assert_eq!(srv.requests().len(), 1, "no request for a model the budget cannot count");
}

/// With `llm.idle_timeout`, a thinking model that streams slowly is waited for as long as bytes keep
/// coming (each gap under the idle timeout, the whole past it), while a real stall ends after the idle
/// timeout, not the (long) total timeout.
#[test]
fn the_idle_timeout_catches_a_stall_but_not_a_slow_stream() {
    let srv = FakeLlm::start();
    srv.push_stream(&["a", "b", "c", "d", "e"], Duration::from_millis(400));
    srv.push_stall(20.0);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"idle_timeout": 1, "timeout": 30}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local r, err = llm.chat{prompt = "x", stream = true, retry = false}
        assert(r and r.text == "abcde", tostring(err))
        assert(r.latency > 1.5, r.latency)
        local t0 = require("time").now()
        r, err = llm.chat{prompt = "x", stream = true, retry = false}
        local took = require("time").now() - t0
        assert(not r and err.kind == "timeout", tostring(err))
        assert(took < 5, "the stall took " .. took .. "s: " .. err.message)
        assert(llm.settings().idle_timeout == 1)
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
}

/// With an idle timeout, `timeout` bounds the whole stream: one that keeps trickling is cut there.
#[test]
fn with_an_idle_timeout_the_timeout_bounds_the_whole_stream() {
    let srv = FakeLlm::start();
    srv.push_stream(&["a", "b", "c", "d", "e", "f", "g", "h"], Duration::from_millis(400));
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"idle_timeout": 1, "timeout": 1.5}));
    let out = run(
        dir.path(),
        r#"local r, err = require("llm").chat{prompt = "x", stream = true, retry = false}
           assert(not r and err.kind == "timeout", tostring(err))
           assert(err.message:find("went on for more than 1.5s (llm.timeout)", 1, true), err.message)"#,
        &[],
    );
    ok(&out);
}

/// A run that adapted a request (a 400, then the adapted exchange) replays from its cassette as it went.
#[test]
fn an_adapted_run_replays_from_its_cassette() {
    let srv = FakeLlm::start();
    srv.push(400, &[], r#"{"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."}}"#);
    srv.push_reply("adapted answer");
    srv.push_reply("second answer");
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_tokens": 64}));
    let script = r#"
        local llm = require("llm")
        local a = assert(llm.chat{prompt = "one"})
        local b = assert(llm.chat{prompt = "two"})
        print(a.text .. "|" .. b.text .. "|" .. a.attempts .. "|" .. b.attempts)
    "#;
    let out = run(dir.path(), script, &["--record", "cassette.jsonl"]);
    assert!(ok(&out).contains("adapted answer|second answer|2|1"));
    srv.stop();
    let out = run(dir.path(), script, &["--replay", "cassette.jsonl"]);
    assert!(ok(&out).contains("adapted answer|second answer|2|1"), "{}", util::text(&out));
}

/// `json_schema` asks for a reply of that shape (`response_format: json_schema`); a model that refuses
/// it is asked for a JSON object instead, from then on.
#[test]
fn a_model_that_refuses_json_schema_gets_json_object_from_then_on() {
    let srv = FakeLlm::start();
    srv.push(
        400,
        &[("content-type", "application/json")],
        r#"{"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", "param": "response_format"}}"#,
    );
    srv.push_reply(r#"{"code": "print(1)"}"#);
    srv.push_reply(r#"{"code": "print(2)"}"#);
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({}));
    let out = run(
        dir.path(),
        r#"
        local llm = require("llm")
        local schema = {name = "cell", strict = true, schema = {type = "object",
          properties = {code = {type = "string"}}, required = {"code"}, additionalProperties = false}}
        for i = 1, 2 do
          local r, err = llm.chat{prompt = "answer in JSON", json_schema = schema}
          assert(r, tostring(err))
          assert(llm.extract_json(r.text).code == "print(" .. i .. ")")
        end
        local ok, e = pcall(llm.chat, {prompt = "x", json_schema = {schema = {}, nmae = "typo"}})
        assert(not ok and tostring(e):find("unknown key 'nmae'"), tostring(e))
        ok, e = pcall(llm.chat, {prompt = "x", json_schema = {name = "has space", schema = {}}})
        assert(not ok and tostring(e):find("json_schema.name"), tostring(e))
        print("OK")
        "#,
        &[],
    );
    assert!(ok(&out).contains("OK"));
    let rq = srv.requests();
    assert_eq!(rq.len(), 3);
    assert_eq!(rq[0]["response_format"]["type"], "json_schema");
    assert_eq!(rq[0]["response_format"]["json_schema"]["name"], "cell");
    assert_eq!(rq[0]["response_format"]["json_schema"]["strict"], true);
    assert_eq!(rq[0]["response_format"]["json_schema"]["schema"]["required"], json!(["code"]));
    for r in &rq[1..] {
        assert_eq!(r["response_format"], json!({"type": "json_object"}), "{r}");
    }
}

/// A hostile endpoint on loopback, written raw (no HTTP library between it and the client): it answers
/// every request with `head` and then writes `chunk` again and again, `every` apart, until the client
/// hangs up or `limit` bytes are out. Returns its URL and the count of body bytes it got out.
fn hostile_server(
    head: &'static str,
    chunk: Vec<u8>,
    every: Duration,
    limit: u64,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent2 = sent.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let (sent, chunk) = (sent2.clone(), chunk.clone());
            std::thread::spawn(move || {
                // the request: headers, then as much body as Content-Length says
                let mut req = Vec::new();
                let mut b = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                let have = req.len() - (req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
                let mut left = len.saturating_sub(have);
                while left > 0 {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
                if c.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while sent.load(std::sync::atomic::Ordering::SeqCst) < limit {
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                    sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
                    if !every.is_zero() {
                        std::thread::sleep(every);
                    }
                }
            });
        }
    });
    (url, sent)
}

/// Issue 26: a streamed reply of 100 MB was accepted (309 MB of memory). A reply, streamed or not, is
/// cut at llm.max_reply_bytes (8 MiB by default): the call fails at once as `truncated` (not retried:
/// the same request would bring the same flood), the client hangs up, and a body announced larger is
/// not read at all.
#[test]
fn a_reply_larger_than_max_reply_bytes_is_cut_off_streamed_or_not() {
    let piece = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(65_000));
    let (url, sent) = hostile_server(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
        piece.into_bytes(),
        Duration::ZERO,
        100_000_000,
    );
    let dir = tempdir();
    config(dir.path(), &url, json!({"timeout": 60}));
    let t0 = std::time::Instant::now();
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true}
        assert(not r and err.kind == "truncated", tostring(err))
        assert(err.message:find("passed llm.max_reply_bytes (8.4 MB)", 1, true), err.message)
        assert(err.attempts == nil or err.attempts == 1, "not retried: " .. tostring(err.attempts))
        print("cut: " .. err.message)
        "#,
        &[],
    );
    let secs = t0.elapsed().as_secs_f64();
    ok(&out);
    let n = sent.load(std::sync::atomic::Ordering::SeqCst);
    println!("100 MB stream: cut after {n} bytes sent, {secs:.1} s");
    assert!(n < 40_000_000, "the client hung up early: {n} bytes sent");
    assert!(secs < 30.0, "{secs}");

    // a body announced as 100 MB is refused unread; one with no length is cut while it comes
    let (url, sent) = hostile_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n",
        vec![b' '; 65_536],
        Duration::ZERO,
        100_000_000,
    );
    config(dir.path(), &url, json!({"timeout": 60, "max_reply_bytes": 1000000}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = false}
        assert(not r and err.kind == "truncated" and err.message:find("not read", 1, true), tostring(err))
        local r2, err2 = require("llm").chat{prompt = "x", stream = false, max_reply_bytes = 0, timeout = 1, retry = false}
        assert(not r2 and err2.kind ~= "truncated", "0 is no size limit: " .. tostring(err2))
        "#,
        &[],
    );
    ok(&out);
    let _ = sent;
    let (url, _sent) = hostile_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        format!("{:x}\r\n{}\r\n", 65_536, " ".repeat(65_536)).into_bytes(),
        Duration::ZERO,
        100_000_000,
    );
    config(dir.path(), &url, json!({"timeout": 60, "max_reply_bytes": 1000000}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = false}
        assert(not r and err.kind == "truncated" and err.message:find("(1.0 MB)", 1, true), tostring(err))
        "#,
        &[],
    );
    ok(&out);
}

/// Issue 26: a stream that never ends (keep-alive comments forever) was cut only at 6 x the timeout.
/// With the defaults it is cut at 2 x the timeout; `llm.stream_timeout` sets the bound itself.
#[test]
fn a_stream_that_never_ends_is_cut_at_twice_the_timeout_by_default() {
    let (url, _sent) = hostile_server(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
        b": keep-alive\n\n".to_vec(),
        Duration::from_millis(200),
        u64::MAX,
    );
    let dir = tempdir();
    config(dir.path(), &url, json!({"timeout": 2}));
    let t0 = std::time::Instant::now();
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true, retry = false}
        assert(not r and err.kind == "timeout", tostring(err))
        assert(err.message:find("went on for more than 4s (2 x llm.timeout)", 1, true), err.message)
        "#,
        &[],
    );
    ok(&out);
    let secs = t0.elapsed().as_secs_f64();
    assert!((3.9..8.0).contains(&secs), "cut at 2 x the timeout (4 s), not 12 s: {secs:.1} s");
    config(dir.path(), &url, json!({"timeout": 2, "stream_timeout": 1}));
    let out = run(
        dir.path(),
        r#"
        local r, err = require("llm").chat{prompt = "x", stream = true, retry = false}
        assert(not r and err.message:find("went on for more than 1s (llm.stream_timeout)", 1, true), tostring(err))
        assert(require("llm").settings().stream_timeout == 1)
        "#,
        &[],
    );
    ok(&out);
}

/// Issue 26 item 10: budgets overshot under parallel branches (max_calls 5 gave 8 requests), since each
/// branch checked the budget before the others' requests had come back. The requests in flight count:
/// 8 branches at once against max_calls 5 send 5 requests, and the others are refused before sending,
/// with a message that counts the way the usage does; a token budget holds the same way.
#[test]
fn budgets_hold_under_concurrent_branches() {
    let srv = FakeLlm::start();
    srv.set_default(Reply::Slow(Duration::from_millis(500), Box::new(Reply::text("done"))));
    let dir = tempdir();
    config(dir.path(), &srv.url(), json!({"max_calls": 5, "max_concurrency": 16}));
    let out = run(
        dir.path(),
        r#"
        local llm, task = require("llm"), require("task")
        local fs, refused, msg = {}, 0, nil
        for i = 1, 8 do
          fs[i] = function()
            local r, err = llm.chat{prompt = "branch " .. i, retry = false}
            if not r then
              assert(err.kind == "budget", tostring(err))
              refused, msg = refused + 1, err.message
            end
          end
        end
        task.all(fs)
        local u = llm.usage()
        assert(refused == 3 and u.requests == 5, refused .. " refused, " .. u.requests .. " requests")
        print("MSG " .. msg)
        "#,
        &[],
    );
    let text = ok(&out);
    assert_eq!(srv.requests().len(), 5, "{text}");
    assert!(text.contains("of llm.max_calls = 5"), "{text}");

    // tokens: each request's prompt is ~250 tokens; a 600-token budget lets at most 3 go out at once
    let srv = FakeLlm::start();
    srv.set_default(Reply::Slow(Duration::from_millis(500), Box::new(Reply::text("done"))));
    config(dir.path(), &srv.url(), json!({"max_total_tokens": 600, "max_concurrency": 16}));
    let out = run(
        dir.path(),
        r#"
        local llm, task = require("llm"), require("task")
        local fs = {}
        for i = 1, 8 do
          fs[i] = function() llm.chat{prompt = string.rep("word ", 200) .. i, retry = false} end
        end
        task.all(fs)
        print("TOKENS " .. llm.usage().total_tokens)
        "#,
        &[],
    );
    let text = ok(&out);
    let sent = srv.requests().len();
    println!("token budget 600 under 8 branches: {sent} requests sent");
    assert!(sent <= 3, "{sent} requests sent: {text}");
    let used: u64 = text.lines().find_map(|l| l.strip_prefix("TOKENS ")).unwrap().trim().parse().unwrap();
    println!("tokens used: {used}");
    assert!(used < 900, "the budget held within one request's overshoot: {used}");
}
